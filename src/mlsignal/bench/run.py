"""The model-forward and ``enhance_signal`` benchmarks over every available path.

A path is a (backend, device) pair: torch on cpu, torch on cuda (eager), onnx on cpu, onnx on
cuda where onnxruntime has the CUDA provider. Each row records median and p99 latency and
windows per second, and ``speedup_vs_torch_eager``: the torch-eager median on the same
device over this path's median (1.0 for torch eager itself).
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mlsignal.bench.timing import Timing, measure
from mlsignal.bundle import Bundle
from mlsignal.errors import MLSignalError

FULL_BATCHES = (1, 16, 256, 1024, 4096)
QUICK_BATCHES = (1, 16, 256)


@dataclass(frozen=True)
class BenchConfig:
    """What to measure; ``budget_s`` is the timing budget per measurement."""

    batches: tuple[int, ...] = FULL_BATCHES
    budget_s: float = 1.0
    paths: tuple[tuple[str, str], ...] = ()


@dataclass
class BenchResult:
    """Rows of measurements plus a description of the machine."""

    machine: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def available_paths() -> list[tuple[str, str]]:
    """(backend, device) pairs that can run here."""
    import importlib.util

    paths = []
    if importlib.util.find_spec("torch") is not None:
        import torch

        paths.append(("torch", "cpu"))
        if torch.cuda.is_available():
            paths += [("torch", "cuda"), ("torch+graphs", "cuda")]
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime as ort

        paths.append(("onnx", "cpu"))
        if "CUDAExecutionProvider" in ort.get_available_providers():
            paths.append(("onnx", "cuda"))
    return paths


def machine_info() -> dict[str, Any]:
    """Python, platform, CPU count, torch/CUDA/GPU, onnxruntime versions, date."""
    from mlsignal.cli.doctor import collect

    info = collect()
    keep = ("python", "platform", "cpu_count", "torch", "torch_cuda", "gpus", "onnxruntime")
    return {**{k: info.get(k) for k in keep}, "date": time.strftime("%Y-%m-%d"),
            "node": platform.node()}  # fmt: skip


def _windows(bundle: Bundle, n: int, seed: int = 0) -> np.ndarray:
    """Random windows with the scale of the golden inputs (not zeros: see docs)."""
    with np.load(bundle.file("golden.npz")) as g:
        ref = g["inputs"]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *ref.shape[1:])) * ref.std(axis=(0, 1)) + ref.mean(axis=(0, 1))
    return x.astype(np.float32)


def _row(what: str, backend: str, device: str, batch: int, t: Timing) -> dict[str, Any]:
    return {
        "what": what,
        "backend": backend,
        "device": device,
        "batch": batch,
        "median_ms": t.median_ms,
        "p99_ms": t.p99_ms,
        "reps": t.reps,
        "windows_per_s": t.per_second(batch),
    }


def _load(bundle: Bundle, backend: str, device: str) -> Any:
    from mlsignal.runtime import load_runtime

    if backend == "torch+graphs":
        from mlsignal.runtime.base import check_parity
        from mlsignal.runtime.cuda_graph import CudaGraphRuntime

        rt = CudaGraphRuntime(bundle, device)
        check_parity(rt)
        return rt
    return load_runtime(bundle, device, backend)


def bench_forward(bundle: Bundle, cfg: BenchConfig, result: BenchResult) -> None:
    """``runtime.predict`` at every batch size on every path."""
    for backend, device in cfg.paths:
        try:
            rt = _load(bundle, backend, device)
        except MLSignalError as e:
            result.skipped.append(f"{backend}/{device}: {e}")
            continue
        for batch in cfg.batches:
            x = _windows(bundle, batch)
            t = measure(lambda rt=rt, x=x: rt.predict(x), cfg.budget_s)
            result.rows.append(_row("forward", backend, rt.device, batch, t))


def bench_enhance(bundle: Bundle, cfg: BenchConfig, result: BenchResult) -> None:
    """Full ``enhance_signal`` (bars -> features -> model -> fusion) for one symbol."""
    from mlsignal.data import load_sample
    from mlsignal.enhancer import MLSignalEnhancer

    bars = load_sample("sp500").iloc[-bundle.min_bars :]
    for backend, device in cfg.paths:
        if backend == "torch+graphs":
            continue  # the enhancer takes the fast path from ML_CUDA_GRAPHS; forward only here
        try:
            enh = MLSignalEnhancer(bundle, device=device, backend=backend)
        except MLSignalError as e:
            result.skipped.append(f"enhance {backend}/{device}: {e}")
            continue
        t = measure(lambda enh=enh: enh.enhance_signal(bars, 30.0, 60.0), cfg.budget_s)
        result.rows.append(_row("enhance_signal", backend, enh.runtime.device, 1, t))


def add_ratios(result: BenchResult) -> None:
    """``speedup_vs_torch_eager`` for every row with a torch-eager row on the same device."""
    base = {
        (r["what"], r["device"], r["batch"]): r["median_ms"]
        for r in result.rows
        if r["backend"] == "torch"
    }  # torch eager; "torch+graphs" rows are compared with it on the same device
    for r in result.rows:
        ref = base.get((r["what"], r["device"], r["batch"]))
        if ref is None and r["device"] != "cpu":  # e.g. onnx cuda vs torch cuda
            ref = base.get((r["what"], r["device"].split(":")[0] + ":0", r["batch"]))
        r["speedup_vs_torch_eager"] = None if ref is None else ref / r["median_ms"]


def run_bench(bundle: Bundle, cfg: BenchConfig) -> BenchResult:
    """Every benchmark, in one result."""
    result = BenchResult(machine_info())
    bench_forward(bundle, cfg, result)
    bench_enhance(bundle, cfg, result)
    add_ratios(result)
    return result


def format_table(result: BenchResult) -> str:
    """A fixed-width table of the rows."""
    head = (f"{'what':<15}{'backend':<14}{'device':<8}{'batch':>6}{'median ms':>11}"
            f"{'p99 ms':>10}{'win/s':>12}{'vs torch':>10}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in result.rows:
        ratio = r["speedup_vs_torch_eager"]
        lines.append(
            f"{r['what']:<15}{r['backend']:<14}{r['device']:<8}{r['batch']:>6}"
            f"{r['median_ms']:>11.3f}{r['p99_ms']:>10.3f}{r['windows_per_s']:>12.0f}"
            f"{'' if ratio is None else f'{ratio:.2f}x':>10}"
        )
    lines += [f"skipped: {s}" for s in result.skipped]
    return "\n".join(lines)
