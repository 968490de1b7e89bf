"""The runtime factory: pick a backend and a device for a bundle, build it, gate it on parity.

It imports every implementation (lazily: onnxruntime and torch load only when chosen); they
import :mod:`mlsignal.runtime.base`, never this module. Its knobs come from one
:class:`~mlsignal.config.Settings`, read at the edge; nothing here reads the environment.
"""

from __future__ import annotations

from mlsignal.bundle import Bundle
from mlsignal.config import Settings, resolve_backend, resolve_device
from mlsignal.runtime.base import Runtime, check_parity


def load_runtime(
    bundle: Bundle,
    device: str | None = None,
    backend: str | None = None,
    verify: bool = True,
    *,
    settings: Settings | None = None,
    intra_op_threads: int | None = None,
    inter_op_threads: int | None = None,
) -> Runtime:
    """Load ``bundle`` on ``device`` (auto, cpu, cuda, cuda:N) with ``backend``.

    ``settings`` (default :meth:`Settings.from_env`, for library callers; the CLI passes the
    one it built) gives what the arguments leave open: the device and the backend when they
    are ``None``, CUDA graphs and their precision, and ONNX Runtime's thread counts (the
    ``*_op_threads`` arguments win over them). ``backend`` is ``torch``, ``onnx`` or
    ``auto`` (auto: onnx on the CPU when the bundle has ``model.onnx``, else torch when
    installed, else onnx; see :func:`mlsignal.config.resolve_backend`). On CUDA the torch
    backend replays CUDA graphs unless ``settings.cuda_graphs`` is off. With ``verify`` (the
    default) the golden parity check runs before the runtime is returned, so a runtime that
    drifts never serves.
    """
    settings = settings or Settings.from_env()
    device = device or settings.device
    kind = resolve_backend(
        backend or settings.backend, device=device, onnx_model=has_onnx_model(bundle)
    )
    if kind == "onnx":
        from mlsignal.runtime.onnx_runtime import OnnxRuntime

        intra = settings.onnx_intra_op_threads if intra_op_threads is None else intra_op_threads
        inter = settings.onnx_inter_op_threads if inter_op_threads is None else inter_op_threads
        runtime: Runtime = OnnxRuntime(bundle, device, intra, inter)
    elif _cuda_graphs_wanted(device, settings):
        from mlsignal.runtime.cuda_graph import CudaGraphRuntime

        runtime = CudaGraphRuntime(bundle, device, precision=settings.gpu_precision)
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


def _cuda_graphs_wanted(device: str | None, settings: Settings) -> bool:
    """The device resolves to CUDA and ``settings.cuda_graphs`` (``ML_CUDA_GRAPHS``) is on."""
    return settings.cuda_graphs and resolve_device(device).startswith("cuda")
