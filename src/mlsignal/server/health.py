"""The golden probe of a serving runtime: one golden window, judged like the parity gate.

:func:`~mlsignal.runtime.base.check_parity` admits a runtime at load time on all the
bundle's golden windows, within the runtime's own tolerance (``parity_atol``: 2e-3 for a
tf32 CUDA graph, 2e-2 for bf16) or :data:`~mlsignal.runtime.base.PARITY_ATOL`. A periodic
health check (a Ray model replica's ``check_health``) reruns one of those windows; it must
use the same tolerance, or a runtime admitted at reduced precision fails every check and is
replaced forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mlsignal.bundle import GOLDEN_FILE, Bundle
from mlsignal.errors import BundleError
from mlsignal.runtime.base import PARITY_ATOL


def probe_atol(runtime: Any) -> float:
    """The runtime's parity tolerance, as :func:`~mlsignal.runtime.base.check_parity` reads it."""
    return float(getattr(runtime, "parity_atol", PARITY_ATOL))


@dataclass(frozen=True)
class GoldenProbe:
    """The bundle's first golden window and its expected outputs."""

    windows: np.ndarray  # (1, T, F) float32
    expected: np.ndarray  # (1, 3) float64

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> GoldenProbe:
        """The probe of ``bundle`` (its golden file was verified when the bundle loaded)."""
        with np.load(bundle.file(GOLDEN_FILE)) as golden:
            windows = golden["inputs"][:1].astype(np.float32)
            expected = golden["expected"][:1].astype(np.float64)
        return cls(windows, expected)

    def check(self, runtime: Any) -> float:
        """Run the probe on ``runtime``; returns the worst absolute difference.

        Raises :class:`~mlsignal.errors.BundleError` when the outputs are not finite or
        drift beyond the runtime's tolerance (:func:`probe_atol`).
        """
        got = runtime.predict(self.windows)
        worst = float(np.abs(np.asarray(got, np.float64) - self.expected).max())
        if not worst <= probe_atol(runtime):  # NaN fails too
            raise BundleError(f"replica drifts from the golden outputs: |diff| {worst:.3g}")
        return worst
