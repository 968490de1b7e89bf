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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlsignal.bundle import Bundle, load_bundle
from mlsignal.config import BUNDLE_ENV, Settings
from mlsignal.data import normalize_bars
from mlsignal.errors import ConfigError, DataError, InsufficientDataError
from mlsignal.features import feature_window
from mlsignal.models.fusion import fuse
from mlsignal.models.garch import classify_regime, garch_forecast
from mlsignal.models.kelly import kelly_fraction
from mlsignal.rules import last_rule_scores
from mlsignal.runtime import Runtime, load_runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SignalRequest:
    """One symbol's input to :meth:`MLSignalEnhancer.enhance_batch`.

    ``ss``/``bs`` of ``None`` means: use the built-in MACD rule scores for the last bar.
    """

    symbol: str
    bars: pd.DataFrame
    ss: float | None = None
    bs: float | None = None


@dataclass(frozen=True)
class SignalResult:
    """One symbol's output: the enhanced scores and the ``ml_info`` dict."""

    symbol: str
    enhanced_ss: float
    enhanced_bs: float
    ml_info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Prepared:
    symbol: str
    bars: pd.DataFrame
    ss: float
    bs: float
    window: np.ndarray  # (T, F) float32


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
        if bundle is None:
            bundle = os.environ.get(BUNDLE_ENV) or None
            if bundle is None:
                raise ConfigError(f"no bundle given: pass a bundle directory or set {BUNDLE_ENV}")
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
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
        prepared = [self._prepare_named(r) for r in requests]
        outputs, reason = self._predict(np.stack([p.window for p in prepared]))
        latency_ms = (time.perf_counter() - t0) * 1e3
        return [
            self._finish(p, None if outputs is None else outputs[i], reason, latency_ms)
            for i, p in enumerate(prepared)
        ]

    # --- steps ---------------------------------------------------------------------------
    def _prepare_named(self, req: SignalRequest) -> _Prepared:
        """``_prepare``, with the symbol in any data error's message (batch calls)."""
        try:
            return self._prepare(req)
        except DataError as e:
            if not req.symbol:
                raise
            raise type(e)(f"{req.symbol}: {e}") from e

    def _prepare(self, req: SignalRequest) -> _Prepared:
        bars = normalize_bars(req.bars)
        need = self.min_bars
        if len(bars) < need:
            schema = self.bundle.schema
            raise InsufficientDataError(
                f"{len(bars)} bars given; the model needs at least {need} "
                f"(feature window {schema.window} + warm-up {schema.warmup})"
            )
        bars = bars.iloc[-need:]
        ss, bs = req.ss, req.bs
        if ss is None or bs is None:
            rule_ss, rule_bs = last_rule_scores(bars)
            ss = rule_ss if ss is None else ss
            bs = rule_bs if bs is None else bs
        return _Prepared(
            req.symbol,
            bars,
            _score(ss, "ss"),
            _score(bs, "bs"),
            feature_window(bars, self.bundle.schema),
        )

    def _predict(self, windows: np.ndarray) -> tuple[np.ndarray | None, str | None]:
        try:
            out = self.runtime.predict(windows)
        except DataError:
            raise
        except Exception as e:  # a broken device must not stop the trading loop
            reason = (
                f"{self.runtime.backend} on {self.runtime.device} failed: {type(e).__name__}: {e}"
            )
            if self._failing != reason:
                log.error("model inference failed, returning rule scores: %s", reason)
            self._failing = reason
            return None, reason
        if self._failing is not None:
            log.warning("model inference recovered on %s", self.runtime.device)
            self._failing = None
        return out, None

    def _finish(
        self, p: _Prepared, out: np.ndarray | None, reason: str | None, latency_ms: float
    ) -> SignalResult:
        b = self.bundle
        returns = np.diff(np.log(p.bars["close"].to_numpy()))
        regime_vol = garch_forecast(b.garch, returns)
        regime = classify_regime(b.garch, regime_vol)
        info: dict[str, Any] = {
            "bull_prob": 0.5 if out is None else float(out[2]),
            "regime_vol": float(regime_vol),
            "regime": regime,
        }
        if out is None:
            ess, ebs, kelly, side = p.ss, p.bs, 0.0, "flat"
        else:
            ess, ebs = fuse(p.ss, p.bs, info["bull_prob"], b.fusion)
            kelly, side = kelly_fraction(info["bull_prob"], regime, b.kelly_params, b.kelly_config)
        info.update(
            kelly=float(kelly),
            kelly_side=side,
            p_lstm=None if out is None else float(out[0]),
            p_tft=None if out is None else float(out[1]),
            rule_ss=p.ss,
            rule_bs=p.bs,
            model_version=b.model_version,
            contract_hash=b.contract_hash,
            source="local" if out is not None else "rules",
            device=self.runtime.device,
            backend=self.runtime.backend,
            latency_ms=latency_ms,
            bar_ts=p.bars.index[-1].isoformat(),
        )
        if reason is not None:
            info["fallback_reason"] = reason
        return SignalResult(p.symbol, float(ess), float(ebs), info)


def _score(value: float, name: str) -> float:
    """A rule score as float in 0..100, or a DataError naming it."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{name} must be a number in 0..100, got {value!r}") from None
    if not np.isfinite(v) or not 0.0 <= v <= 100.0:
        raise DataError(f"{name} must be a number in 0..100, got {value!r}")
    return v
