"""What a valid bar is, checked three ways with one set of rules and messages.

- :func:`validate_bars`: a canonical bars frame (the full path). Every check is one
  vectorised numpy pass; the slow path (finding and describing the first offending row) runs
  only when a check fails. Rows are named by their 0-based position and their timestamp.
- :func:`clean_arrays`: whether wire arrays (epoch-ms timestamps, ``(n, 5)`` OHLCV) already
  form canonical bars: one pass, no pandas, no message (the server's fast path; a ``False``
  sends the bars the pandas way, which says what is wrong); :func:`clean_arrays_many` for
  many series of one length at once.
- :func:`check_bar`: one bar of a live stream, with the same messages.

The rules: finite, positive open/high/low/close; ``high >= max(open, close)``, ``low <=
min(open, close)``; finite, non-negative volume; timestamps strictly increasing, within
:data:`TIME_RANGE` (1970-01-01..2262-04-10).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from mlsignal.errors import DataError, MissingColumnError, PriceError, TimestampError

BAR_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")

#: Bars are dated from the Unix epoch up to a day before the end of pandas' nanosecond range
#: (2262-04-11): an epoch before 1970 is a unit or sign mistake, a later date would wrap.
T_MIN_NS = 0
T_MAX_NS = int(pd.Timestamp.max.value) - 86_400 * 10**9
#: The same bounds in epoch milliseconds, as the wire carries timestamps.
T_MIN_MS = T_MIN_NS // 1_000_000
T_MAX_MS = T_MAX_NS // 1_000_000
_T_MIN, _T_MAX = pd.Timestamp(T_MIN_NS), pd.Timestamp(T_MAX_NS)
#: The bounds as messages name them.
TIME_RANGE = f"{pd.Timestamp(T_MIN_NS):%Y-%m-%d}..{pd.Timestamp(T_MAX_NS):%Y-%m-%d}"


def validate_bars(bars: pd.DataFrame) -> pd.DataFrame:
    """Check that ``bars`` is a clean canonical bars frame and return it unchanged.

    Checks: non-empty; a tz-naive ``DatetimeIndex`` with strictly increasing (sorted,
    unique) timestamps within :data:`TIME_RANGE`; finite, positive open/high/low/close;
    ``high >= max(open, close)`` and ``low <= min(open, close)``; finite, non-negative
    volume.

    Raises:
        DataError: the frame is empty.
        MissingColumnError: one of ``open, high, low, close, volume`` is absent.
        TimestampError: the index is not a tz-naive DatetimeIndex, or has a missing,
            duplicated or out-of-order timestamp.
        PriceError: a price or volume breaks the rules above. The message names the first
            offending row (position and timestamp) and the column.
    """
    if len(bars) == 0:
        raise DataError("bars frame is empty: need at least one bar")
    index = _check_index(bars.index)
    cols = _columns(bars, index)
    _check_prices(cols, index)
    _check_high_low(cols, index)
    _check_volume(cols["volume"], index)
    return bars


def row_label(index: pd.Index, pos: int) -> str:
    """``row 17 (2020-01-05 00:00:00)``: how every message names a row; rows count from 1
    (the first bar is row 1), as a spreadsheet or an editor counts data rows."""
    return f"row {pos + 1} ({index[pos]})"


def _check_index(index: pd.Index) -> pd.DatetimeIndex:
    if not isinstance(index, pd.DatetimeIndex):
        raise TimestampError(
            f"bars index must be a DatetimeIndex, got {type(index).__name__}; "
            "use mlsignal.data.normalize_bars to build one"
        )
    if index.tz is not None:
        raise TimestampError(
            f"bars index must be tz-naive UTC, got tz={index.tz}; "
            "use mlsignal.data.normalize_bars to convert it"
        )
    if index.hasnans:
        pos = int(np.flatnonzero(index.isna())[0])
        raise TimestampError(f"row {pos + 1}: timestamp is missing (NaT)")
    outside = np.asarray((index < _T_MIN) | (index > _T_MAX))  # any unit, no overflow
    if outside.any():
        pos = int(np.argmax(outside))
        raise TimestampError(f"{row_label(index, pos)}: timestamp is outside {TIME_RANGE}")
    ticks = index.asi8
    steps = ticks[1:] - ticks[:-1]
    if len(steps) and not (steps > 0).all():
        pos = int(np.flatnonzero(steps <= 0)[0]) + 1
        kind = "duplicates" if steps[pos - 1] == 0 else "is earlier than"
        raise TimestampError(
            f"{row_label(index, pos)}: timestamp {kind} {row_label(index, pos - 1)}; "
            "timestamps must be sorted and unique"
        )
    return index


def _columns(bars: pd.DataFrame, index: pd.DatetimeIndex) -> dict[str, np.ndarray]:
    missing = [c for c in BAR_COLUMNS if c not in bars.columns]
    if missing:
        raise MissingColumnError(
            f"bars frame lacks column(s) {', '.join(missing)}; "
            f"found {[str(c) for c in bars.columns]}"
        )
    cols = {}
    for name in BAR_COLUMNS:
        try:
            cols[name] = np.asarray(bars[name], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise PriceError(f"column {name} is not numeric ({exc})") from exc
    return cols


def _check_prices(cols: dict[str, np.ndarray], index: pd.DatetimeIndex) -> None:
    ok = [np.isfinite(cols[c]) & (cols[c] > 0) for c in PRICE_COLUMNS]
    if all(mask.all() for mask in ok):
        return
    # The earliest bad row over all four columns; ties go to the first column.
    firsts = [int(np.argmin(mask)) if not mask.all() else len(index) for mask in ok]
    which = int(np.argmin(firsts))
    pos, name = firsts[which], PRICE_COLUMNS[which]
    value = float(cols[name][pos])
    problem = "is not finite" if not np.isfinite(value) else "is not positive"
    raise PriceError(f"{row_label(index, pos)}: {name} {value!r} {problem}")


def _check_high_low(cols: dict[str, np.ndarray], index: pd.DatetimeIndex) -> None:
    o, h, lo, c = cols["open"], cols["high"], cols["low"], cols["close"]
    bad_high = h < np.maximum(o, c)
    bad_low = lo > np.minimum(o, c)
    bad = bad_high | bad_low
    if not bad.any():
        return
    pos = int(np.argmax(bad))
    if bad_high[pos]:
        other = "close" if c[pos] > o[pos] else "open"  # the larger one
        raise PriceError(
            f"{row_label(index, pos)}: high {float(h[pos])!r} is below "
            f"{other} {float(cols[other][pos])!r}"
        )
    other = "close" if c[pos] < o[pos] else "open"  # the smaller one
    raise PriceError(
        f"{row_label(index, pos)}: low {float(lo[pos])!r} is above "
        f"{other} {float(cols[other][pos])!r}"
    )


def _check_volume(volume: np.ndarray, index: pd.DatetimeIndex) -> None:
    ok = np.isfinite(volume) & (volume >= 0)
    if ok.all():
        return
    pos = int(np.argmin(ok))
    value = float(volume[pos])
    problem = "is not finite" if not np.isfinite(value) else "is negative"
    raise PriceError(f"{row_label(index, pos)}: volume {value!r} {problem}")


def check_bar(label: str, values: Sequence[float]) -> None:
    """Validate one bar ``(open, high, low, close, volume)`` by :func:`validate_bars`' rules,
    with its messages; ``label`` names the bar in them."""
    o, h, low, c, v = values
    for name, x in zip(PRICE_COLUMNS, (o, h, low, c), strict=True):
        if not (math.isfinite(x) and x > 0):
            problem = "is not finite" if not math.isfinite(x) else "is not positive"
            raise PriceError(f"{label}: {name} {x!r} {problem}")
    if h < max(o, c):
        other, value = ("close", c) if c > o else ("open", o)
        raise PriceError(f"{label}: high {h!r} is below {other} {value!r}")
    if low > min(o, c):
        other, value = ("close", c) if c < o else ("open", o)
        raise PriceError(f"{label}: low {low!r} is above {other} {value!r}")
    if not (math.isfinite(v) and v >= 0):
        problem = "is not finite" if not math.isfinite(v) else "is negative"
        raise PriceError(f"{label}: volume {v!r} {problem}")


def clean_arrays(t_ms: np.ndarray, ohlcv: np.ndarray) -> bool:
    """Whether epoch-ms ``t_ms`` (n,) and ``ohlcv`` (n, 5) already form canonical bars.

    True when ``normalize_bars`` would keep them as they are and :func:`validate_bars`
    would pass them: at least one bar, timestamps strictly increasing and inside
    :data:`TIME_RANGE`, and the price and volume rules. One vectorised pass.
    """
    n = len(t_ms)
    if n == 0 or ohlcv.shape != (n, 5):
        return False
    if n > 1 and not (t_ms[1:] > t_ms[:-1]).all():
        return False
    if not (t_ms[0] >= T_MIN_MS and t_ms[-1] <= T_MAX_MS):
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


def clean_arrays_many(t_ms: np.ndarray, ohlcv: np.ndarray) -> np.ndarray:
    """:func:`clean_arrays` of ``N`` series of the same length at once: epoch-ms ``t_ms``
    ``(N, n)`` and ``ohlcv`` ``(N, n, 5)`` -> bool ``(N,)``, row ``i`` equal to
    ``clean_arrays(t_ms[i], ohlcv[i])`` (the same comparisons, reduced per row).
    """
    n_series, n = t_ms.shape
    if n == 0 or ohlcv.shape != (n_series, n, 5):
        return np.zeros(n_series, dtype=bool)
    ok = (t_ms[:, 1:] > t_ms[:, :-1]).all(axis=1)  # (N,)
    ok &= (t_ms[:, 0] >= T_MIN_MS) & (t_ms[:, -1] <= T_MAX_MS)
    o, h, low, c, v = (ohlcv[:, :, k] for k in range(5))  # each (N, n)
    with np.errstate(invalid="ignore"):
        prices = ohlcv[:, :, :4]
        ok &= (prices > 0).all(axis=(1, 2)) & np.isfinite(prices).all(axis=(1, 2))
        ok &= (h >= np.maximum(o, c)).all(axis=1) & (low <= np.minimum(o, c)).all(axis=1)
        ok &= (v >= 0).all(axis=1) & np.isfinite(v).all(axis=1)
    return ok
