"""The steps of one enhancement, shared by the in-process enhancer and the server.

``prepare`` (bars -> validated tail, rule scores, feature window) runs before the model;
``finish`` (model outputs -> GARCH regime, Kelly, fusion, ``ml_info``) after it. The model
forward in between is a runtime's ``predict``, called on a batch of prepared windows. Keeping
both sides here is what makes a remote result equal a local one number for number.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlsignal.bundle import Bundle
from mlsignal.data import normalize_bars
from mlsignal.errors import DataError, InsufficientDataError
from mlsignal.features import feature_window
from mlsignal.models.fusion import fuse
from mlsignal.models.garch import classify_regime, garch_forecast
from mlsignal.models.kelly import kelly_fraction
from mlsignal.rules import last_rule_scores

#: ml_info keys every result carries (DESIGN.md); ``fallback_reason`` only on fallback.
ML_INFO_KEYS = (
    "bull_prob", "regime_vol", "regime", "kelly", "model_version", "source",
    "device", "backend", "latency_ms", "bar_ts",
)  # fmt: skip


@dataclass(frozen=True)
class SignalRequest:
    """One symbol's input: its recent bars and its rule scores.

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
class Prepared:
    """A request made ready for the model: the bars it used, scores, one window (T, F)."""

    symbol: str
    bars: pd.DataFrame
    ss: float
    bs: float
    window: np.ndarray


def check_score(value: float | None, name: str) -> float:
    """A rule score as float in 0..100, or a :class:`DataError` naming it."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(f"{name} must be a number in 0..100, got {value!r}") from None
    if not np.isfinite(v) or not 0.0 <= v <= 100.0:
        raise DataError(f"{name} must be a number in 0..100, got {value!r}")
    return v


def trim_bars(bundle: Bundle, bars: pd.DataFrame) -> pd.DataFrame:
    """Normalise and validate ``bars`` and keep the last ``bundle.min_bars`` of them."""
    bars = normalize_bars(bars)
    need = bundle.min_bars
    if len(bars) < need:
        raise InsufficientDataError(
            f"{len(bars)} bars given; the model needs at least {need} "
            f"(feature window {bundle.schema.window} + warm-up {bundle.schema.warmup})"
        )
    return bars.iloc[-need:]


def resolve_scores(bars: pd.DataFrame, ss: float | None, bs: float | None) -> tuple[float, float]:
    """The caller's scores, or the built-in rule scores where they are ``None``; checked."""
    if ss is None or bs is None:
        rule_ss, rule_bs = last_rule_scores(bars)
        ss = rule_ss if ss is None else ss
        bs = rule_bs if bs is None else bs
    return check_score(ss, "ss"), check_score(bs, "bs")


@contextmanager
def _naming(symbol: str) -> Iterator[None]:
    """Re-raise a :class:`DataError` with the symbol in front (batch calls)."""
    try:
        yield
    except DataError as e:
        if not symbol:
            raise
        raise type(e)(f"{symbol}: {e}") from e


def trim_request(bundle: Bundle, req: SignalRequest) -> SignalRequest:
    """Validated bars trimmed to ``min_bars`` and resolved scores; errors name the symbol."""
    with _naming(req.symbol):
        bars = trim_bars(bundle, req.bars)
        ss, bs = resolve_scores(bars, req.ss, req.bs)
    return SignalRequest(req.symbol, bars, ss, bs)


def prepare_trimmed(bundle: Bundle, req: SignalRequest) -> Prepared:
    """The feature window of a request already passed through :func:`trim_request`."""
    with _naming(req.symbol):
        window = feature_window(req.bars, bundle.schema)
    return Prepared(req.symbol, req.bars, float(req.ss), float(req.bs), window)  # type: ignore[arg-type]


def prepare(bundle: Bundle, req: SignalRequest) -> Prepared:
    """Validate one request and compute its feature window; errors name the symbol."""
    return prepare_trimmed(bundle, trim_request(bundle, req))


def finish(
    bundle: Bundle,
    p: Prepared,
    out: np.ndarray | None,
    *,
    device: str,
    backend: str,
    latency_ms: float,
    source: str = "local",
    reason: str | None = None,
) -> SignalResult:
    """Model outputs ``(3,)`` (or ``None`` when no model ran) -> enhanced scores + ml_info."""
    returns = np.diff(np.log(p.bars["close"].to_numpy()))
    regime_vol = float(garch_forecast(bundle.garch, returns))
    regime = classify_regime(bundle.garch, regime_vol)
    bull = 0.5 if out is None else float(out[2])
    if out is None:
        ess, ebs, kelly, side = p.ss, p.bs, 0.0, "flat"
    else:
        ess, ebs = fuse(p.ss, p.bs, bull, bundle.fusion)
        kelly, side = kelly_fraction(bull, regime, bundle.kelly_params, bundle.kelly_config)
    info: dict[str, Any] = {
        "bull_prob": bull,
        "regime_vol": regime_vol,
        "regime": regime,
        "kelly": float(kelly),
        "kelly_side": side,
        "p_lstm": None if out is None else float(out[0]),
        "p_tft": None if out is None else float(out[1]),
        "rule_ss": p.ss,
        "rule_bs": p.bs,
        "model_version": bundle.model_version,
        "contract_hash": bundle.contract_hash,
        "source": "rules" if out is None else source,
        "device": device,
        "backend": backend,
        "latency_ms": latency_ms,
        "bar_ts": p.bars.index[-1].isoformat(),
    }
    if reason is not None:
        info["fallback_reason"] = reason
    return SignalResult(p.symbol, float(ess), float(ebs), info)
