"""Every CUDA fast path against the CPU float32 model, errors, switches. Skipped without CUDA."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from mlsignal.bundle import load_bundle
from mlsignal.errors import ConfigError, FeatureSchemaError
from mlsignal.features import feature_windows, valid_ends
from mlsignal.runtime import load_runtime
from mlsignal.runtime.fused import PRECISION_ATOL

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

BATCHES = (1, 2, 3, 16, 100, 1024, 1500, 4096, 5000)  # 5000: chunks past the largest bucket


@pytest.fixture(scope="module")
def setup(tiny_bundle, sp500_bars):
    bundle = load_bundle(tiny_bundle)
    ends = valid_ends(len(sp500_bars), bundle.schema)
    real = feature_windows(sp500_bars, ends[-3000:], bundle.schema)
    rng = np.random.default_rng(5)
    rand = rng.standard_normal((2000, *real.shape[1:])) * real.std(axis=(0, 1))
    x = np.concatenate([real, (rand + real.mean(axis=(0, 1))).astype(np.float32)])
    ref = load_runtime(bundle, "cpu", "torch").predict(x)
    return bundle, x, ref


@pytest.mark.parametrize(
    ("precision", "fused"), [("fp32", True), ("fp32", False), ("tf32", True), ("bf16", True)]
)
def test_fast_path_matches_cpu_float32(setup, precision, fused):
    from test_cuda_parity import _report

    from mlsignal.runtime.cuda_graph import CudaGraphRuntime

    bundle, x, ref = setup
    rt = CudaGraphRuntime(bundle, "cuda", precision=precision, fused=fused)
    atol = PRECISION_ATOL[precision]
    assert rt.parity_atol == atol
    worst = 0.0
    for n in BATCHES:
        got = rt.predict(x[:n])
        assert got.shape == (n, 3) and got.dtype == np.float32 and np.isfinite(got).all()
        worst = max(worst, float(np.abs(got - ref[:n]).max()))
    _report(f"fast_path_{precision}_{'fused' if fused else 'unfused'}_max_abs_diff", worst)
    assert worst < atol, f"{precision} fused={fused}: worst {worst:.3g} >= {atol:g}"
    if precision == "fp32":
        assert worst < 1e-5


def test_non_finite_input_is_named_and_padding_is_cleaned(setup):
    from mlsignal.runtime.cuda_graph import CudaGraphRuntime

    bundle, x, ref = setup
    rt = CudaGraphRuntime(bundle, "cuda", buckets=(1, 8, 64))
    for n in (5, 64, 200):  # inside a bucket, a full bucket, chunks
        bad = x[:n].copy()
        bad[n - 1, 10, 3] = np.nan
        with pytest.raises(FeatureSchemaError, match=f"window {n - 1} has a non-finite value"):
            rt.predict(bad)
        # the NaN row sat in the pinned buffer: a smaller call padded with it still works
        got = rt.predict(x[: n // 2 or 1])
        assert np.abs(got - ref[: n // 2 or 1]).max() < 1e-5


def test_wrong_shape_and_dtype_go_through_the_host_checks(setup):
    from mlsignal.runtime.cuda_graph import CudaGraphRuntime

    bundle, x, ref = setup
    rt = CudaGraphRuntime(bundle, "cuda", buckets=(1, 4))
    with pytest.raises(FeatureSchemaError, match="expects"):
        rt.predict(x[:2, :10])
    got = rt.predict(x[:3].astype(np.float64))  # converted, same numbers
    assert np.abs(got - ref[:3]).max() < 1e-5
    got = rt.predict(x[0])  # one (T, F) window
    assert got.shape == (1, 3)


def test_concurrent_callers_get_their_own_rows(setup):
    from mlsignal.runtime.cuda_graph import CudaGraphRuntime

    bundle, x, ref = setup
    rt = CudaGraphRuntime(bundle, "cuda", buckets=(1, 16, 256))
    errors: list[str] = []

    def worker(k: int) -> None:
        for i in range(40):
            lo = (k * 97 + i * 13) % 2000
            n = 1 + (i * 7 + k) % 300
            got = rt.predict(x[lo : lo + n])
            if np.abs(got - ref[lo : lo + n]).max() >= 1e-5:
                errors.append(f"thread {k} call {i}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_load_runtime_switches(setup, monkeypatch):
    from mlsignal.runtime.cuda_graph import CudaGraphRuntime
    from mlsignal.runtime.torch_runtime import TorchRuntime

    bundle, x, ref = setup
    monkeypatch.delenv("ML_CUDA_GRAPHS", raising=False)
    monkeypatch.delenv("ML_GPU_PRECISION", raising=False)
    rt = load_runtime(bundle, "cuda", "torch")  # graphs are the CUDA default
    assert isinstance(rt, CudaGraphRuntime) and rt.precision == "fp32"
    monkeypatch.setenv("ML_CUDA_GRAPHS", "0")
    rt = load_runtime(bundle, "cuda", "torch")
    assert type(rt) is TorchRuntime
    monkeypatch.setenv("ML_CUDA_GRAPHS", "maybe")
    with pytest.raises(ConfigError, match="ML_CUDA_GRAPHS"):
        load_runtime(bundle, "cuda", "torch")
    monkeypatch.setenv("ML_CUDA_GRAPHS", "1")
    monkeypatch.setenv("ML_GPU_PRECISION", "bf16")
    rt = load_runtime(bundle, "cuda", "torch")  # the gate runs with the bf16 tolerance
    assert isinstance(rt, CudaGraphRuntime) and rt.precision == "bf16"
    assert np.abs(rt.predict(x[:64]) - ref[:64]).max() < PRECISION_ATOL["bf16"]
    monkeypatch.setenv("ML_GPU_PRECISION", "fp8")
    with pytest.raises(ConfigError, match="fp8"):
        load_runtime(bundle, "cuda", "torch")
    # settings are read once and checked whole (issue 11): fp8 is refused on CPU too
    with pytest.raises(ConfigError, match="fp8"):
        load_runtime(bundle, "cpu", "torch")
    monkeypatch.setenv("ML_GPU_PRECISION", "bf16")
    assert type(load_runtime(bundle, "cpu", "torch")) is TorchRuntime  # CPU: never graphs
