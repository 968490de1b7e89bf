"""The runtime factory: pick a backend and a device for a bundle, build it, gate it on parity.

It imports every implementation (lazily: onnxruntime and torch load only when chosen); they
import :mod:`mlsignal.runtime.base`, never this module.
"""

from __future__ import annotations

import os

from mlsignal.bundle import Bundle
from mlsignal.config import resolve_backend, resolve_device
from mlsignal.errors import ConfigError
from mlsignal.runtime.base import Runtime, check_parity

#: Switch for the CUDA-graph fast path of the torch backend on CUDA (``0`` turns it off).
CUDA_GRAPHS_ENV = "ML_CUDA_GRAPHS"
#: Whether CUDA graphs are used on CUDA when ``ML_CUDA_GRAPHS`` is unset.
CUDA_GRAPHS_DEFAULT = True
#: Precision of the CUDA-graph path: fp32 (default), tf32 or bf16.
GPU_PRECISION_ENV = "ML_GPU_PRECISION"


def load_runtime(
    bundle: Bundle,
    device: str | None = None,
    backend: str | None = None,
    verify: bool = True,
    *,
    intra_op_threads: int | None = None,
    inter_op_threads: int | None = None,
) -> Runtime:
    """Load ``bundle`` on ``device`` (auto, cpu, cuda, cuda:N) with ``backend``.

    ``backend`` is ``torch``, ``onnx`` or ``auto``/``None`` (``ML_INFERENCE_BACKEND``, else
    auto: onnx on the CPU when the bundle has ``model.onnx``, else torch when installed, else
    onnx; see :func:`mlsignal.config.resolve_backend`). The thread counts apply to ONNX
    Runtime. With
    ``verify`` (the default) the golden parity check runs before the runtime is returned, so
    a runtime that drifts never serves.
    """
    kind = resolve_backend(backend, device=device, onnx_model=has_onnx_model(bundle))
    if kind == "onnx":
        from mlsignal.runtime.onnx_runtime import OnnxRuntime

        runtime: Runtime = OnnxRuntime(bundle, device, intra_op_threads, inter_op_threads)
    elif _cuda_graphs_wanted(device):
        from mlsignal.runtime.cuda_graph import CudaGraphRuntime

        precision = os.environ.get(GPU_PRECISION_ENV, "") or "fp32"
        runtime = CudaGraphRuntime(bundle, device, precision=precision)
    else:
        from mlsignal.runtime.torch_runtime import TorchRuntime

        runtime = TorchRuntime(bundle, device)
    if verify:
        check_parity(runtime)
    return runtime


def has_onnx_model(bundle: Bundle) -> bool:
    """Whether the bundle records a ``model.onnx`` (its hash is checked when it is read).

    The name is onnx_runtime.ONNX_FILE, spelt out: that module imports onnxruntime.
    """
    return "model.onnx" in bundle.manifest.get("files", {})


def _cuda_graphs_wanted(device: str | None) -> bool:
    """The device resolves to CUDA and ``ML_CUDA_GRAPHS`` is on (default: CUDA_GRAPHS_DEFAULT)."""
    value = os.environ.get(CUDA_GRAPHS_ENV, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value not in ("", "1", "true", "yes", "on"):
        raise ConfigError(f"{CUDA_GRAPHS_ENV}={value!r}: use 1 or 0")
    if not value and not CUDA_GRAPHS_DEFAULT:
        return False
    return resolve_device(device).startswith("cuda")
