"""The model I/O contract: one module, importable without torch or the server."""

from __future__ import annotations

import subprocess
import sys

from mlsignal import signature
from torch_block import BLOCK_TORCH


def test_triton_version_is_the_first_15_hex_digits_of_the_hash() -> None:
    h = "0123456789abcdef" * 4
    assert signature.triton_version(h) == int(h[:15], 16) == 0x0123456789ABCDE
    assert signature.triton_version("f" * 64) < 2**63  # a positive int64 Triton version


def test_platforms_and_names() -> None:
    assert signature.platform("torch") == "pytorch_libtorch"
    assert signature.platform("onnx") == "onnxruntime_onnx"
    assert signature.platform("other") == "other"
    assert signature.OUTPUT_NAMES == ("p_lstm", "p_tft", "bull_prob")
    assert (signature.INPUT_NAME, signature.DATATYPE, signature.MODEL_NAME) == (
        "windows",
        "FP32",
        "mlsignal",
    )


def test_signature_imports_nothing_of_mlsignal() -> None:
    program = BLOCK_TORCH + (
        "\nimport mlsignal.signature, sys\n"
        "mods = sorted(m for m in sys.modules if m.startswith('mlsignal.'))\n"
        "assert mods == ['mlsignal.signature'], mods\n"
    )
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
