"""Bars -> features, and bars -> feature windows; the same code for training and serving.

Every feature is scale-free, so one model serves many symbols and price levels: prices are
first divided by the first close of the input (which cancels in every ratio below, and keeps
TA-Lib's absolute 1e-8 zero-thresholds away from tiny-priced assets), then each feature is a
ratio to ATR or price, a log return, or a bounded oscillator rescaled to about -1..1. Volume
enters only as a z-score of ``log1p(volume / mean volume of the input)``, which is 0 when
volume is constant or all zero (indices, FX). Every value is clipped to +-``FEATURE_CLIP``.
See :data:`mlsignal.features.schema.FEATURE_NAMES` for the list, order and units.

A window is computed from exactly the last ``schema.lookback`` bars ending at its last bar,
so it depends on those bars only; :func:`feature_windows` runs the very same per-window code
on numpy slices and is bit-identical to :func:`feature_window`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import numpy as np
import pandas as pd
import talib

from mlsignal.data.validate import BAR_COLUMNS
from mlsignal.errors import (
    ConfigError,
    DataError,
    FeatureSchemaError,
    InsufficientDataError,
    MissingColumnError,
    PriceError,
)
from mlsignal.features.schema import DEFAULT_SCHEMA, FEATURE_CLIP, FEATURE_NAMES, FeatureSchema

OHLCV = BAR_COLUMNS  # the canonical column order

#: Index of the first row where every feature is defined (SMA50 needs 50 bars). A schema's
#: ``warmup`` must be at least this; the default 192 also lets EMA/Wilder recursions converge.
INDICATOR_LOOKBACK: int = 49

# Denominators at or below this (in units of the first close, or of log-volume) count as zero:
# the ratio is then 0 (no range, no volatility), never inf.
_EPS = 1e-12
_VOL_STD_EPS = 1e-9

Bars = pd.DataFrame | np.ndarray
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


# --- input --------------------------------------------------------------------------------
def ohlcv_arrays(bars: Bars) -> Arrays:
    """Split canonical bars into five contiguous float64 arrays (open, high, low, close, volume).

    ``bars`` is a DataFrame with columns ``open, high, low, close, volume`` or a numpy array of
    shape ``(n_bars, 5)`` in that column order.
    """
    if isinstance(bars, pd.DataFrame):
        missing = [c for c in OHLCV if c not in bars.columns]
        if missing:
            raise MissingColumnError(f"bars lack column(s) {missing}; need {list(OHLCV)}")
        cols = [bars[c].to_numpy(dtype=np.float64) for c in OHLCV]
    else:
        arr = np.asarray(bars, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != len(OHLCV):
            raise DataError(f"bars array must have shape (n_bars, 5), got {arr.shape}")
        cols = [arr[:, i] for i in range(len(OHLCV))]
    o, h, low, c, v = (np.ascontiguousarray(x) for x in cols)
    return o, h, low, c, v


# --- small numeric helpers ----------------------------------------------------------------
def _div(a: np.ndarray, b: np.ndarray, eps: float = _EPS) -> np.ndarray:
    """``a / b``, 0 where ``|b| <= eps`` (and ``a`` is defined), NaN where either is NaN.

    Callers run under ``np.errstate(all="ignore")`` (set once in :func:`_feature_matrix`).
    """
    q = a / b
    q[(np.abs(b) <= eps) & ~np.isnan(a)] = 0.0
    return q


def _rolling_mean_std(x: np.ndarray, w: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Trailing mean and population std over ``w`` bars at the last ``rows`` positions of
    ``x`` (NaN where fewer than ``w`` bars exist; ``rows`` may exceed ``len(x)``).

    ``x`` must be contiguous float64. Two-pass (mean, then squared deviations) for accuracy.
    Each window is reduced on its own, so the value at a bar does not depend on ``rows``.
    """
    n = len(x)
    mean, std = np.full(rows, np.nan), np.full(rows, np.nan)
    start = max(0, n - rows - w + 1)  # first input any of the last ``rows`` windows needs
    k = n - start - w + 1  # windows computed
    if k > 0:
        # (k, w) view of overlapping windows; built directly, it is much cheaper than
        # sliding_window_view in the per-window loop.
        win = np.ndarray((k, w), dtype=np.float64, buffer=x, offset=8 * start, strides=(8, 8))
        m = np.add.reduce(win, axis=1) / w
        d = win - m[:, None]
        mean[rows - k :] = m
        std[rows - k :] = np.sqrt(np.add.reduce(d * d, axis=1) / w)
    return mean, std


def _log_return(lc: np.ndarray, k: int) -> np.ndarray:
    """``lc[t] - lc[t - k]`` (log return over ``k`` bars), NaN for the first ``k`` bars."""
    out = np.full(len(lc), np.nan)
    out[k:] = lc[k:] - lc[:-k]
    return out


# --- feature groups (inputs normalised by the first close; ATR14 passed in) ---------------
# Each group returns the last ``r`` rows only. Recursive indicators (TA-Lib's EMA, Wilder and
# running-sum SMA) always run over the whole lookback; everything else is computed on the
# bars the last ``r`` rows need, with the same element-wise operations, so every value is
# the one the full computation gives at that bar.
def _macd(c: np.ndarray, atr: np.ndarray, r: int) -> dict[str, np.ndarray]:
    line, signal, hist = talib.MACD(c, fastperiod=12, slowperiod=26, signalperiod=9)
    chg = np.full(len(c), np.nan)
    chg[1:] = hist[1:] - hist[:-1]
    atr = atr[-r:]
    return {
        "macd_atr": _div(line[-r:], atr),
        "macd_signal_atr": _div(signal[-r:], atr),
        "macd_hist_atr": _div(hist[-r:], atr),
        "macd_hist_chg_atr": _div(chg[-r:], atr),
    }


def _oscillators(h: np.ndarray, low: np.ndarray, c: np.ndarray, r: int) -> dict[str, np.ndarray]:
    k, d = talib.STOCH(h, low, c, 9, 3, 0, 3, 0)  # KDJ 9/3/3 with SMA smoothing
    k, d = k[-r:], d[-r:]
    j = 3.0 * k - 2.0 * d
    plus, minus = talib.PLUS_DI(h, low, c, 14)[-r:], talib.MINUS_DI(h, low, c, 14)[-r:]
    return {
        "rsi14": (talib.RSI(c, 14)[-r:] - 50.0) / 50.0,
        "rsi6": (talib.RSI(c, 6)[-r:] - 50.0) / 50.0,
        "kdj_k": (k - 50.0) / 50.0,
        "kdj_d": (d - 50.0) / 50.0,
        "kdj_j": (j - 50.0) / 50.0,
        "adx14": (talib.ADX(h, low, c, 14)[-r:] - 50.0) / 50.0,
        "di_diff14": (plus - minus) / 100.0,
    }


def _bands(h: np.ndarray, low: np.ndarray, c: np.ndarray, r: int) -> dict[str, np.ndarray]:
    mid, std = _rolling_mean_std(c, 20, r)
    hh, ll = talib.MAX(h, 20)[-r:], talib.MIN(low, 20)[-r:]
    c = c[-r:]
    return {
        # %B = (c - lower) / (upper - lower) with bands mid +- 2 std; 2 %B - 1 = (c - mid) / 2std
        "bb_pctb": _div(c - mid, 2.0 * std),
        "bb_width": _div(4.0 * std, mid),
        "range_pos20": _div(2.0 * (c - ll), hh - ll) - 1.0,
    }


def _returns(c: np.ndarray, r: int) -> dict[str, np.ndarray]:
    s = max(0, len(c) - r - 20)  # ret_20 and rvol_20 look 20 bars back
    lc = np.log(c[s:])
    r1 = _log_return(lc, 1)
    out = {f"ret_{k}": _log_return(lc, k)[-r:] for k in (1, 2, 5, 10, 20)}
    for w in (10, 20):  # over r1[1:], as r1[0] has no previous bar (when s == 0)
        out[f"rvol_{w}"] = _rolling_mean_std(r1[1:], w, r)[1]
    return out


def volume_sum(v: np.ndarray) -> float:
    """``math.fsum`` of the finite volumes ``v`` (n,): the volume reference's numerator.

    Volumes near float64's limit (1.8e308) can sum past it; the volume feature is then
    undefined, and that is a :class:`PriceError` naming the column, not a crash.
    """
    try:
        total = math.fsum(v.tolist())
    except OverflowError:  # "intermediate overflow in fsum"
        total = math.inf
    if not math.isfinite(total):
        raise PriceError(
            f"volume overflows: the {len(v)} volumes a window is computed from (largest "
            f"{float(np.max(v)):.3g}) sum past float64's limit {sys.float_info.max:.3g}"
        )
    return total


def _volume_z(v: np.ndarray, r: int) -> np.ndarray:
    s = max(0, len(v) - r - 19)  # the 20-bar z-score looks 19 bars back
    # math.fsum: exactly rounded, so the reference never depends on summation order.
    if not np.isfinite(v).all():
        lv = v[s:] * np.nan  # a bad volume makes the feature undefined, reported downstream
    else:
        ref = volume_sum(v) / len(v)
        lv = np.log1p(v[s:] / ref) if ref > 0 else np.zeros(len(v) - s)
    mean, std = _rolling_mean_std(lv, 20, r)
    return _div(lv[-r:] - mean, std, eps=_VOL_STD_EPS)


def _shape(
    o: np.ndarray, h: np.ndarray, low: np.ndarray, c: np.ndarray, atr: np.ndarray, r: int
) -> dict[str, np.ndarray]:
    sma20, sma50 = talib.SMA(c, 20)[-r:], talib.SMA(c, 50)[-r:]
    h, low, c, atr = h[-r:], low[-r:], c[-r:], atr[-r:]
    return {
        "bar_clv": _div(2.0 * c - h - low, h - low),
        "body_atr": _div(c - o, atr),
        "upper_shadow_atr": _div(h - np.maximum(o, c), atr),
        "lower_shadow_atr": _div(np.minimum(o, c) - low, atr),
        "close_sma20_atr": _div(c - sma20, atr),
        "close_sma50_atr": _div(c - sma50, atr),
    }


def _feature_matrix(
    o: np.ndarray,
    h: np.ndarray,
    low: np.ndarray,
    c: np.ndarray,
    v: np.ndarray,
    rows: int | None = None,
) -> np.ndarray:
    """The (n, F) float64 feature matrix of one run of bars, clipped, NaN in the warm-up.

    With ``rows``, only its last ``rows`` rows ``(rows, F)``: the same values, less work (a
    window needs its last ``schema.window`` rows of the ``schema.lookback`` bars).
    """
    n = len(c)
    r = n if rows is None else min(int(rows), n)
    ref = c[0]
    # fresh arrays, close[0] == 1; open is only used element-wise, on the last r bars
    o, h, low, c = o[n - r :] / ref, h / ref, low / ref, c / ref
    with np.errstate(all="ignore"):  # 0/0 and log(<=0) become NaN/0 on purpose (see _div)
        cols = _columns(o, h, low, c, v, r)
    m = np.empty((r, len(FEATURE_NAMES)))
    for i, name in enumerate(FEATURE_NAMES):
        m[:, i] = cols[name]
    return np.clip(m, -FEATURE_CLIP, FEATURE_CLIP, out=m)


def _columns(
    o: np.ndarray, h: np.ndarray, low: np.ndarray, c: np.ndarray, v: np.ndarray, r: int
) -> dict[str, np.ndarray]:
    atr = talib.ATR(h, low, c, 14)
    return {
        **_macd(c, atr, r),
        **_oscillators(h, low, c, r),
        "natr14": _div(atr[-r:], c[-r:]),
        **_bands(h, low, c, r),
        **_returns(c, r),
        "vol_z20": _volume_z(v, r),
        **_shape(o, h, low, c, atr, r),
    }


# --- public API ---------------------------------------------------------------------------
def compute_features(bars: Bars) -> np.ndarray:
    """Features of every bar: float64 array of shape ``(n_bars, F)``, columns in
    ``FEATURE_NAMES`` order.

    A row is all-NaN until every indicator has enough bars (the first
    ``INDICATOR_LOOKBACK`` rows), or where a bad bar made any feature undefined. Recursive
    indicators (EMA, Wilder) depend on where the input starts for a while after that; for
    model input use :func:`feature_window`, which fixes the start.
    """
    m = _feature_matrix(*ohlcv_arrays(bars))
    m[~np.isfinite(m).all(axis=1)] = np.nan
    return m


def valid_ends(n_bars: int, schema: FeatureSchema = DEFAULT_SCHEMA) -> np.ndarray:
    """Every end position (int64) that has a full ``schema.lookback`` of bars: ``lookback-1 ..``."""
    return np.arange(schema.lookback - 1, max(n_bars, schema.lookback - 1), dtype=np.int64)


def _check_schema(schema: FeatureSchema) -> None:
    if schema.names != FEATURE_NAMES:
        raise FeatureSchemaError(
            f"schema names (hash {schema.hash[:12]}) differ from the {len(FEATURE_NAMES)} "
            "features this mlsignal computes; retrain or upgrade mlsignal"
        )
    if schema.warmup < INDICATOR_LOOKBACK:
        raise ConfigError(f"schema warmup {schema.warmup} < {INDICATOR_LOOKBACK} bars needed")


def _bar_label(bars: Bars, pos: int, index: np.ndarray | None = None) -> str:
    if index is not None:
        return f"bar {pos} ({pd.Timestamp(int(index[pos]))})"
    if isinstance(bars, pd.DataFrame):
        return f"bar {pos} ({bars.index[pos]})"
    return f"bar {pos}"


def _check_finite(
    windows: np.ndarray, bars: Bars, ends: np.ndarray, index: np.ndarray | None = None
) -> None:
    """Raise FeatureSchemaError naming the first non-finite feature and its bar."""
    bad = ~np.isfinite(windows)
    if not bad.any():
        return
    i, t, f = (int(x) for x in np.argwhere(bad)[0])
    pos = int(ends[i]) - windows.shape[1] + 1 + t
    raise FeatureSchemaError(
        f"feature {FEATURE_NAMES[f]!r} is {windows[i, t, f]} at {_bar_label(bars, pos, index)}; "
        "check the bars for NaN, zero or negative prices"
    )


def feature_window(
    bars: Bars, schema: FeatureSchema = DEFAULT_SCHEMA, index: np.ndarray | None = None
) -> np.ndarray:
    """The model input for the last bar: float32 array of shape ``(schema.window, F)``.

    Computed from exactly the last ``schema.lookback`` bars (earlier bars are ignored).
    Raises :class:`InsufficientDataError` with fewer bars, :class:`FeatureSchemaError` if a
    feature is not finite (naming the feature and the bar; ``index``, int64 ns timestamps
    of ``bars``, dates an array's bars as a DataFrame's index does).
    """
    n = len(bars)
    if n < schema.lookback:
        raise InsufficientDataError(
            f"got {n} bars, need at least {schema.lookback} "
            f"(window {schema.window} + warmup {schema.warmup})"
        )
    return feature_windows(bars, [n - 1], schema, index)[0]


def feature_windows(
    bars: Bars,
    ends: Sequence[int] | np.ndarray,
    schema: FeatureSchema = DEFAULT_SCHEMA,
    index: np.ndarray | None = None,
) -> np.ndarray:
    """Windows ending at each of ``ends`` (integer bar positions): float32 ``(N, T, F)``.

    Window ``i`` equals ``feature_window(bars.iloc[: ends[i] + 1], schema)`` bit for bit: it is
    computed from ``bars[ends[i] - lookback + 1 : ends[i] + 1]`` only. Use :func:`valid_ends`
    for every usable position.
    """
    _check_schema(schema)
    ends = np.asarray(ends, dtype=np.int64).reshape(-1)
    o, h, low, c, v = ohlcv_arrays(bars)
    n, lb, t = len(c), schema.lookback, schema.window
    if ends.size and ends.min() < lb - 1:
        raise InsufficientDataError(
            f"end position {int(ends.min())} has {int(ends.min()) + 1} bars of history, "
            f"need at least {lb} (window {t} + warmup {schema.warmup})"
        )
    if ends.size and ends.max() >= n:
        raise DataError(f"end position {int(ends.max())} is beyond the last bar ({n - 1})")
    out = np.empty((ends.size, t, len(FEATURE_NAMES)), dtype=np.float32)
    for i, e in enumerate(ends.tolist()):
        s = e - lb + 1
        sl = slice(s, e + 1)
        out[i] = _feature_matrix(o[sl], h[sl], low[sl], c[sl], v[sl], rows=t)
    _check_finite(out, bars, ends, index)
    return out
