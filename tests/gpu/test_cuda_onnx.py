"""ONNX Runtime against PyTorch on CUDA. Skipped without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlsignal.bundle import load_bundle
from mlsignal.errors import DeviceUnavailableError
from mlsignal.features import feature_windows, valid_ends
from mlsignal.runtime import load_runtime

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
ort = pytest.importorskip("onnxruntime")


def _windows(bundle, sp500_bars) -> np.ndarray:
    ends = valid_ends(len(sp500_bars), bundle.schema)[::3][:1500]
    real = feature_windows(sp500_bars, ends, bundle.schema)
    rng = np.random.default_rng(11)
    rand = rng.standard_normal((512, *real.shape[1:])) * real.std(axis=(0, 1)) + real.mean(
        axis=(0, 1)
    )
    return np.concatenate([real, rand.astype(np.float32)])


def test_torch_cuda_vs_onnx_cpu(tiny_bundle, sp500_bars):
    from test_cuda_parity import _report  # same folder: tests/gpu is on sys.path

    bundle = load_bundle(tiny_bundle)
    assert "model.onnx" in bundle.manifest["files"]
    gpu = load_runtime(bundle, "cuda", "torch")
    cpu = load_runtime(bundle, "cpu", "onnx")
    x = _windows(bundle, sp500_bars)
    worst = float(np.abs(gpu.predict(x) - cpu.predict(x)).max())
    _report("torch_cuda_vs_onnx_cpu_max_abs_diff", worst)
    assert worst < 1e-5


def test_onnx_cuda_runs_or_says_why(tiny_bundle, sp500_bars):
    bundle = load_bundle(tiny_bundle)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(DeviceUnavailableError, match="no CUDAExecutionProvider"):
            load_runtime(bundle, "cuda", "onnx")
        return
    onnx_gpu = load_runtime(bundle, "cuda", "onnx")
    x = _windows(bundle, sp500_bars)
    worst = float(
        np.abs(onnx_gpu.predict(x) - load_runtime(bundle, "cpu", "torch").predict(x)).max()
    )
    assert worst < 1e-5
