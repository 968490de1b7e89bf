"""Feeds: where the live loop's closed bars come from.

A feed is a small protocol (:class:`Feed`): ``ticks(stop, resume)`` yields lists of
:class:`Bar` that closed together (one list per bar time across symbols, or one poll's new
bars), each symbol's bars in strictly increasing time order, only closed bars. It returns
when its data is consumed (replay) or when ``stop`` is set (follow, exchange).

A line a feed cannot read as a bar (``2012-12-19,abc,1,1,1,1``) is not fatal: the feed
yields it as a :class:`~mlsignal.live.rows.Rejection` (file, line number, the line, the
reason) among its ticks, the runner records it in the sink's ``rejected`` table, and the
bars go on (:mod:`.rows`). With ``strict`` a feed raises on it instead.

``resume`` is a hint: the last bar already recorded per symbol and how many bars of context
the runner needs before the first new one. A feed may use it to skip old history; the runner
is correct without it (it never records a bar twice and buffers context itself).

This module holds the protocol, :class:`Bar`, loading bar files (one symbol per file, or one
file with a ``symbol`` column) and :class:`ReplayFeed`. :mod:`.follow` tails growing files,
:mod:`.exchange` polls an exchange through ccxt.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import pandas as pd

from mlsignal.data import BAR_COLUMNS, SAMPLES, load_sample
from mlsignal.data.io import BAR_FILE_SUFFIXES, symbol_of
from mlsignal.errors import ConfigError, DataError
from mlsignal.live.rows import Rejection, bars_of, read_file_rows

log = logging.getLogger(__name__)


class Bar(NamedTuple):
    """One closed OHLCV bar of one symbol; ``ts`` is its tz-naive UTC open time (index)."""

    symbol: str
    ts: pd.Timestamp
    open: float
    high: float
    low: float
    close: float
    volume: float


#: What a feed yields: the bars of one bar time, or lines it quarantined (a tick may mix
#: both; the runner records the rejections and processes the bars).
Tick = Sequence[Bar | Rejection]


@dataclass(frozen=True)
class Resume:
    """Where the runner resumes: last recorded bar per symbol, bars of context it needs."""

    last: Mapping[str, pd.Timestamp] = field(default_factory=dict)
    context_bars: int = 0


class Feed(Protocol):
    """A source of closed bars; see the module docstring for the contract."""

    def ticks(self, stop: threading.Event, resume: Resume) -> Iterator[Tick]:
        """Yield groups of closed bars (and of quarantined lines) until the data ends or
        ``stop`` is set."""
        ...

    def close(self) -> None:
        """Release files or connections."""
        ...


# --- loading bar files ---------------------------------------------------------------------
def expand_paths(entries: Sequence[str]) -> list[str]:
    """Sample names and files as given; a directory becomes its bar files, sorted by name."""
    out: list[str] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.name.lower().endswith(BAR_FILE_SUFFIXES))
            if not files:
                raise DataError(
                    f"{path}: no bar files ({', '.join(BAR_FILE_SUFFIXES)}) in directory"
                )
            out.extend(str(p) for p in files)
        else:
            out.append(entry)
    return out


def read_file(
    path: str | Path, *, strict: bool = True
) -> tuple[dict[str, pd.DataFrame], list[Rejection]]:
    """``({symbol: bars}, rejections)`` of one CSV, Parquet or Feather file (see :mod:`.rows`): a
    bad row is quarantined as a :class:`~mlsignal.live.rows.Rejection`, or with ``strict``
    raises a DataError naming the file and the line."""
    path = Path(path)
    name = path.name.lower()
    if not name.endswith(BAR_FILE_SUFFIXES):
        raise DataError(
            f"{path}: unknown bars file type; expected one of {', '.join(BAR_FILE_SUFFIXES)}"
        )
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return read_file_rows(path, symbol_of(path), strict=strict)
    except DataError:
        raise
    except Exception as exc:  # the readers raise many unrelated types for a bad file
        raise DataError(f"{path}: cannot read bars file: {exc}") from exc


def load_bars_files(
    entries: Sequence[str],
    symbols: Sequence[str] | None = None,
    *,
    quarantine: list[Rejection] | None = None,
) -> dict[str, pd.DataFrame]:
    """``{symbol: bars}`` from sample names, files and directories.

    A file with a ``symbol`` (or ``ticker``) column holds many symbols; otherwise the symbol is
    the file name without extension. ``symbols`` keeps only those (each must be present).
    With a ``quarantine`` list, a bad row is left out and appended to it as a
    :class:`~mlsignal.live.rows.Rejection` (file, line, text, reason); without one, the first
    bad row raises.

    Raises:
        DataError: a file cannot be read or holds a bad row (without ``quarantine``; the
            message names the file and the line), two files give the same symbol, or a
            wanted symbol is absent.
    """
    data: dict[str, pd.DataFrame] = {}
    rejected: list[Rejection] = []
    for entry in expand_paths(entries):
        if entry.strip().lower() in SAMPLES and not Path(entry).exists():
            found = {entry.strip().lower(): load_sample(entry)}
        else:
            found, bad = read_file(entry, strict=quarantine is None)
            rejected += bad
        for symbol, bars in found.items():
            if symbol in data:
                raise DataError(f"symbol {symbol!r} comes from two sources (second: {entry})")
            data[symbol] = bars
    if symbols:
        missing = [s for s in symbols if s not in data]
        if missing:
            raise DataError(f"symbol(s) {', '.join(missing)} not in the source; has {list(data)}")
        data = {s: data[s] for s in symbols}
    if not data:
        raise DataError("the source holds no bars")
    if quarantine is not None:
        quarantine += bars_of(rejected, set(symbols) if symbols else None)
    return data


def frame_to_bars(symbol: str, bars: pd.DataFrame) -> list[Bar]:
    """Canonical bars frame -> list of :class:`Bar` (time order kept)."""
    values = bars[list(BAR_COLUMNS)].to_numpy(dtype=np.float64)
    return [Bar(symbol, ts, *map(float, row)) for ts, row in zip(bars.index, values, strict=True)]


def group_by_time(bars: Sequence[Bar]) -> list[list[Bar]]:
    """Bars of many symbols -> groups with equal ``ts``, in time order (stable per symbol)."""
    ordered = sorted(bars, key=lambda b: b.ts)  # sorted() is stable: symbol order kept
    groups: list[list[Bar]] = []
    for bar in ordered:
        if groups and groups[-1][0].ts == bar.ts:
            groups[-1].append(bar)
        else:
            groups.append([bar])
    return groups


def context_start(index: pd.DatetimeIndex, last: pd.Timestamp | None, context: int) -> int:
    """First position to deliver: ``context`` bars before the first bar after ``last``."""
    if last is None:
        return 0
    first_new = int(index.searchsorted(last, side="right"))
    return max(0, first_new - context)


# --- replay ----------------------------------------------------------------------------------
class ReplayFeed:
    """Replays bars already in memory or in files, merged across symbols by bar time.

    Args:
        data: ``{symbol: canonical bars}`` (see :func:`load_bars_files`).
        pace_s: seconds to wait between bar times (``0``: as fast as possible).
        speed: alternatively, replay at ``speed`` times real time: the wait between two bar
            times is their time difference divided by ``speed`` (capped at 60 s).
        sleep: injectable wait ``(event, seconds)``; default ``event.wait``.
        rejections: rows quarantined while loading (:meth:`from_paths`); delivered first,
            so that the runner records them in its sink.

    The run ends when every symbol's bars are delivered.
    """

    def __init__(
        self,
        data: Mapping[str, pd.DataFrame],
        *,
        pace_s: float = 0.0,
        speed: float | None = None,
        sleep: Callable[[threading.Event, float], object] | None = None,
        rejections: Sequence[Rejection] = (),
    ) -> None:
        if pace_s < 0 or (speed is not None and speed <= 0):
            raise ConfigError(f"pace must be >= 0 and speed > 0, got pace={pace_s} speed={speed}")
        if pace_s and speed:
            raise ConfigError("give either a pace (seconds per bar) or a speed factor, not both")
        if not data:
            raise DataError("replay feed has no symbols")
        self.data = dict(data)
        self.symbols = tuple(self.data)
        self.pace_s = pace_s
        self.speed = speed
        self._sleep = sleep or (lambda ev, s: ev.wait(s))
        self.rejections = list(rejections)

    @classmethod
    def from_paths(
        cls,
        entries: Sequence[str],
        symbols: Sequence[str] | None = None,
        *,
        strict: bool = False,
        **kw: object,
    ) -> ReplayFeed:
        """Load files / samples / directories (see :func:`load_bars_files`) and replay them;
        a bad row is quarantined (delivered as a rejection), or with ``strict`` raises."""
        rejected: list[Rejection] | None = None if strict else []
        data = load_bars_files(entries, symbols, quarantine=rejected)
        return cls(data, rejections=rejected or (), **kw)  # type: ignore[arg-type]

    def ticks(self, stop: threading.Event, resume: Resume) -> Iterator[Tick]:
        """Yield the quarantined rows, then bar-time groups from the first bar each symbol
        needs, pacing between them."""
        if self.rejections:
            yield list(self.rejections)
        bars: list[Bar] = []
        for symbol, frame in self.data.items():
            start = context_start(frame.index, resume.last.get(symbol), resume.context_bars)
            bars.extend(frame_to_bars(symbol, frame.iloc[start:]))
        previous: pd.Timestamp | None = None
        for group in group_by_time(bars):
            if stop.is_set():
                return
            wait = self._wait_s(previous, group[0].ts)
            if wait > 0:
                self._sleep(stop, wait)
                if stop.is_set():
                    return
            previous = group[0].ts
            yield group

    def _wait_s(self, previous: pd.Timestamp | None, ts: pd.Timestamp) -> float:
        if previous is None:
            return 0.0
        if self.speed:
            return min((ts - previous).total_seconds() / self.speed, 60.0)
        return self.pace_s

    def close(self) -> None:
        """Nothing to release: the data is in memory."""
