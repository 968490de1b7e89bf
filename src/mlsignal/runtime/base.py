"""The runtime protocol, the golden-output parity gate, and the factory."""

from __future__ import annotations

import logging
import os
from typing import Protocol, runtime_checkable

import numpy as np

from mlsignal.bundle import GOLDEN_FILE, Bundle
from mlsignal.config import resolve_backend
from mlsignal.errors import ConfigError, FeatureSchemaError, ParityError

log = logging.getLogger(__name__)

#: float32 tolerance on ``bull_prob`` between backends and devices.
PARITY_ATOL = 1e-5
#: Switch for the CUDA-graph fast path of the torch backend on CUDA (``0`` turns it off).
CUDA_GRAPHS_ENV = "ML_CUDA_GRAPHS"
#: Whether CUDA graphs are used on CUDA when ``ML_CUDA_GRAPHS`` is unset.
CUDA_GRAPHS_DEFAULT = True
#: Precision of the CUDA-graph path: fp32 (default), tf32 or bf16.
GPU_PRECISION_ENV = "ML_GPU_PRECISION"


@runtime_checkable
class Runtime(Protocol):
    """What the enhancer and the server need from a loaded model."""

    bundle: Bundle
    backend: str
    device: str

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """Feature windows ``(B, T, F)`` float32 -> outputs ``(B, 3)`` float32 (OUTPUT_NAMES)."""
        ...


def check_windows(windows: np.ndarray, bundle: Bundle) -> np.ndarray:
    """Return ``windows`` as a C-contiguous float32 ``(B, T, F)`` array, or raise."""
    schema = bundle.schema
    arr = np.asarray(windows)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (schema.window, schema.n_features):
        raise FeatureSchemaError(
            f"feature windows have shape {tuple(np.shape(windows))}; this model expects "
            f"(batch, {schema.window}, {schema.n_features}) (schema {schema.hash[:12]})"
        )
    if arr.shape[0] == 0:
        raise FeatureSchemaError("feature windows are empty (batch of 0)")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        b, t, f = np.argwhere(~np.isfinite(arr))[0]
        raise FeatureSchemaError(
            f"feature window {b} has a non-finite value at step {t}, feature {schema.names[f]!r}"
        )
    return arr


def check_parity(runtime: Runtime, atol: float | None = None) -> float:
    """Run the bundle's golden inputs; raise :class:`ParityError` beyond ``atol``.

    ``atol`` defaults to the runtime's ``parity_atol`` (reduced GPU precision) or
    :data:`PARITY_ATOL`. Returns the worst absolute difference on ``bull_prob``.
    """
    if atol is None:
        atol = getattr(runtime, "parity_atol", PARITY_ATOL)
    with np.load(runtime.bundle.file(GOLDEN_FILE)) as golden:
        inputs, expected = golden["inputs"], golden["expected"]
    got = runtime.predict(inputs)
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    worst_bull = float(diff[:, 2].max())
    worst_all = float(diff.max())
    if not np.isfinite(got).all() or worst_all > atol:
        raise ParityError(
            f"{runtime.backend} on {runtime.device} drifts from the bundle's golden outputs: "
            f"worst |diff| {worst_all:.3g} (bull_prob {worst_bull:.3g}) > tolerance {atol:g}; "
            f"refusing to serve bundle {runtime.bundle.model_version}"
        )
    log.info(
        "parity ok: backend=%s device=%s worst_diff=%.3g over %d golden windows",
        runtime.backend,
        runtime.device,
        worst_all,
        len(inputs),
    )
    return worst_bull


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
    from mlsignal.config import resolve_device

    return resolve_device(device).startswith("cuda")
