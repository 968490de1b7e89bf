"""``mlsignal doctor``'s quick measurement: which path is fastest on this machine, per batch.

Times the model forward (``runtime.predict``, host numpy in and out) of the bundle on every
path available here — torch and ONNX Runtime on the CPU, and on CUDA when present (eager and
CUDA graphs) — at batch 1 (one symbol per bar) and a few larger batches (many symbols in one
``enhance_batch``), then says which path wins where. Feature computation (a few ms per symbol
whatever the backend) and the network round trip of a remote server are not in these times.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mlsignal.bundle import GOLDEN_FILE, Bundle
from mlsignal.cli.doctor_advice import FIX, OK, WARN, Advice
from mlsignal.errors import MLSignalError

if TYPE_CHECKING:
    from mlsignal.config import Settings

QUICK_BATCHES = (1, 16, 64)
FULL_BATCHES = (1, 16, 64, 256)
#: A path counts as "as fast" as the winner when within this factor of its median.
SAME_SPEED = 1.10


@dataclass
class Measurement:
    """Median forward latency per (path, batch); ``skipped`` says which paths could not run."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"rows": self.rows, "skipped": self.skipped}


def path_name(backend: str, device: str) -> str:
    """``onnx`` + ``cpu`` -> ``onnx on cpu``."""
    return f"{backend} on {device}"


def _windows(bundle: Bundle, batch: int) -> np.ndarray:
    """``batch`` real windows: the bundle's golden inputs, repeated as needed."""
    with np.load(bundle.file(GOLDEN_FILE)) as g:
        ref = g["inputs"].astype(np.float32)
    reps = -(-batch // len(ref))
    return np.ascontiguousarray(np.concatenate([ref] * reps)[:batch])


def _load(
    bundle: Bundle, backend: str, device: str, batches: tuple[int, ...], settings: Settings | None
) -> Any:
    """The runtime of one path, parity-checked. ``torch`` is always eager here (whatever the
    ``ML_CUDA_GRAPHS`` default), ``torch+graphs`` the CUDA-graph runtime, so both are compared."""
    from mlsignal.runtime.base import check_parity

    if backend == "onnx":
        from mlsignal.runtime import load_runtime

        return load_runtime(bundle, device, backend, settings=settings)
    if backend == "torch+graphs":
        from mlsignal.runtime.cuda_graph import CudaGraphRuntime

        runtime: Any = CudaGraphRuntime(bundle, device, buckets=_buckets(batches))
    else:
        from mlsignal.runtime.torch_runtime import TorchRuntime

        runtime = TorchRuntime(bundle, device)
    check_parity(runtime)
    return runtime


def _buckets(batches: tuple[int, ...]) -> tuple[int, ...]:
    """Powers of two covering ``batches`` (and the 16 golden windows of the parity check)."""
    return tuple(sorted({1 << max(0, int(b - 1).bit_length()) for b in (*batches, 16)}))


def median_ms(fn: Callable[[], object], budget_s: float, min_reps: int = 3) -> tuple[float, int]:
    """Median milliseconds of ``fn`` after one warm-up call: at least ``min_reps`` calls, more
    while ``budget_s`` lasts (at most 500)."""
    fn()
    times: list[float] = []
    end = time.perf_counter() + budget_s
    while len(times) < min_reps or (time.perf_counter() < end and len(times) < 500):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3, len(times)


def importable_paths() -> list[tuple[str, str]]:
    """(backend, device) pairs whose packages import here (a broken torch counts as none)."""
    paths: list[tuple[str, str]] = []
    try:
        import torch

        paths.append(("torch", "cpu"))
        if torch.cuda.is_available():
            paths += [("torch", "cuda"), ("torch+graphs", "cuda")]
    except ImportError:
        pass
    try:
        import onnxruntime as ort

        paths.append(("onnx", "cpu"))
        if "CUDAExecutionProvider" in ort.get_available_providers():
            paths.append(("onnx", "cuda"))
    except ImportError:
        pass
    return paths


#: ``doctor --measure``'s time cap for all the timings (plain ``doctor``: 6 s).
MEASURE_TOTAL_S = 60.0


def measure_paths(
    bundle: Bundle,
    batches: tuple[int, ...] = QUICK_BATCHES,
    budget_s: float = 0.15,
    paths: list[tuple[str, str]] | None = None,
    total_s: float = 6.0,
    settings: Settings | None = None,
) -> Measurement:
    """Median ``predict`` latency of every available path at every batch size.

    All paths are loaded first; then batch by batch, smallest first, every path is timed
    (``budget_s`` each). The smallest batch always runs; a larger one whose expected time no
    longer fits in ``total_s`` (counted after loading) is skipped and said so, so a slow or
    busy machine still answers in seconds and every path gets its batch-1 number.
    ``settings`` go to :func:`~mlsignal.runtime.load_runtime` (``None``: the environment's).
    """
    result = Measurement()
    runtimes = []
    for backend, device in paths if paths is not None else importable_paths():
        try:
            runtimes.append((backend, _load(bundle, backend, device, batches, settings)))
        except (MLSignalError, ImportError, RuntimeError, ValueError) as e:
            result.skipped.append(f"{path_name(backend, device)}: {e}")
    deadline = time.perf_counter() + total_s
    last: dict[str, tuple[float, int]] = {}  # path -> (ms, batch) of its last timing
    for batch in sorted(batches):
        for backend, runtime in runtimes:
            name = path_name(backend, runtime.device)
            ms_before, batch_before = last.get(name, (0.0, batch))
            expected_s = (budget_s + 4 * ms_before / 1e3) * max(1.0, batch / batch_before)
            if name in last and time.perf_counter() + expected_s > deadline:
                result.skipped.append(
                    f"{name} batch {batch}: over the time cap ({total_s:g} s"
                    + ("; --measure for more)" if total_s < MEASURE_TOTAL_S else ")")
                )
                continue
            x = _windows(bundle, batch)
            ms, reps = median_ms(lambda rt=runtime, x=x: rt.predict(x), budget_s)
            last[name] = (ms, batch)
            result.rows.append(
                {
                    "backend": backend,
                    "device": runtime.device,
                    "batch": batch,
                    "median_ms": round(ms, 4),
                    "reps": reps,
                }
            )
    return result


def _by_batch(rows: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["batch"], []).append(r)
    return {b: sorted(rs, key=lambda r: r["median_ms"]) for b, rs in sorted(out.items())}


def _symbols(first: int, last: int) -> str:
    """``1`` -> ``1 symbol``; ``16`` -> ``16 symbols``; ``1``, ``16`` -> ``1-16 symbols``."""
    if first == last:
        return f"{first} symbol" + ("" if first == 1 else "s")
    return f"{first}-{last} symbols"


def _as_fast(ranked: list[dict[str, Any]], name: str) -> bool:
    """Whether path ``name`` is within :data:`SAME_SPEED` of the fastest in ``ranked``."""
    mine = [r for r in ranked if path_name(r["backend"], r["device"]) == name]
    return bool(mine) and mine[0]["median_ms"] <= ranked[0]["median_ms"] * SAME_SPEED


def winner_lines(rows: list[dict[str, Any]]) -> list[Advice]:
    """One line per run of batch sizes with the same fastest path, with the runner-up."""
    by_batch = _by_batch(rows)
    runs: list[tuple[str, list[int]]] = []
    for batch, ranked in by_batch.items():
        name = path_name(ranked[0]["backend"], ranked[0]["device"])
        if runs and _as_fast(ranked, runs[-1][0]):
            name = runs[-1][0]  # a tie within SAME_SPEED keeps the previous winner
        if runs and runs[-1][0] == name:
            runs[-1][1].append(batch)
        else:
            runs.append((name, [batch]))
    out = []
    for name, batches in runs:
        ranked = by_batch[batches[0]]
        mine = next(r for r in ranked if path_name(r["backend"], r["device"]) == name)
        others = [r for r in ranked if r is not mine]
        best = f"{mine['median_ms']:.2f} ms at batch {batches[0]}"
        if others:
            other = others[0]
            tie = other["median_ms"] <= mine["median_ms"] * SAME_SPEED
            best += (
                f"{'; about as fast:' if tie else ' vs'} {other['median_ms']:.2f} ms for "
                f"{path_name(other['backend'], other['device'])}"
            )
        text = f"for {_symbols(batches[0], batches[-1])} per bar, {name} is fastest here ({best})"
        out.append(Advice(OK, text))
    return out


def gpu_verdict(rows: list[dict[str, Any]]) -> Advice | None:
    """Whether any CUDA path beats the best CPU path, and from which batch size on."""
    by_batch = _by_batch(rows)
    if not any(r["device"].startswith("cuda") for r in rows):
        return None
    wins = [b for b, ranked in by_batch.items() if ranked[0]["device"].startswith("cuda")]
    if not wins:
        return Advice(
            WARN,
            "the GPU is not faster than the CPU at any measured batch size "
            f"({', '.join(map(str, by_batch))}): for this workload run on the CPU "
            "(ML_INFERENCE_DEVICE=cpu ML_INFERENCE_BACKEND=onnx)",
        )
    return Advice(
        OK,
        f"the GPU is faster from {wins[0]} symbol(s) per bar on "
        f"(measured batches {', '.join(map(str, by_batch))})",
    )


def auto_verdict(rows: list[dict[str, Any]], backend: str, device: str, batch: int) -> Advice:
    """Is what ``auto`` picks within :data:`SAME_SPEED` of the fastest path at ``batch``?"""
    ranked = _by_batch(rows).get(batch, [])
    mine = [r for r in ranked if r["backend"] == backend and r["device"] == device]
    if not ranked or not mine:
        return Advice(
            WARN,
            f"auto picks {path_name(backend, device)}, which was not measured at batch {batch}",
        )
    best, pick = ranked[0], mine[0]
    ratio = pick["median_ms"] / best["median_ms"]
    if ratio <= SAME_SPEED:
        return Advice(
            OK,
            f"auto picks {path_name(backend, device)}: the fastest here for "
            f"{batch} symbol(s) per bar ({pick['median_ms']:.2f} ms)",
        )
    hint = f"ML_INFERENCE_DEVICE={best['device'].split(':')[0]} ML_INFERENCE_BACKEND=" + (
        "onnx" if best["backend"] == "onnx" else "torch"
    )
    if best["backend"] == "torch+graphs":
        hint += " ML_CUDA_GRAPHS=1"
    return Advice(
        FIX,
        f"auto picks {path_name(backend, device)} ({pick['median_ms']:.2f} ms "
        f"at batch {batch}), {ratio:.1f}x slower here than "
        f"{path_name(best['backend'], best['device'])} "
        f"({best['median_ms']:.2f} ms): set {hint}",
    )


def speed_advice(
    m: Measurement, auto_backend: str | None, auto_device: str | None, symbols: int
) -> list[Advice]:
    """All measurement advice: winners per batch range, the GPU verdict, the auto verdict."""
    if not m.rows:
        return [Advice(WARN, "nothing could be measured: " + "; ".join(m.skipped))]
    out = winner_lines(m.rows)
    verdict = gpu_verdict(m.rows)
    if verdict is not None:
        out.append(verdict)
    if auto_backend and auto_device:
        out.append(auto_verdict(m.rows, auto_backend, auto_device, symbols))
    out.append(
        Advice(
            OK,
            "model forward only: features add a few ms per symbol on any "
            "path, and a remote server adds its round trip (docs/BENCHMARKS.md)",
        )
    )
    return out
