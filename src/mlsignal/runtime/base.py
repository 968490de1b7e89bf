"""The runtime protocol, the input check every runtime runs, and the golden-output parity gate.

The factory that picks and builds a runtime is :mod:`mlsignal.runtime.factory`: it imports
the implementations, which import this module, so it cannot live here.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

import numpy as np

from mlsignal.bundle import GOLDEN_FILE, Bundle
from mlsignal.errors import FeatureSchemaError, ParityError

log = logging.getLogger(__name__)

#: float32 tolerance on ``bull_prob`` between backends and devices.
PARITY_ATOL = 1e-5


@runtime_checkable
class Runtime(Protocol):
    """What the enhancer and the server need from a loaded model."""

    bundle: Bundle
    backend: str
    device: str
    #: Largest |difference| from the bundle's golden outputs this runtime may show:
    #: :data:`PARITY_ATOL` in float32, more at reduced GPU precision.
    parity_atol: float

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

    ``atol`` defaults to the runtime's ``parity_atol`` (:data:`PARITY_ATOL` in float32, more
    at reduced GPU precision). Returns the worst absolute difference on ``bull_prob``.
    """
    if atol is None:
        atol = runtime.parity_atol
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
