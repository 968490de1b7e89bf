"""Validation of the canonical bars frame.

:func:`validate_bars` runs on every bar of a live loop, so every check is one vectorised
numpy pass; the slow path (finding and describing the first offending row) runs only when a
check fails. Rows are named by their 0-based position and their timestamp.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlsignal.errors import DataError, MissingColumnError, PriceError, TimestampError

BAR_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")


def validate_bars(bars: pd.DataFrame) -> pd.DataFrame:
    """Check that ``bars`` is a clean canonical bars frame and return it unchanged.

    Checks: non-empty; a tz-naive ``DatetimeIndex`` with strictly increasing (sorted,
    unique) timestamps; finite, positive open/high/low/close; ``high >= max(open, close)``
    and ``low <= min(open, close)``; finite, non-negative volume.

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
    """``row 17 (2020-01-05 00:00:00)``: how every message names a row."""
    return f"row {pos} ({index[pos]})"


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
        raise TimestampError(f"row {pos}: timestamp is missing (NaT)")
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
