"""A torch-free trading host: `import mlsignal` + a full enhance on ONNX Runtime, no torch."""

from __future__ import annotations

import subprocess
import sys

from mlsignal.enhancer import MLSignalEnhancer
from torch_block import BLOCK_TORCH

# Any attempt to import torch fails loudly, so a lazy import on the path cannot hide.
PROGRAM = (
    BLOCK_TORCH
    + r"""

import mlsignal
from mlsignal.data import load_sample
from mlsignal.enhancer import MLSignalEnhancer, SignalRequest

enhancer = MLSignalEnhancer(sys.argv[1], device="cpu", backend="onnx")
bars = load_sample("sp500")
ess, ebs, info = enhancer.enhance_signal(bars, 30.0, 60.0)
batch = enhancer.enhance_batch([SignalRequest("A", bars.iloc[:-5]), SignalRequest("B", bars)])
assert info["source"] == "local" and info["backend"] == "onnx", info
assert len(batch) == 2 and "torch" not in sys.modules
print(repr(info["bull_prob"]), repr(ess), repr(ebs))
"""
)


def test_enhance_on_onnx_never_imports_torch(tiny_bundle, sp500_bars):
    run = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(tiny_bundle)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    bull, ess, ebs = (float(v) for v in run.stdout.split())
    ess_t, ebs_t, info_t = MLSignalEnhancer(
        tiny_bundle, device="cpu", backend="torch"
    ).enhance_signal(sp500_bars, 30.0, 60.0)
    assert abs(bull - info_t["bull_prob"]) < 1e-5
    assert abs(ess - ess_t) < 1e-3 and abs(ebs - ebs_t) < 1e-3
