"""The steps of one enhancement, shared by the in-process enhancer and the server.

``prepare`` (bars -> validated tail, rule scores, feature window) runs before the model;
``finish`` (model outputs -> GARCH regime, Kelly, fusion, ``ml_info``) after it. The model
forward in between is a runtime's ``predict``, called on a batch of prepared windows. Keeping
both sides here is what makes a remote result equal a local one number for number.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
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
from mlsignal.models.garch import (
    GarchParams,
    classify_regime,
    garch_forecast,
    garch_forecast_batch,
)
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
    """A request made ready for the model: scores, one window (T, F), and what ``finish``
    needs of the bars it used (their closes and last timestamp; ``bars`` itself is ``None``
    on the server's array path). ``regime_vol`` may be computed ahead (``None``: by finish).
    """

    symbol: str
    bars: pd.DataFrame | None
    ss: float
    bs: float
    window: np.ndarray
    close: np.ndarray
    bar_ts: str
    regime_vol: float | None = None


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
    close = req.bars["close"].to_numpy(dtype=np.float64)
    bar_ts = req.bars.index[-1].isoformat()
    return Prepared(req.symbol, req.bars, float(req.ss), float(req.bs), window, close, bar_ts)  # type: ignore[arg-type]


def clean_bars(t_ms: np.ndarray, ohlcv: np.ndarray) -> bool:
    """Whether epoch-ms ``t_ms`` (n,) and ``ohlcv`` (n, 5) already form canonical bars.

    True when ``normalize_bars`` would keep them as they are and ``validate_bars`` would pass
    them: at least one bar, timestamps strictly increasing and inside pandas' nanosecond
    range, prices finite and positive, ``low <= min(open, close)``, ``high >= max(open,
    close)``, volume finite and non-negative. One vectorised pass; False sends the bars the
    pandas way, which normalises them or raises the exact error.
    """
    n = len(t_ms)
    if n == 0 or ohlcv.shape != (n, 5):
        return False
    if n > 1 and not (t_ms[1:] > t_ms[:-1]).all():
        return False
    if not (t_ms[0] >= _T_MIN_MS and t_ms[-1] <= _T_MAX_MS):
        return False
    o, h, low, c, v = ohlcv.T
    with np.errstate(invalid="ignore"):
        prices_ok = (ohlcv[:, :4] > 0).all() and np.isfinite(ohlcv[:, :4]).all()
        ok = (
            prices_ok
            and (h >= np.maximum(o, c)).all()
            and (low <= np.minimum(o, c)).all()
            and (v >= 0).all()
            and np.isfinite(v).all()
        )
    return bool(ok)


#: Epoch-ms bounds of a nanosecond timestamp (pandas' 1677..2262), with a day of margin.
_T_MIN_MS = int(pd.Timestamp.min.value // 1_000_000) + 86_400_000
_T_MAX_MS = int(pd.Timestamp.max.value // 1_000_000) - 86_400_000


def prepare_arrays(
    bundle: Bundle,
    symbol: str,
    t_ms: np.ndarray,
    ohlcv: np.ndarray,
    ss: float | None,
    bs: float | None,
    frame: Callable[[], pd.DataFrame],
) -> Prepared:
    """:func:`prepare` for bars given as arrays (the wire's epoch-ms ``t_ms`` and ``(n, 5)``
    ``ohlcv``), without pandas: the same numbers, errors and messages.

    Bars that :func:`clean_bars` does not pass, too few bars, or any data error go through
    :func:`prepare` on ``frame()`` (the same bars as a raw DataFrame), which normalises them
    or raises the error the pandas path raises.
    """
    need = bundle.min_bars
    if len(t_ms) < need or not clean_bars(t_ms, ohlcv):
        return prepare(bundle, SignalRequest(symbol, frame(), ss, bs))
    t_ms, ohlcv = t_ms[-need:], ohlcv[-need:]
    try:
        ss, bs = resolve_scores(ohlcv, ss, bs)  # type: ignore[arg-type]
        window = feature_window(ohlcv, bundle.schema)
    except DataError:  # the pandas path raises it again, worded as it words it
        return prepare(bundle, SignalRequest(symbol, frame(), ss, bs))
    close = np.ascontiguousarray(ohlcv[:, 3])
    stamp = pd.Timestamp(np.datetime64(int(t_ms[-1]), "ms").astype("datetime64[ns]"))
    return Prepared(symbol, None, ss, bs, window, close, stamp.isoformat())


#: Up to this many symbols, :func:`regime_vol` one by one beats the vectorised GARCH pass.
SCALAR_GARCH_MAX = 4


def regime_vol(params: GarchParams, close: np.ndarray) -> float:
    """``garch_forecast`` of the log returns of ``close`` (its errors for non-finite ones)."""
    return garch_forecast(params, np.diff(np.log(close)))


def with_regime_vols(bundle: Bundle, prepared: list[Prepared]) -> list[Prepared]:
    """``prepared`` with ``regime_vol`` filled in: the same numbers :func:`finish` computes
    one by one (a few symbols: :func:`regime_vol`; many: one vectorised GARCH pass)."""
    returns = [np.diff(np.log(p.close)) for p in prepared]
    if len(prepared) <= SCALAR_GARCH_MAX or len({len(r) for r in returns}) != 1:
        vols = [regime_vol(bundle.garch, p.close) for p in prepared]
    elif len(returns[0]) == 0 or not all(np.isfinite(r).all() for r in returns):
        return prepared  # finish raises the error, symbol by symbol
    else:
        vols = garch_forecast_batch(bundle.garch, np.stack(returns)).tolist()
    pairs = zip(prepared, vols, strict=True)
    return [dataclasses.replace(p, regime_vol=float(v)) for p, v in pairs]


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
    vol = p.regime_vol if p.regime_vol is not None else regime_vol(bundle.garch, p.close)
    regime = classify_regime(bundle.garch, vol)
    bull = 0.5 if out is None else float(out[2])
    if out is None:
        ess, ebs, kelly, side = p.ss, p.bs, 0.0, "flat"
    else:
        ess, ebs = fuse(p.ss, p.bs, bull, bundle.fusion)
        kelly, side = kelly_fraction(bull, regime, bundle.kelly_params, bundle.kelly_config)
    info: dict[str, Any] = {
        "bull_prob": bull,
        "regime_vol": vol,
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
        "bar_ts": p.bar_ts,
    }
    if reason is not None:
        info["fallback_reason"] = reason
    return SignalResult(p.symbol, float(ess), float(ebs), info)
