"""The CUDA-graph fast path: same numbers as the CPU, any batch size. Skipped without CUDA."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from mlsignal.bundle import load_bundle
from mlsignal.features import feature_windows, valid_ends
from mlsignal.runtime import load_runtime

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_graphs_match_cpu_at_every_batch_size(tiny_bundle, sp500_bars):
    from test_cuda_parity import _report

    from mlsignal.runtime.cuda_graph import CudaGraphRuntime

    bundle = load_bundle(tiny_bundle)
    cpu = load_runtime(bundle, "cpu", "torch")
    fast = CudaGraphRuntime(bundle, "cuda")
    ends = valid_ends(len(sp500_bars), bundle.schema)[-3000:]
    x = feature_windows(sp500_bars, ends, bundle.schema)
    worst = 0.0
    for n in (1, 2, 3, 16, 100, 1024, 1500, 3000):
        worst = max(worst, float(np.abs(fast.predict(x[:n]) - cpu.predict(x[:n])).max()))
    _report("cuda_graphs_vs_cpu_max_abs_diff", worst)
    assert worst < 1e-5


def test_env_switch_and_latency_report(tiny_bundle, monkeypatch):
    from test_cuda_parity import _report

    from mlsignal.runtime.cuda_graph import CudaGraphRuntime

    bundle = load_bundle(tiny_bundle)
    monkeypatch.setenv("ML_CUDA_GRAPHS", "1")
    fast = load_runtime(bundle, "cuda", "torch")  # the parity gate runs on the graphs
    assert isinstance(fast, CudaGraphRuntime)
    monkeypatch.setenv("ML_CUDA_GRAPHS", "0")
    eager = load_runtime(bundle, "cuda", "torch")
    assert not isinstance(eager, CudaGraphRuntime)
    x = (
        np.random.default_rng(0)
        .standard_normal((1, 64, bundle.schema.n_features))
        .astype(np.float32)
    )
    for name, rt in (("eager", eager), ("graphs", fast)):
        for _ in range(20):
            rt.predict(x)
        t0 = time.perf_counter()
        for _ in range(500):
            rt.predict(x)
        _report(f"batch1_predict_ms_{name}", (time.perf_counter() - t0) / 500 * 1e3)
