"""The inference rewrite (mlsignal.runtime.fused) against SignalModel.forward, on the CPU.

Runs everywhere (no CUDA needed): the last-step-only TFT tail and the reference variable
selection give the model's numbers to float32 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlsignal.bundle import load_bundle
from mlsignal.errors import ConfigError
from mlsignal.runtime.fused import FastForward, check_precision
from mlsignal.runtime.torch_runtime import build_model


def test_fast_forward_equals_the_model(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    model = build_model(bundle, "cpu")
    with np.load(bundle.file("golden.npz")) as g:
        golden = torch.from_numpy(g["inputs"].astype(np.float32))
    rng = np.random.default_rng(3)
    noise = torch.from_numpy(rng.standard_normal(golden.shape).astype(np.float32))
    fast = FastForward(model)
    assert not fast.fused_vsn  # CPU: the reference variable selection
    with torch.inference_mode():
        for x in (golden, golden + noise * golden.std(), golden[:1]):
            ref, got = model(x), fast(x)
            assert got.shape == ref.shape
            assert float((ref - got).abs().max()) < 1e-6
    # the rewrite shares the parameters: the state_dict keys are the model's, with a prefix
    assert {k.removeprefix("m.") for k in fast.state_dict()} == set(model.state_dict())


def test_precision_names():
    assert check_precision("BF16") == "bf16"
    assert check_precision("") == "fp32"
    with pytest.raises(ConfigError, match="fp16"):
        check_precision("fp16")
