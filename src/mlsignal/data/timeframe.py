"""The bar interval a bundle was trained on, and refusing bars of another one.

A model trained on daily bars has learnt daily returns, daily volatility and a daily label
horizon; fed hourly bars it still answers, but its GARCH regime sees hourly variance against a
daily floor (``low`` on every bar) and its probabilities describe another horizon. So the
bundle records the median bar interval of its training data (``config.json`` ``timeframe``),
and scoring bars whose median interval differs by more than a factor :data:`TOLERANCE` is a
:class:`~mlsignal.errors.TimeframeError`, unless the caller allows the mismatch
(``allow_timeframe_mismatch=True``, ``ML_ALLOW_TIMEFRAME_MISMATCH=1`` or
``--allow-timeframe-mismatch``). Medians, so that weekends and holidays in daily stock bars
(3- and 4-day gaps among 1-day ones) do not count as another interval.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import numpy as np

from mlsignal.errors import ConfigError, TimeframeError


class Timed(Protocol):
    """What :func:`check` reads of a prepared symbol: its name and bar timestamps (ns)."""

    symbol: str
    t_ns: np.ndarray


#: Intervals within this factor of each other are the same timeframe.
TOLERANCE = 1.5
#: How many of the last bar gaps the median is taken over.
GAPS = 64
_UNITS = ((7 * 86400, "w"), (86400, "d"), (3600, "h"), (60, "m"), (1, "s"))


def name(seconds: float) -> str:
    """A bar interval in words: 86400 -> ``1d``, 14400 -> ``4h``, 90 -> ``90s``."""
    for unit, suffix in _UNITS:
        if seconds >= unit and abs(seconds / unit - round(seconds / unit)) < 1e-6:
            return f"{round(seconds / unit)}{suffix}"
    return f"{seconds:g}s"


def median_interval(t_ns: np.ndarray, gaps: int | None = GAPS) -> float | None:
    """Median gap in seconds between the last ``gaps`` + 1 timestamps (ns; ``None``: all of
    them), or ``None`` for fewer than two bars."""
    t = np.asarray(t_ns, np.int64)
    t = t if gaps is None else t[-(gaps + 1) :]
    if t.size < 2:
        return None
    return float(np.median(np.diff(t))) / 1e9


def learn(intervals: Mapping[str, float]) -> dict[str, Any]:
    """The ``timeframe`` section of a bundle's config from each training symbol's median bar
    interval in seconds. Symbols of different intervals are a :class:`ConfigError`: one
    bundle models one timeframe."""
    if not intervals:
        raise ConfigError("no symbols to learn the bar interval from")
    lo, hi = min(intervals.values()), max(intervals.values())
    if hi > lo * TOLERANCE:
        listed = ", ".join(f"{s} {name(v)}" for s, v in intervals.items())
        raise ConfigError(
            f"the training symbols have different bar intervals ({listed}); train one bundle "
            "per timeframe"
        )
    seconds = float(np.median(list(intervals.values())))
    return {"bar_seconds": seconds, "name": name(seconds)}


def bundle_seconds(config: Mapping[str, Any]) -> float | None:
    """The bar interval (seconds) a bundle's config records; ``None`` for a bundle from before
    timeframes were recorded (nothing is checked then)."""
    tf = config.get("timeframe")
    return None if tf is None else float(tf["bar_seconds"])


def check(expected: float | None, prepared: Iterable[Timed]) -> None:
    """Raise :class:`TimeframeError` naming the first symbol whose bars' median interval is
    not within :data:`TOLERANCE` of ``expected`` seconds (``None``: no check)."""
    if expected is None:
        return
    for p in prepared:
        got = median_interval(p.t_ns)
        if got is None or expected / TOLERANCE <= got <= expected * TOLERANCE:
            continue
        who = f"{p.symbol}: " if p.symbol else ""
        raise TimeframeError(
            f"{who}bars are {name(got)} apart (median of the last gaps) but the bundle was "
            f"trained on {name(expected)} bars; score {name(expected)} bars, train a bundle on "
            "this timeframe, or allow the mismatch knowingly (allow_timeframe_mismatch=True, "
            "ML_ALLOW_TIMEFRAME_MISMATCH=1, --allow-timeframe-mismatch)"
        )
