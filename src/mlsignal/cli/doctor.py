"""``mlsignal doctor``: what this machine offers for inference, and what to change.

Reports Python, torch, CUDA, GPUs, cuDNN, ONNX Runtime and what ``auto`` picks; then advice
(a CPU-only torch on a GPU machine, a torch built for a newer CUDA than the driver, ONNX
Runtime without its CUDA provider) and, from a quick measurement of the bundle's forward pass
on every path here, which path is fastest for one symbol per bar and for many.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsignal.bench.machine import NvidiaInfo, collect, query_nvidia_smi
from mlsignal.cli.doctor_advice import Advice, onnx_advice, torch_advice
from mlsignal.cli.options import DEFAULT_BUNDLE
from mlsignal.config import bundle_setting

if TYPE_CHECKING:
    from mlsignal.config import Settings


def add_options(p: argparse.ArgumentParser) -> None:
    """Doctor's measurement options (``--json`` is added by the caller)."""
    p.add_argument(
        "--bundle",
        help="bundle to time (default: $MLSIGNAL_BUNDLE, else artifacts/quick when it exists)",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--measure",
        action="store_true",
        help="time more batch sizes for longer (about 10-30 s); without it a quick "
        "measurement runs when a bundle is found",
    )
    group.add_argument("--no-measure", action="store_true", help="skip the measurement")
    p.add_argument(
        "--symbols",
        type=int,
        default=1,
        help="symbols your loop enhances per bar (one enhance_batch call); the advice is "
        "for this batch size (default: %(default)s)",
    )


def advise(report: dict[str, Any], nvidia: NvidiaInfo | None) -> list[Advice]:
    """Driver/CUDA/torch and ONNX Runtime advice for a :func:`collect` report."""
    return [
        *torch_advice(
            report.get("torch"),
            report.get("torch_cuda"),
            bool(report.get("cuda_available")),
            nvidia,
            os.environ.get("CUDA_VISIBLE_DEVICES"),
        ),
        *onnx_advice(report.get("onnxruntime"), report.get("onnx_providers", []), nvidia),
    ]


def _bundle_path(args: argparse.Namespace) -> Path | None:
    """The bundle to time: ``--bundle``, ``$MLSIGNAL_BUNDLE``, else artifacts/quick if there."""
    raw = args.bundle or bundle_setting()
    if raw:
        return Path(raw)
    return Path(DEFAULT_BUNDLE) if Path(DEFAULT_BUNDLE, "manifest.json").is_file() else None


def _settings() -> Settings | None:
    """The environment's settings, or ``None`` when one is bad: doctor shows bad settings
    (the report names them), it does not stop on them."""
    from mlsignal.config import Settings
    from mlsignal.errors import ConfigError

    try:
        return Settings.from_env()
    except ConfigError:
        return None


def _label(backend: str, device: str, settings: Settings | None) -> str:
    """``torch`` on CUDA with CUDA graphs on (``ML_CUDA_GRAPHS``) is the ``torch+graphs`` path."""
    from mlsignal.runtime.factory import _cuda_graphs_wanted

    if settings is None:
        return backend  # a bad setting (e.g. ML_CUDA_GRAPHS): the runtime will say so at load
    graphs = backend == "torch" and device.startswith("cuda")
    return "torch+graphs" if graphs and _cuda_graphs_wanted(device, settings) else backend


def measure_section(
    args: argparse.Namespace, report: dict[str, Any], settings: Settings | None = None
) -> dict[str, Any]:
    """Time the bundle on every path here and advise; ``{"skipped": why}`` when it cannot.

    ``settings``: the environment's (``None`` when bad: each path then says why it failed).
    """
    from mlsignal.bench.machine import load_warning
    from mlsignal.bundle import load_bundle
    from mlsignal.cli.doctor_measure import (
        FULL_BATCHES,
        MEASURE_TOTAL_S,
        QUICK_BATCHES,
        measure_paths,
        speed_advice,
    )
    from mlsignal.errors import ConfigError

    if args.no_measure:
        return {"skipped": "--no-measure"}
    if args.symbols < 1:
        raise ConfigError("--symbols must be at least 1")
    path = _bundle_path(args)
    if path is None:
        return {"skipped": "no bundle found: pass --bundle DIR or set MLSIGNAL_BUNDLE"}
    bundle = load_bundle(path)  # a bad bundle is an error (exit 2), not silently skipped
    if (busy := load_warning()) is not None:  # said just before the timings it spoils
        print(busy, file=sys.stderr, flush=True)
    batches = tuple(sorted({*(FULL_BATCHES if args.measure else QUICK_BATCHES), args.symbols}))
    m = measure_paths(
        bundle,
        batches,
        budget_s=0.6 if args.measure else 0.15,
        settings=settings,
        total_s=MEASURE_TOTAL_S if args.measure else 6.0,  # --measure measures more, not less
    )
    backend, device = report.get("configured_backend"), report.get("configured_device")
    if backend and device and not str(device).startswith("error"):
        backend = _label(backend, device, settings)
    else:
        backend = device = None
    advice = speed_advice(m, backend, device, args.symbols)
    return {
        "bundle": str(path),
        "batches": list(batches),
        **m.to_dict(),
        "advice": [a.to_dict() for a in advice],
    }


def doctor(args: argparse.Namespace) -> int:
    """Print the report, advice and measurement; exit 0 (bad settings are shown, not raised)."""
    nvidia = query_nvidia_smi()
    report = collect(nvidia)
    report["advice"] = [a.to_dict() for a in advise(report, nvidia)]
    report["measure"] = measure_section(args, report, _settings())
    if args.json:
        print(json.dumps(report))
        return 0
    print(format_report(report))
    return 0


def _advice_lines(items: list[dict[str, str]]) -> list[str]:
    lines = []
    for a in items:
        head = f"  [{a['level']}]".ljust(9)
        lines += textwrap.wrap(a["text"], 100, initial_indent=head, subsequent_indent=" " * 9)
    return lines


def _measure_lines(m: dict[str, Any]) -> list[str]:
    if "skipped" in m and "rows" not in m:
        return [f"measurement          skipped: {m['skipped']}"]
    batches = m["batches"]
    lines = [f"measured             model forward, median ms, bundle {m['bundle']}"]
    lines.append("  " + "path".ljust(24) + "".join(f"{'b' + str(b):>10}" for b in batches))
    table: dict[str, dict[int, float]] = {}
    for r in m["rows"]:
        table.setdefault(f"{r['backend']} on {r['device']}", {})[r["batch"]] = r["median_ms"]
    for name, row in table.items():
        cells = "".join(f"{row[b]:>10.3f}" if b in row else f"{'-':>10}" for b in batches)
        lines.append("  " + name.ljust(24) + cells)
    lines += [f"  skipped: {s}" for s in m["skipped"]]
    return lines + _advice_lines(m["advice"])


def format_report(report: dict[str, Any]) -> str:
    """The human-readable report: ``key value`` lines, then advice, then the measurement."""
    lines = []
    for key, value in report.items():
        if key in ("advice", "measure"):
            continue
        if key == "gpus":
            value = (
                ", ".join(
                    f"[{g['index']}] {g['name']} {g['memory_gib']} GiB sm{g['capability']}"
                    for g in value
                )
                or "none"
            )
        elif isinstance(value, list):
            value = ", ".join(value) or "none"
        lines.append(f"{key:<20} {value}")
    lines.append("advice")
    lines += _advice_lines(report.get("advice", []))
    if "measure" in report:
        lines += _measure_lines(report["measure"])
    return "\n".join(lines)
