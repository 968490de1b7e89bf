"""The ONNX Runtime default-settings baseline of the model forward.

What a user who exports the model and opens it the obvious way gets: an
``onnxruntime.InferenceSession`` on the bundle's ``model.onnx`` with default
``SessionOptions`` (no thread or optimisation settings of ours), ``session.run`` on the same
random batches as the other paths. Its rows have backend ``onnx-default``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlsignal.bundle import Bundle
from mlsignal.errors import MLSignalError

BACKEND = "onnx-default"
ONNX_FILE = "model.onnx"


def default_session(bundle: Bundle, device: str) -> Any:
    """An InferenceSession with default options on ``cpu`` or ``cuda:N``; else an error."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MLSignalError("onnxruntime is not installed") from None
    path = bundle.file(ONNX_FILE)
    if not path.is_file():
        raise MLSignalError(f"bundle has no {ONNX_FILE} (run `mlsignal export-onnx`)")
    if device == "cpu":
        providers: list[Any] = ["CPUExecutionProvider"]
    elif "CUDAExecutionProvider" in ort.get_available_providers():
        index = int(device.split(":")[1]) if ":" in device else 0
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    else:
        raise MLSignalError("onnxruntime has no CUDAExecutionProvider here")
    return ort.InferenceSession(str(path), providers=providers)


def default_forward(session: Any) -> Any:
    """``f(windows)``: one ``session.run`` of every output, as a plain user would call it."""
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> Any:
        return session.run(None, {name: x})

    return run


def devices_to_baseline(paths: tuple[tuple[str, str], ...]) -> list[str]:
    """``cpu`` always (the fallback baseline), plus ``cuda`` where a path runs on CUDA."""
    devices = ["cpu"]
    if any(device.startswith("cuda") for _, device in paths):
        devices.append("cuda:0")
    return devices
