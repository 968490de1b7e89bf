"""``MLSignalEnhancer``: rule scores + bars in, enhanced scores and ``ml_info`` out.

Drop-in for the user's existing live code::

    enhancer = MLSignalEnhancer("artifacts/quick")          # device from ML_INFERENCE_DEVICE
    enhanced_ss, enhanced_bs, ml_info = enhancer.enhance_signal(df, ss, bs)

``df`` holds the recent bars (at least ``enhancer.min_bars`` of them, oldest first). The
model sees exactly the last ``min_bars`` bars, so the answer does not depend on how much
older history is passed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mlsignal.bundle import Bundle, load_bundle
from mlsignal.config import BUNDLE_ENV, Settings
from mlsignal.errors import ConfigError, DataError
from mlsignal.inference import SignalRequest, SignalResult, finish, prepare
from mlsignal.runtime import Runtime, load_runtime

log = logging.getLogger(__name__)

__all__ = ["MLSignalEnhancer", "SignalRequest", "SignalResult"]


class MLSignalEnhancer:
    """Runs the bundle's models on the last bars and fuses them with rule scores.

    ``bundle`` is a bundle directory (or a loaded :class:`Bundle`); ``None`` reads
    ``MLSIGNAL_BUNDLE``. ``device`` and ``backend`` default to ``ML_INFERENCE_DEVICE`` and
    ``ML_INFERENCE_BACKEND``. Construction loads the weights and runs the parity gate, so a
    bad bundle or an unavailable device fails here, not on the first bar.
    """

    def __init__(
        self,
        bundle: str | os.PathLike[str] | Bundle | None = None,
        device: str | None = None,
        backend: str | None = None,
        *,
        settings: Settings | None = None,
    ) -> None:
        settings = settings or Settings.from_env()
        self.bundle = _load(bundle)
        self.runtime: Runtime = load_runtime(
            self.bundle, device or settings.device, backend or settings.backend
        )
        self._failing: str | None = None  # last runtime failure, for once-per-change logs
        if settings.api_urls:
            log.warning(
                "GPU_INFERENCE_API_URL is set, but this mlsignal has no remote client yet: "
                "every bar is computed locally on %s",
                self.runtime.device,
            )
        log.info(
            "enhancer ready: device=%s backend=%s model=%s contract=%s",
            self.runtime.device,
            self.runtime.backend,
            self.bundle.model_version,
            self.bundle.contract_hash[:12],
        )

    @property
    def min_bars(self) -> int:
        """Fewest bars ``enhance_signal`` needs."""
        return self.bundle.min_bars

    def enhance_signal(
        self, df: pd.DataFrame, ss: float | None = None, bs: float | None = None
    ) -> tuple[float, float, dict[str, Any]]:
        """Enhance one symbol's scores for its last bar.

        Returns ``(enhanced_ss, enhanced_bs, ml_info)``. Bad bars raise a
        :class:`~mlsignal.errors.DataError` naming the problem.
        """
        (result,) = self.enhance_batch([SignalRequest("", df, ss, bs)])
        return result.enhanced_ss, result.enhanced_bs, result.ml_info

    def enhance_batch(self, requests: Sequence[SignalRequest]) -> list[SignalResult]:
        """Enhance many symbols in one forward pass; results in request order."""
        t0 = time.perf_counter()
        if not requests:
            return []
        prepared = [prepare(self.bundle, r) for r in requests]
        outputs, reason = self._predict(np.stack([p.window for p in prepared]))
        latency_ms = (time.perf_counter() - t0) * 1e3
        rt = self.runtime
        return [
            finish(
                self.bundle,
                p,
                None if outputs is None else outputs[i],
                device=rt.device,
                backend=rt.backend,
                latency_ms=latency_ms,
                reason=reason,
            )
            for i, p in enumerate(prepared)
        ]

    def _predict(self, windows: np.ndarray) -> tuple[np.ndarray | None, str | None]:
        try:
            out = self.runtime.predict(windows)
        except DataError:
            raise
        except Exception as e:  # a broken device must not stop the trading loop
            rt = self.runtime
            reason = f"{rt.backend} on {rt.device} failed: {type(e).__name__}: {e}"
            if self._failing != reason:
                log.error("model inference failed, returning rule scores: %s", reason)
            self._failing = reason
            return None, reason
        if self._failing is not None:
            log.warning("model inference recovered on %s", self.runtime.device)
            self._failing = None
        return out, None


def _load(bundle: str | os.PathLike[str] | Bundle | None) -> Bundle:
    if isinstance(bundle, Bundle):
        return bundle
    bundle = bundle or os.environ.get(BUNDLE_ENV) or None
    if bundle is None:
        raise ConfigError(f"no bundle given: pass a bundle directory or set {BUNDLE_ENV}")
    return load_bundle(bundle)
