"""Rough latency of the torch runtime on CPU and CUDA (not the benchmark suite: see issue 5).

Trains nothing: uses the bundle given (or trains the tiny preset into /tmp). Prints a table
and writes JSON to $OUT/gpu-timing.json when OUT is set.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mlsignal.bundle import load_bundle
from mlsignal.data import load_sample
from mlsignal.enhancer import MLSignalEnhancer
from mlsignal.runtime import load_runtime


def _median_ms(fn, reps: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/timing-bundle")
    if not (path / "manifest.json").exists():
        from mlsignal.training.pipeline import train_bundle

        train_bundle("sp500", path, preset="tiny", device="cpu", progress=False)
    bundle = load_bundle(path)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rng = np.random.default_rng(0)
    shape = (bundle.schema.window, bundle.schema.n_features)
    results = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        results["gpu"] = torch.cuda.get_device_name(0)
    bars = load_sample("sp500").iloc[-400:]
    paths = [(dev, "torch") for dev in devices]
    if "model.onnx" in bundle.manifest["files"]:
        paths.append(("cpu", "onnx"))
    for dev, backend in paths:
        rt = load_runtime(bundle, dev, backend)
        for batch in (1, 256, 4096):
            x = rng.standard_normal((batch, *shape)).astype(np.float32)
            reps = 50 if dev == "cuda" or batch == 1 else 5
            ms = _median_ms(lambda rt=rt, x=x: rt.predict(x), reps)
            results[f"predict_{backend}_{dev}_b{batch}_ms"] = ms
            rate = batch / ms * 1e3
            print(
                f"predict {backend:<5} {dev:<5} batch {batch:>5}: {ms:9.3f} ms {rate:10.0f} win/s"
            )
        enh = MLSignalEnhancer(bundle, device=dev, backend=backend)
        ms = _median_ms(lambda enh=enh: enh.enhance_signal(bars, 30.0, 60.0), 50)
        results[f"enhance_signal_{backend}_{dev}_ms"] = ms
        print(f"enhance_signal {backend:<5} {dev:<5}: {ms:9.3f} ms per call (features included)")
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu-timing.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
