"""The model-forward and ``enhance_signal`` benchmarks over every available path, plus the
server benchmarks (:mod:`mlsignal.bench.server_bench`).

A path is a (backend, device) pair: torch on cpu, torch on cuda (eager), onnx on cpu, onnx on
cuda where onnxruntime has the CUDA provider. Each row records median and p99 latency and
windows per second, and the baselines a user would otherwise use, side by side:

- ``speedup_vs_torch_eager``: the torch-eager median on the same device over this row's
  median (1.0 for torch eager itself), next to ``torch_eager_median_ms``;
- ``speedup_vs_onnx_default``: the median of ONNX Runtime with default settings
  (:mod:`mlsignal.bench.baselines`, backend ``onnx-default``) on the same device over this
  row's median, next to ``onnx_default_median_ms`` and ``onnx_default_device`` (the CPU
  baseline where onnxruntime has no CUDA provider). Forward rows only.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlsignal.bench import baselines
from mlsignal.bench.timing import Timing, measure
from mlsignal.bundle import Bundle
from mlsignal.errors import MLSignalError

if TYPE_CHECKING:
    from mlsignal.bench.paths import PathsConfig
    from mlsignal.bench.server_bench import ServerBenchConfig

FULL_BATCHES = (1, 16, 256, 1024, 4096)
QUICK_BATCHES = (1, 16, 256)


@dataclass(frozen=True)
class BenchConfig:
    """What to measure; ``budget_s`` is the timing budget per measurement.

    ``server``: the server benchmarks' settings, ``None`` to skip them; ``serving``: the
    serving paths' (windows, bars, one window, burst; :mod:`mlsignal.bench.paths`).
    """

    batches: tuple[int, ...] = FULL_BATCHES
    budget_s: float = 1.0
    paths: tuple[tuple[str, str], ...] = ()
    onnx_default: bool = True
    server: ServerBenchConfig | None = None
    serving: PathsConfig | None = None


@dataclass
class BenchResult:
    """Rows of measurements, the server section, and a description of the machine."""

    machine: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    server: dict[str, Any] | None = None
    serving: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


#: CUDA-graph paths (the default CUDA runtime, fused) and the precision each one runs in.
GRAPH_PATHS: dict[str, str] = {
    "torch+graphs": "fp32",
    "torch+graphs+tf32": "tf32",
    "torch+graphs+bf16": "bf16",
}


def available_paths() -> list[tuple[str, str]]:
    """(backend, device) pairs that can run here."""
    import importlib.util

    paths = []
    if importlib.util.find_spec("torch") is not None:
        import torch

        paths.append(("torch", "cpu"))
        if torch.cuda.is_available():
            paths += [(name, "cuda") for name in ("torch", *GRAPH_PATHS)]
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime as ort

        paths.append(("onnx", "cpu"))
        if "CUDAExecutionProvider" in ort.get_available_providers():
            paths.append(("onnx", "cuda"))
    return paths


def machine_info() -> dict[str, Any]:
    """Python, platform, CPU count, torch/CUDA/GPU, onnxruntime versions, date."""
    from mlsignal.bench.machine import collect

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
    """The runtime of one path, parity-gated. ``torch`` is always PyTorch eager (the brief's
    plain approach), also on CUDA where ``load_runtime`` would pick the CUDA-graph runtime."""
    from mlsignal.runtime import load_runtime
    from mlsignal.runtime.base import check_parity

    if backend in GRAPH_PATHS:
        from mlsignal.runtime.cuda_graph import CudaGraphRuntime

        rt: Any = CudaGraphRuntime(bundle, device, precision=GRAPH_PATHS[backend])
    elif backend == "torch" and device != "cpu":
        from mlsignal.runtime.torch_runtime import TorchRuntime

        rt = TorchRuntime(bundle, device)
    else:
        return load_runtime(bundle, device, backend)
    check_parity(rt)
    return rt


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
    """One symbol, end to end: ``enhance_signal`` on 256 bars (validation, features, model,
    GARCH, fusion; the streaming shortcut off) and ``enhance_bar`` (one new closed bar into
    the symbol's feature stream, the live-loop path), each with given scores."""
    from mlsignal.data import load_sample
    from mlsignal.enhancer import MLSignalEnhancer

    sample = load_sample("sp500")
    bars = sample.iloc[-bundle.min_bars :]
    for backend, device in cfg.paths:
        if backend in GRAPH_PATHS and GRAPH_PATHS[backend] != "fp32":
            continue  # reduced precision: forward rows only
        try:
            torch_path = backend in GRAPH_PATHS or backend == "torch"
            kind = "torch" if torch_path else backend
            enh = MLSignalEnhancer(bundle, device=device, backend=kind, streaming=False)
            if torch_path and device != "cpu":  # eager or graphs, as the row says
                enh.runtime = _load(bundle, backend, device)
        except MLSignalError as e:
            result.skipped.append(f"enhance {backend}/{device}: {e}")
            continue
        t = measure(lambda enh=enh: enh.enhance_signal(bars, 30.0, 60.0), cfg.budget_s)
        result.rows.append(_row("enhance_signal", backend, enh.runtime.device, 1, t))
        t = measure(_bar_stream(enh, sample, bundle.min_bars), cfg.budget_s)
        result.rows.append(_row("enhance_bar", backend, enh.runtime.device, 1, t))


def _bar_stream(enh: Any, sample: pd.DataFrame, seed_bars: int) -> Callable[[], Any]:
    """A call that feeds the next bar of ``sample`` to ``enh.enhance_bar`` (re-seeding from
    the start when the sample runs out); bars are plain dicts made before timing."""
    rows = [
        {"timestamp": ts, **{c: float(v) for c, v in zip(sample.columns, vals, strict=True)}}
        for ts, vals in zip(sample.index, sample.to_numpy(), strict=True)
    ]
    pos = [len(rows)]

    def call() -> Any:
        if pos[0] >= len(rows):
            enh.seed("BENCH", sample.iloc[:seed_bars])
            pos[0] = seed_bars
        out = enh.enhance_bar("BENCH", rows[pos[0]], 30.0, 60.0)
        pos[0] += 1
        return out

    return call


def bench_onnx_default(bundle: Bundle, cfg: BenchConfig, result: BenchResult) -> None:
    """The ONNX Runtime default-settings baseline at every batch size (backend onnx-default)."""
    for device in baselines.devices_to_baseline(cfg.paths):
        try:
            run = baselines.default_forward(baselines.default_session(bundle, device))
        except MLSignalError as e:
            result.skipped.append(f"{baselines.BACKEND}/{device}: {e}")
            continue
        for batch in cfg.batches:
            x = _windows(bundle, batch)
            t = measure(lambda run=run, x=x: run(x), cfg.budget_s)
            result.rows.append(_row("forward", baselines.BACKEND, device, batch, t))


def add_ratios(result: BenchResult) -> None:
    """``speedup_vs_torch_eager`` and ``speedup_vs_onnx_default``, next to their baselines."""
    torch_base = _medians(result, "torch")  # "torch+graphs" rows are compared with it
    onnx_base = _medians(result, baselines.BACKEND)
    for r in result.rows:
        key = (r["what"], r["device"], r["batch"])
        ref = torch_base.get(key)
        if ref is None and r["device"] != "cpu":  # e.g. onnx cuda vs torch cuda
            ref = torch_base.get((r["what"], r["device"].split(":")[0] + ":0", r["batch"]))
        r["torch_eager_median_ms"] = ref
        r["speedup_vs_torch_eager"] = None if ref is None else ref / r["median_ms"]
        onnx_dev = r["device"] if key in onnx_base else "cpu"
        ref = onnx_base.get((r["what"], onnx_dev, r["batch"]))
        r["onnx_default_median_ms"] = ref
        r["onnx_default_device"] = None if ref is None else onnx_dev
        r["speedup_vs_onnx_default"] = None if ref is None else ref / r["median_ms"]


def _medians(result: BenchResult, backend: str) -> dict[tuple[str, str, int], float]:
    return {
        (r["what"], r["device"], r["batch"]): r["median_ms"]
        for r in result.rows
        if r["backend"] == backend
    }


def run_bench(
    bundle: Bundle, cfg: BenchConfig, echo: Callable[[str], None] | None = None
) -> BenchResult:
    """Every benchmark, in one result; ``echo`` hears one line as each stage starts."""
    say = _stages(echo)
    result = BenchResult(machine_info())
    say(f"model forward: {len(cfg.paths)} path(s) x {len(cfg.batches)} batch sizes")
    bench_forward(bundle, cfg, result)
    if cfg.onnx_default:
        say("ONNX Runtime with its default settings (the baseline)")
        bench_onnx_default(bundle, cfg, result)
    say("enhance_signal end to end")
    bench_enhance(bundle, cfg, result)
    add_ratios(result)
    if cfg.server is not None:
        say("the HTTP server under closed-loop clients")
        from mlsignal.bench.server_bench import run_server_bench

        try:
            result.server = run_server_bench(bundle.path, bundle, cfg.server, result.skipped)
        except (MLSignalError, OSError) as e:
            result.skipped.append(f"server: {e}")
    if cfg.serving is not None:
        from mlsignal.bench.paths import measure_paths

        say("the serving paths (windows, bars, one window, bar-close burst)")
        try:
            result.serving = measure_paths(bundle.path, bundle, cfg.serving)
        except (MLSignalError, OSError) as e:
            result.skipped.append(f"serving paths: {e}")
    return result


def _stages(echo: Callable[[str], None] | None) -> Callable[[str], None]:
    """``echo`` with the stage's number and the seconds since the first stage."""
    t0 = time.perf_counter()
    count = 0

    def say(what: str) -> None:
        nonlocal count
        count += 1
        if echo is not None:
            echo(f"bench [{time.perf_counter() - t0:6.1f} s] stage {count}: {what}")

    return say


def format_table(result: BenchResult) -> str:
    """A fixed-width table of the rows, then the server section."""
    head = (f"{'what':<15}{'backend':<19}{'device':<8}{'batch':>6}{'median ms':>11}"
            f"{'p99 ms':>10}{'win/s':>12}{'vs torch':>10}{'vs onnx-def':>13}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in result.rows:
        lines.append(
            f"{r['what']:<15}{r['backend']:<19}{r['device']:<8}{r['batch']:>6}"
            f"{r['median_ms']:>11.3f}{r['p99_ms']:>10.3f}{r['windows_per_s']:>12.0f}"
            f"{_times(r['speedup_vs_torch_eager']):>10}{_times(r['speedup_vs_onnx_default']):>13}"
        )
    if result.server is not None:
        from mlsignal.bench.server_bench import format_server

        lines += ["", format_server(result.server)]
    if result.serving is not None:
        from mlsignal.bench.paths import format_paths

        lines += ["", format_paths(result.serving)]
    lines += [f"skipped: {s}" for s in result.skipped]
    return "\n".join(lines)


def _times(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.2f}x"
