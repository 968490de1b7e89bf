"""Step 1: bars -> :class:`~mlsignal.pipeline.types.Prepared`, from any of three sources.

- :func:`prepare`: a DataFrame as users have it (normalised, validated, trimmed);
- :func:`prepare_arrays`: the wire's epoch-ms timestamps and ``(n, 5)`` OHLCV (the server;
  no pandas on clean bars, the DataFrame path's exact errors otherwise);
- :func:`prepare_stream`: a symbol's :class:`~mlsignal.features.FeatureStream`, whose bars
  were validated one at a time as they came (a live loop; no pandas).

All three end in :func:`_prepared`: the last ``bundle.min_bars`` bars as arrays and the
rule scores resolved once, the same way. Errors name the symbol.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from mlsignal.bundle import Bundle
from mlsignal.data import clean_arrays, normalize_bars
from mlsignal.errors import DataError, InsufficientDataError
from mlsignal.features import FeatureStream, ohlcv_arrays
from mlsignal.models.garch import GarchParams, garch_forecast, garch_forecast_batch
from mlsignal.pipeline.types import Prepared, SignalRequest, naming
from mlsignal.rules import last_score

#: Up to this many symbols, :func:`regime_vol` one by one beats the vectorised GARCH pass.
SCALAR_GARCH_MAX = 4


def check_score(value: float | None, name: str) -> float:
    """A rule score as float in 0..100, or a :class:`DataError` naming it."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(f"{name} must be a number in 0..100, got {value!r}") from None
    if not np.isfinite(v) or not 0.0 <= v <= 100.0:
        raise DataError(f"{name} must be a number in 0..100, got {value!r}")
    return v


def _too_few(bundle: Bundle, n: int, what: str) -> InsufficientDataError:
    return InsufficientDataError(
        f"{n} {what}; the model needs at least {bundle.min_bars} "
        f"(feature window {bundle.schema.window} + warm-up {bundle.schema.warmup})"
    )


def _prepared(
    bundle: Bundle,
    symbol: str,
    t_ns: np.ndarray,
    ohlcv: np.ndarray,
    ss: float | None,
    bs: float | None,
) -> Prepared:
    """The one constructor: scores resolved on the last ``min_bars`` bars (given as such)."""
    with naming(symbol):
        if ss is None or bs is None:
            _, high, low, close, _ = ohlcv_arrays(ohlcv)
            rule_ss, rule_bs = last_score(high, low, close)
            ss = rule_ss if ss is None else ss
            bs = rule_bs if bs is None else bs
        ss, bs = check_score(ss, "ss"), check_score(bs, "bs")
    return Prepared(symbol, ss, bs, t_ns, ohlcv, bundle.schema)


def prepare(bundle: Bundle, req: SignalRequest) -> Prepared:
    """Normalise and validate a request's bars, keep the last ``min_bars``, resolve scores.

    The window is computed when first used. Data errors name the symbol.
    """
    with naming(req.symbol):
        bars = normalize_bars(req.bars)
        if len(bars) < bundle.min_bars:
            raise _too_few(bundle, len(bars), "bars given")
    tail = bars.iloc[-bundle.min_bars :]
    ohlcv = np.ascontiguousarray(tail.to_numpy(dtype=np.float64))
    return _prepared(bundle, req.symbol, tail.index.asi8.copy(), ohlcv, req.ss, req.bs)


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

    Bars that :func:`~mlsignal.data.clean_arrays` does not pass, too few bars, or any data
    error go through :func:`prepare` on ``frame()`` (the same bars as a raw DataFrame), which
    normalises them or raises the error the pandas path raises. The window is computed here.
    """
    need = bundle.min_bars
    if len(t_ms) < need or not clean_arrays(t_ms, ohlcv):
        return _eager(prepare(bundle, SignalRequest(symbol, frame(), ss, bs)))
    t_ns = t_ms[-need:].astype(np.int64) * 1_000_000
    try:
        return _eager(_prepared(bundle, symbol, t_ns, np.ascontiguousarray(ohlcv[-need:]), ss, bs))
    except DataError:  # the pandas path raises it again, worded as it words it
        return _eager(prepare(bundle, SignalRequest(symbol, frame(), ss, bs)))


def _eager(p: Prepared) -> Prepared:
    p.window  # noqa: B018 (computed now: its data errors belong to this step)
    return p


def prepare_stream(
    bundle: Bundle, symbol: str, stream: FeatureStream, ss: float | None, bs: float | None
) -> Prepared:
    """:func:`prepare` from a stream's last ``min_bars`` bars: the same numbers, no pandas."""
    need = bundle.min_bars
    if len(stream) < need:
        who = f"{symbol}: " if symbol else ""
        err = _too_few(bundle, len(stream), "bars held")
        raise InsufficientDataError(f"{who}{err}; seed the symbol with history first")
    t_ns = stream.timestamps(need).copy()
    return _prepared(bundle, symbol, t_ns, stream.values(need), ss, bs)


def regime_vol(params: GarchParams, close: np.ndarray) -> float:
    """``garch_forecast`` of the log returns of ``close`` (its errors for non-finite ones)."""
    return garch_forecast(params, np.diff(np.log(close)))


def with_regime_vols(bundle: Bundle, prepared: list[Prepared]) -> list[Prepared]:
    """``prepared`` with ``regime_vol`` filled in: the same numbers finish computes one by
    one (a few symbols: one by one; many: one vectorised GARCH pass)."""
    returns = [np.diff(np.log(p.close)) for p in prepared]
    if len(prepared) <= SCALAR_GARCH_MAX or len({len(r) for r in returns}) != 1:
        vols = [regime_vol(bundle.garch, p.close) for p in prepared]
    elif len(returns[0]) == 0 or not all(np.isfinite(r).all() for r in returns):
        return prepared  # finish raises the error, symbol by symbol
    else:
        vols = garch_forecast_batch(bundle.garch, np.stack(returns)).tolist()
    for p, v in zip(prepared, vols, strict=True):
        p.regime_vol = float(v)
    return prepared
