"""Feature windows of many series at once, bit for bit those of :func:`feature_window`.

A server gets the bars of many symbols in one request. :func:`feature_windows_many` computes
all their windows together: every element-wise numpy operation of
:func:`~mlsignal.features.compute._feature_matrix` (scaling, logs, ratios, ``_div``, clipping)
and every per-window reduction (the rolling means and standard deviations) runs once over
``(M, ...)`` arrays of ``M`` series (chunks of up to ``_CHUNK``) instead of once per series.
What stays per series is what cannot be batched without changing a bit: TA-Lib's recursive
indicators (EMA, Wilder, the running-sum SMA; TA-Lib is 1-D), and the exactly rounded
``math.fsum`` of the volume reference where the shortcut below does not apply.

Why the numbers are the same, bit for bit (the tests check it on every window of the real
samples and on synthetic edge cases):

- element-wise IEEE operations (``+ - * /``, ``sqrt``, comparisons, ``np.maximum``) give the
  same bits whatever the array shape; ``log``/``log1p`` run the same numpy loop on rows whose
  inner axis is contiguous, as the single series' arrays are;
- each rolling mean/std is ``np.add.reduce`` over the last axis of a ``(N, k, w)`` view whose
  inner axis is the window, exactly as the single series' ``(k, w)`` view: numpy sums every
  window with the same (pairwise) order;
- TA-Lib's ``MAX``/``MIN`` over 20 bars are replaced by a numpy sliding maximum/minimum: a
  maximum is exact, so any order gives the same value, on the finite positive prices this
  path takes (see below);
- the volume reference ``fsum(v) / n``: when every volume of a series is an integer and the
  computed sum of ``|v|`` is below 2**53, every partial sum of any order is an integer below
  2**53, so ``np.add.reduce`` is exact and equals the exactly rounded ``fsum``; otherwise that
  series' ``fsum`` runs as before.

A series with any non-finite value, or a price that is not positive, goes through the very
per-series code :func:`~mlsignal.features.feature_window` runs (its windows then carry the
same NaNs, and the same error is raised).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import talib

from mlsignal.errors import DataError, InsufficientDataError
from mlsignal.features.compute import (
    _VOL_STD_EPS,
    _check_finite,
    _check_schema,
    _div,
    _feature_matrix,
    volume_sum,
)
from mlsignal.features.schema import DEFAULT_SCHEMA, FEATURE_CLIP, FEATURE_NAMES, FeatureSchema

#: Series computed together, so that their temporaries stay in cache. Measured per series
#: (CPU time, 64 series of the S&P 500 sample, the noisy shared 2-core dev VM): about 70 µs in
#: chunks of 16, 85-90 µs in chunks of 8, 32 or 64, 225 µs one by one.
_CHUNK = 16

#: Integers up to this are exact in float64, and so is every sum of them that stays below it.
_EXACT_INT = 2.0**53


def _raw(func: Callable[..., Any]) -> Callable[..., Any]:
    """TA-Lib's compiled function under its pandas/polars wrapper (``functools.wraps`` keeps
    it as ``__wrapped__``): the same C call on numpy arrays, without its ``isinstance`` scans
    (about 1 µs a call; a third of a series' TA-Lib time here)."""
    return getattr(func, "__wrapped__", func)


_ATR, _MACD, _STOCH, _ADX = _raw(talib.ATR), _raw(talib.MACD), _raw(talib.STOCH), _raw(talib.ADX)
_PLUS_DI, _MINUS_DI = _raw(talib.PLUS_DI), _raw(talib.MINUS_DI)
_RSI, _SMA = _raw(talib.RSI), _raw(talib.SMA)


def feature_windows_many(
    ohlcv: np.ndarray,
    schema: FeatureSchema = DEFAULT_SCHEMA,
    index: np.ndarray | None = None,
    *,
    check: bool = True,
) -> np.ndarray:
    """The model window of the last bar of each of ``N`` series: float32 ``(N, T, F)``.

    ``ohlcv`` is float64 ``(N, n_bars, 5)`` (open, high, low, close, volume), the same
    ``n_bars >= schema.lookback`` for every series. Row ``i`` equals
    ``feature_window(ohlcv[i], schema)`` bit for bit (computed from its last
    ``schema.lookback`` bars).

    Raises :class:`InsufficientDataError` with fewer bars, worded as :func:`feature_window`
    words it. With ``check`` (default), a non-finite feature raises the
    :class:`FeatureSchemaError` :func:`feature_window` raises for the first such series
    (``index``, int64 ns timestamps ``(N, n_bars)``, dates its bar as there); the caller adds
    the symbol. Without ``check`` such windows are returned as they are (test them with
    ``np.isfinite(w).all(axis=(1, 2))``).
    """
    _check_schema(schema)
    x = np.asarray(ohlcv, dtype=np.float64)
    if x.ndim != 3 or x.shape[2] != 5:
        raise DataError(f"bars must have shape (N, n_bars, 5), got {x.shape}")
    n_series, n = x.shape[:2]
    lb, t = schema.lookback, schema.window
    if n < lb:
        raise InsufficientDataError(
            f"got {n} bars, need at least {lb} (window {t} + warmup {schema.warmup})"
        )
    tail = x[:, n - lb :]  # (N, lb, 5): the bars each window is computed from
    with np.errstate(invalid="ignore"):  # NaN > 0 is False: such a series is not fast
        fast = (tail[:, :, :4] > 0).all(axis=(1, 2)) & np.isfinite(tail).all(axis=(1, 2))
    out = np.empty((n_series, t, len(FEATURE_NAMES)), dtype=np.float32)
    rows = np.flatnonzero(fast)
    every = rows.size == n_series
    for s in range(0, rows.size, _CHUNK):
        part = slice(s, s + _CHUNK) if every else rows[s : s + _CHUNK]
        out[part] = _windows(tail[part], t)  # float64 -> float32 as astype rounds
    for i in np.flatnonzero(~fast).tolist():  # the single-series code, NaNs and all
        cols = (np.ascontiguousarray(tail[i, :, k]) for k in range(5))
        out[i] = _feature_matrix(*cols, rows=t)
    if check:
        bad = np.flatnonzero(~np.isfinite(out).all(axis=(1, 2)))
        if bad.size:
            i = int(bad[0])
            ends = np.array([n - 1], dtype=np.int64)
            _check_finite(out[i : i + 1], x[i], ends, None if index is None else index[i])
    return out


# --- the batched _feature_matrix (finite positive prices) ---------------------------------
def _windows(tail: np.ndarray, r: int) -> np.ndarray:
    """``_feature_matrix(..., rows=r)`` of every series of ``tail`` (M, n, 5): ``(M, r, F)``
    float64, clipped."""
    o, h, low, c, v = np.ascontiguousarray(tail.transpose(2, 0, 1))  # each (M, n), C order
    n = c.shape[1]
    ref = c[:, :1]  # (M, 1); close[:, 0] becomes 1
    o, h, low, c = o[:, n - r :] / ref, h / ref, low / ref, c / ref
    with np.errstate(all="ignore"):  # as _feature_matrix: 0/0 and log(<=0) on purpose
        cols = _columns(o, h, low, c, v, r)
    m = np.empty((c.shape[0], r, len(FEATURE_NAMES)))  # (M, r, F)
    for i, name in enumerate(FEATURE_NAMES):
        m[:, :, i] = cols[name]
    return np.clip(m, -FEATURE_CLIP, FEATURE_CLIP, out=m)


def _columns(
    o: np.ndarray, h: np.ndarray, low: np.ndarray, c: np.ndarray, v: np.ndarray, r: int
) -> dict[str, np.ndarray]:
    """``compute._columns`` over ``(M, ...)`` arrays: each feature ``(M, r)``.

    ``o`` holds the last ``r`` bars; ``h``, ``low``, ``c``, ``v`` all ``n``.
    """
    ta = _talib(h, low, c, r)  # per series: the recursions
    atr = ta["atr"]
    hist = ta["hist"]  # (M, r + 1): the 1-bar change needs one more
    k, d = ta["k"], ta["d"]
    hh, ll = _rolling_extreme(h, 20, r, np.maximum), _rolling_extreme(low, 20, r, np.minimum)
    mid, std = _rolling_mean_std(c, 20, r)
    ch, hl, lw = c[:, -r:], h[:, -r:], low[:, -r:]
    return {
        # _macd
        "macd_atr": _div(ta["line"], atr),
        "macd_signal_atr": _div(ta["signal"], atr),
        "macd_hist_atr": _div(hist[:, 1:], atr),
        "macd_hist_chg_atr": _div(hist[:, 1:] - hist[:, :-1], atr),
        # _oscillators
        "rsi14": (ta["rsi14"] - 50.0) / 50.0,
        "rsi6": (ta["rsi6"] - 50.0) / 50.0,
        "kdj_k": (k - 50.0) / 50.0,
        "kdj_d": (d - 50.0) / 50.0,
        "kdj_j": ((3.0 * k - 2.0 * d) - 50.0) / 50.0,
        "adx14": (ta["adx"] - 50.0) / 50.0,
        "di_diff14": (ta["plus"] - ta["minus"]) / 100.0,
        "natr14": _div(atr, ch),
        # _bands
        "bb_pctb": _div(ch - mid, 2.0 * std),
        "bb_width": _div(4.0 * std, mid),
        "range_pos20": _div(2.0 * (ch - ll), hh - ll) - 1.0,
        **_returns(c, r),
        "vol_z20": _volume_z(v, r),
        # _shape
        "bar_clv": _div(2.0 * ch - hl - lw, hl - lw),
        "body_atr": _div(ch - o, atr),
        "upper_shadow_atr": _div(hl - np.maximum(o, ch), atr),
        "lower_shadow_atr": _div(np.minimum(o, ch) - lw, atr),
        "close_sma20_atr": _div(ch - ta["sma20"], atr),
        "close_sma50_atr": _div(ch - ta["sma50"], atr),
    }


def _talib(h: np.ndarray, low: np.ndarray, c: np.ndarray, r: int) -> dict[str, np.ndarray]:
    """TA-Lib's recursive indicators, one series at a time (TA-Lib is 1-D), with the
    arguments ``compute`` uses: the last ``r`` values of each (``hist``: ``r + 1``)."""
    m = c.shape[0]
    names = ("atr", "line", "signal", "k", "d", "plus", "minus")
    names += ("rsi14", "rsi6", "adx", "sma20", "sma50")
    out = {name: np.empty((m, r)) for name in names}
    out["hist"] = np.empty((m, r + 1))
    atr, line, signal, hist = out["atr"], out["line"], out["signal"], out["hist"]
    k, d, plus, minus = out["k"], out["d"], out["plus"], out["minus"]
    rsi14, rsi6, adx, sma20, sma50 = (out[x] for x in ("rsi14", "rsi6", "adx", "sma20", "sma50"))
    for i in range(m):
        hi, li, ci = h[i], low[i], c[i]  # contiguous rows
        atr[i] = _ATR(hi, li, ci, 14)[-r:]
        a, b, e = _MACD(ci, fastperiod=12, slowperiod=26, signalperiod=9)
        line[i], signal[i], hist[i] = a[-r:], b[-r:], e[-r - 1 :]
        a, b = _STOCH(hi, li, ci, 9, 3, 0, 3, 0)  # KDJ 9/3/3 with SMA smoothing
        k[i], d[i] = a[-r:], b[-r:]
        plus[i] = _PLUS_DI(hi, li, ci, 14)[-r:]
        minus[i] = _MINUS_DI(hi, li, ci, 14)[-r:]
        rsi14[i] = _RSI(ci, 14)[-r:]
        rsi6[i] = _RSI(ci, 6)[-r:]
        adx[i] = _ADX(hi, li, ci, 14)[-r:]
        sma20[i] = _SMA(ci, 20)[-r:]
        sma50[i] = _SMA(ci, 50)[-r:]
    return out


def _rolling_extreme(x: np.ndarray, w: int, rows: int, op: np.ufunc) -> np.ndarray:
    """Trailing maximum (``op=np.maximum``) or minimum over ``w`` bars at the last ``rows``
    positions of ``x`` (M, n), ``rows + w - 1 <= n``: ``(M, rows)``, TA-Lib's MAX/MIN there.

    Doubling: ``e[:, j]`` holds the extreme of ``x[:, j : j + p]`` for ``p = 1, 2, 4 ..``;
    a window of ``w`` is two overlapping spans of the largest ``p <= w``. Exact for finite
    input (an extreme is one of the values, whatever the order).
    """
    e = x[:, x.shape[1] - rows - w + 1 :]  # (M, rows + w - 1)
    p = 1
    while 2 * p <= w:
        e = op(e[:, :-p], e[:, p:])  # spans of 2p
        p *= 2
    return op(e[:, :rows], e[:, w - p : w - p + rows])


def _rolling_mean_std(x: np.ndarray, w: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """``compute._rolling_mean_std`` of every row of ``x`` (M, n), whose rows are
    contiguous: mean and population std ``(M, rows)``, NaN where fewer than ``w`` bars.

    The ``(M, k, w)`` view has the single series' ``(k, w)`` strides inside, so
    ``np.add.reduce`` sums each window over its contiguous last axis in the same order.
    """
    m, n = x.shape
    mean, std = np.full((m, rows), np.nan), np.full((m, rows), np.nan)
    start = max(0, n - rows - w + 1)
    k = n - start - w + 1
    if k > 0:
        item = x.itemsize
        win = np.lib.stride_tricks.as_strided(
            x[:, start:], shape=(m, k, w), strides=(x.strides[0], item, item), writeable=False
        )
        mu = np.add.reduce(win, axis=2) / w  # (M, k)
        dev = np.subtract(win, mu[:, :, None])  # (M, k, w), C order
        np.multiply(dev, dev, out=dev)
        mean[:, rows - k :] = mu
        std[:, rows - k :] = np.sqrt(np.add.reduce(dev, axis=2) / w)
    return mean, std


def _log_return(lc: np.ndarray, k: int) -> np.ndarray:
    """``lc[:, t] - lc[:, t - k]``, NaN for the first ``k`` bars: ``(M, n)``."""
    out = np.full(lc.shape, np.nan)
    out[:, k:] = lc[:, k:] - lc[:, :-k]
    return out


def _returns(c: np.ndarray, r: int) -> dict[str, np.ndarray]:
    """``compute._returns`` over ``(M, n)`` closes."""
    s = max(0, c.shape[1] - r - 20)
    lc = np.log(c[:, s:])  # (M, n - s); rows contiguous, as c[s:] of one series
    r1 = _log_return(lc, 1)
    out = {f"ret_{k}": _log_return(lc, k)[:, -r:] for k in (1, 2, 5, 10, 20)}
    for w in (10, 20):
        out[f"rvol_{w}"] = _rolling_mean_std(r1[:, 1:], w, r)[1]
    return out


def _volume_z(v: np.ndarray, r: int) -> np.ndarray:
    """``compute._volume_z`` over ``(M, n)`` finite volumes."""
    n = v.shape[1]
    s = max(0, n - r - 19)
    ref = _exact_sums(v) / n  # (M,): fsum(v) / n of each series
    with np.errstate(all="ignore"):
        lv = np.log1p(v[:, s:] / ref[:, None])  # (M, n - s)
    lv[~(ref > 0)] = 0.0  # as compute: zeros where the reference is not positive
    mean, std = _rolling_mean_std(lv, 20, r)
    return _div(lv[:, -r:] - mean, std, eps=_VOL_STD_EPS)


def _exact_sums(v: np.ndarray) -> np.ndarray:
    """``math.fsum`` of each row of finite ``v`` (M, n): ``(M,)`` float64.

    Rows of integers whose computed sum of magnitudes is below 2**53 are summed by numpy:
    every partial sum, in any order, is then an integer below 2**53 (a computed sum of
    non-negative numbers is at least min(true sum, 2**53), as rounding is monotone), so the
    sum is exact and equals fsum's exactly rounded one. Other rows use ``math.fsum``.
    """
    exact = (v == np.floor(v)).all(axis=1) & (np.add.reduce(np.abs(v), axis=1) < _EXACT_INT)
    sums = np.add.reduce(v, axis=1)
    for i in np.flatnonzero(~exact).tolist():
        sums[i] = volume_sum(v[i])  # a sum past float64: a PriceError, as compute says it
    return sums
