"""Development timing of the GPU fast paths (issue 5), in one run on the lent GPU machine.

Usage: ``python3 scripts/gpu_fastpath.py [BUNDLE_DIR]`` (default: artifacts/quick, else the
tiny preset is trained into /tmp). Prints, and writes to $OUT/fastpath.json:

- the device's measured ceilings: float32 / TF32 / bf16 matrix-product TFLOP/s, device copy
  bandwidth, pinned host-to-device bandwidth;
- FLOPs of one window (counted by torch's FlopCounterMode on the CPU, reference and fused);
- per variant (eager, graphs unfused, graphs fused fp32 / tf32 / bf16) and batch size: the
  median wall time of ``predict(numpy)``, and for graph variants the GPU time of one replay
  (CUDA events) so host overhead = wall - replay;
- parity of every variant against the CPU float32 model (max |diff| per output column);
- a kernel profile of the fused forward at batch 1 and 4096.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlsignal.bundle import load_bundle
from mlsignal.runtime.cuda_graph import CudaGraphRuntime
from mlsignal.runtime.fused import FastForward
from mlsignal.runtime.torch_runtime import TorchRuntime, build_model
from mlsignal.signature import OUTPUT_NAMES

BATCHES = tuple(int(b) for b in os.environ.get("FP_BATCHES", "1,16,256,1024,4096,16384").split(","))
RESULTS: dict[str, Any] = {}


def _median_ms(fn: Any, budget_s: float = 0.4, min_reps: int = 5, max_reps: int = 2000) -> float:
    for _ in range(3):
        fn()
    times: list[float] = []
    t_end = time.perf_counter() + budget_s
    while len(times) < min_reps or (time.perf_counter() < t_end and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def _event_ms(fn: Any, reps: int = 50) -> float:
    """GPU time per call of ``fn`` (enqueue only), median over ``reps`` event pairs."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return float(np.median(out))


def ceilings() -> None:
    n = 8192
    a = torch.randn(n, n, device="cuda")
    b = torch.randn(n, n, device="cuda")
    for name, dt, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                           ("bf16", torch.bfloat16, False)):  # fmt: skip
        torch.backends.cuda.matmul.allow_tf32 = tf32
        x, y = a.to(dt), b.to(dt)
        ms = _event_ms(lambda x=x, y=y: x @ y, reps=10)
        RESULTS[f"ceiling_matmul_{name}_tflops"] = 2 * n**3 / ms / 1e9
    torch.backends.cuda.matmul.allow_tf32 = False
    src = torch.empty(2 * 1024**3 // 4, device="cuda")
    src.normal_()
    dst = torch.empty_like(src)
    ms = _event_ms(lambda: dst.copy_(src), reps=10)
    RESULTS["ceiling_copy_GBps_read_plus_write"] = 2 * src.numel() * 4 / ms / 1e6
    host = torch.empty(512 * 1024**2 // 4, pin_memory=True)
    dev = torch.empty(host.numel(), device="cuda")
    ms = _event_ms(lambda: dev.copy_(host, non_blocking=True), reps=10)
    RESULTS["ceiling_h2d_pinned_GBps"] = host.numel() * 4 / ms / 1e6
    big = np.random.default_rng(0).standard_normal(host.numel()).astype(np.float32)
    hn = host.numpy()
    ms = _median_ms(lambda: np.copyto(hn, big), budget_s=0.5)
    RESULTS["host_memcpy_numpy_to_pinned_GBps"] = host.numel() * 4 / ms / 1e6
    a = b = None
    torch.cuda.empty_cache()


def flops_per_window(bundle: Any) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    m = build_model(bundle, "cpu")
    x = torch.randn(8, bundle.schema.window, bundle.schema.n_features)
    for name, fn in (("reference", m), ("fused", FastForward(m, use_triton=False))):
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            fn(x)
        RESULTS[f"flops_per_window_{name}"] = fc.get_total_flops() / 8 + lstm_flops(m)
    RESULTS["flops_per_window_lstms"] = lstm_flops(m)


def lstm_flops(model: torch.nn.Module) -> float:
    """FlopCounterMode does not see nn.LSTM: 2 * 4H * (I + H) per layer and step, per window."""
    total = 0.0
    t = model.config.window
    for mod in model.modules():
        if isinstance(mod, torch.nn.LSTM):
            h = mod.hidden_size
            for layer in range(mod.num_layers):
                i = mod.input_size if layer == 0 else h
                total += 2 * 4 * h * (i + h) * t
    return total


def windows(bundle: Any, n: int, seed: int = 0) -> np.ndarray:
    with np.load(bundle.file("golden.npz")) as g:
        ref = g["inputs"]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *ref.shape[1:])) * ref.std(axis=(0, 1)) + ref.mean(axis=(0, 1))
    return x.astype(np.float32)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("artifacts/quick")
    if not (path / "manifest.json").exists():
        from mlsignal.training.pipeline import train_bundle

        path = Path("/tmp/fastpath-bundle")
        train_bundle("sp500", path, preset="tiny", device="cpu", progress=False)
    bundle = load_bundle(path)
    RESULTS["gpu"] = torch.cuda.get_device_name(0)
    RESULTS["torch"] = torch.__version__
    try:
        import triton

        RESULTS["triton"] = triton.__version__
    except ImportError:
        RESULTS["triton"] = None
    ceilings()
    flops_per_window(bundle)
    print(json.dumps(RESULTS, indent=1), flush=True)

    cpu = TorchRuntime(bundle, "cpu")
    par_x = windows(bundle, 5000, seed=3)
    with np.load(bundle.file("golden.npz")) as g:
        par_x = np.concatenate([g["inputs"].astype(np.float32), par_x])
    ref = cpu.predict(par_x)
    variants: list[tuple[str, Any]] = [("eager", lambda: TorchRuntime(bundle, "cuda"))]
    variants.append(("graphs_unfused", lambda: CudaGraphRuntime(bundle, "cuda", fused=False)))
    for prec in ("fp32", "tf32", "bf16"):
        variants.append(
            (f"graphs_fused_{prec}", lambda p=prec: CudaGraphRuntime(bundle, "cuda", precision=p))
        )
    rows = []
    for name, make in variants:
        t0 = time.perf_counter()
        try:
            rt = make()
        except Exception as e:  # report and go on
            print(f"{name}: FAILED to build: {e!r}", flush=True)
            RESULTS[f"{name}_error"] = repr(e)
            continue
        RESULTS[f"{name}_load_s"] = time.perf_counter() - t0
        diffs = []
        for n in (1, 7, 1500, len(par_x)):
            got = rt.predict(par_x[:n])
            diffs.append(np.abs(got.astype(np.float64) - ref[:n]).max(axis=0))
        worst = np.max(diffs, axis=0)
        RESULTS[f"{name}_parity_max_abs"] = dict(zip(OUTPUT_NAMES, map(float, worst), strict=True))
        print(f"{name}: parity vs cpu fp32 {worst}", flush=True)
        for batch in BATCHES:
            x = windows(bundle, batch, seed=batch)
            wall = _median_ms(lambda rt=rt, x=x: rt.predict(x), budget_s=0.4)
            row = {"variant": name, "batch": batch, "wall_ms": wall,
                   "windows_per_s": batch / wall * 1e3}  # fmt: skip
            graphs = getattr(rt, "_pick", None)
            if graphs is not None and batch <= rt._largest.batch:
                gr = graphs[batch]
                row["replay_gpu_ms"] = _event_ms(gr.graph.replay)
                row["bucket"] = gr.batch
            elif graphs is not None:
                gr = rt._largest
                ms = _event_ms(gr.graph.replay)
                row["replay_gpu_ms_per_chunk"] = ms
                row["device_windows_per_s"] = gr.batch / ms * 1e3
            rows.append(row)
            print(json.dumps(row), flush=True)
        del rt
        torch.cuda.empty_cache()
    RESULTS["rows"] = rows
    profile(bundle)
    out = os.environ.get("OUT")
    if out:
        Path(out, "fastpath.json").write_text(json.dumps(RESULTS, indent=1))
    print("\nvariant               batch    wall ms   replay ms   windows/s")
    for r in rows:
        rep = r.get("replay_gpu_ms", r.get("replay_gpu_ms_per_chunk", float("nan")))
        print(f"{r['variant']:<20} {r['batch']:>6} {r['wall_ms']:>10.4f} {rep:>10.4f} "
              f"{r['windows_per_s']:>12,.0f}")  # fmt: skip


def profile(bundle: Any) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    m = build_model(bundle, "cuda")
    fast = FastForward(m)
    out = os.environ.get("OUT", "/tmp")
    for batch in (1, 4096):
        x = torch.from_numpy(windows(bundle, batch)).cuda()
        for name, fn in (("fused", fast), ("reference", m)):
            with torch.inference_mode():
                for _ in range(3):
                    fn(x)
                torch.cuda.synchronize()
                with prof(activities=[ProfilerActivity.CUDA]) as p:
                    fn(x)
                    torch.cuda.synchronize()
            table = p.key_averages().table(sort_by="cuda_time_total", row_limit=14)
            Path(out, f"profile_{name}_b{batch}.txt").write_text(table)
            n_kernels = sum(e.count for e in p.key_averages() if e.device_type.name == "CUDA")
            RESULTS[f"profile_{name}_b{batch}_kernels"] = n_kernels
            print(f"--- {name} batch {batch}: {n_kernels} kernels\n" + table[:2500], flush=True)


if __name__ == "__main__":
    main()
