"""Feeds: where the live loop's closed bars come from.

A feed is a small protocol (:class:`Feed`): ``ticks(stop, resume)`` yields lists of
:class:`Bar` that closed together (one list per bar time across symbols, or one poll's new
bars), each symbol's bars in strictly increasing time order, only closed bars. It returns
when its data is consumed (replay) or when ``stop`` is set (follow, exchange).

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

from mlsignal.data import BAR_COLUMNS, SAMPLES, load_sample, normalize_bars
from mlsignal.data.io import CSV_SUFFIXES, PARQUET_SUFFIXES
from mlsignal.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Column names (any case) that mark a multi-symbol file.
SYMBOL_COLUMNS: tuple[str, ...] = ("symbol", "ticker")
BAR_SUFFIXES: tuple[str, ...] = CSV_SUFFIXES + PARQUET_SUFFIXES


class Bar(NamedTuple):
    """One closed OHLCV bar of one symbol; ``ts`` is its tz-naive UTC open time (index)."""

    symbol: str
    ts: pd.Timestamp
    open: float
    high: float
    low: float
    close: float
    volume: float


@dataclass(frozen=True)
class Resume:
    """Where the runner resumes: last recorded bar per symbol, bars of context it needs."""

    last: Mapping[str, pd.Timestamp] = field(default_factory=dict)
    context_bars: int = 0


class Feed(Protocol):
    """A source of closed bars; see the module docstring for the contract."""

    def ticks(self, stop: threading.Event, resume: Resume) -> Iterator[list[Bar]]:
        """Yield groups of closed bars until the data ends or ``stop`` is set."""
        ...

    def close(self) -> None:
        """Release files or connections."""
        ...


# --- loading bar files ---------------------------------------------------------------------
def symbol_of(path: str | Path) -> str:
    """``data/btc.csv.gz`` -> ``btc``: the file name without its bars extension."""
    name = Path(path).name
    for suffix in sorted(BAR_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def expand_paths(entries: Sequence[str]) -> list[str]:
    """Sample names and files as given; a directory becomes its bar files, sorted by name."""
    out: list[str] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.name.lower().endswith(BAR_SUFFIXES))
            if not files:
                raise DataError(f"{path}: no bar files ({', '.join(BAR_SUFFIXES)}) in directory")
            out.extend(str(p) for p in files)
        else:
            out.append(entry)
    return out


def split_symbols(raw: pd.DataFrame, default_symbol: str, where: str) -> dict[str, pd.DataFrame]:
    """Normalise ``raw`` into ``{symbol: bars}``: by its symbol column, else one symbol.

    Errors are prefixed with ``where`` (the path) and, for multi-symbol files, ``[symbol]``;
    row numbers then count that symbol's rows (0-based).
    """
    col = next((c for c in raw.columns if str(c).strip().lower() in SYMBOL_COLUMNS), None)
    if col is None:
        return {default_symbol: _normalized(raw, where)}
    if raw[col].isna().any():
        pos = int(np.flatnonzero(raw[col].isna().to_numpy())[0])
        raise DataError(f"{where}: row {pos}: {col} is missing")
    out = {}
    for symbol, rows in raw.groupby(raw[col].astype(str).str.strip(), sort=False):
        out[str(symbol)] = _normalized(rows.drop(columns=[col]), f"{where} [{symbol}]")
    return out


def _normalized(raw: pd.DataFrame, where: str) -> pd.DataFrame:
    try:
        return normalize_bars(raw)
    except DataError as e:
        raise type(e)(f"{where}: {e}") from e


def read_raw(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file as it is (no normalisation); DataError if it cannot."""
    path = Path(path)
    name = path.name.lower()
    if not name.endswith(BAR_SUFFIXES):
        raise DataError(
            f"{path}: unknown bars file type; expected one of {', '.join(BAR_SUFFIXES)}"
        )
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    reader = pd.read_csv if name.endswith(CSV_SUFFIXES) else pd.read_parquet
    try:
        return reader(path)
    except Exception as exc:  # the readers raise many unrelated types for a bad file
        raise DataError(f"{path}: cannot read bars file: {exc}") from exc


def load_bars_files(
    entries: Sequence[str], symbols: Sequence[str] | None = None
) -> dict[str, pd.DataFrame]:
    """``{symbol: bars}`` from sample names, files and directories.

    A file with a ``symbol`` (or ``ticker``) column holds many symbols; otherwise the symbol is
    the file name without extension. ``symbols`` keeps only those (each must be present).

    Raises:
        DataError: a file cannot be read or holds bad bars (the message names the file and
            the row), two files give the same symbol, or a wanted symbol is absent.
    """
    data: dict[str, pd.DataFrame] = {}
    for entry in expand_paths(entries):
        if entry.strip().lower() in SAMPLES and not Path(entry).exists():
            found = {entry.strip().lower(): load_sample(entry)}
        else:
            found = split_symbols(read_raw(entry), symbol_of(entry), entry)
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

    The run ends when every symbol's bars are delivered.
    """

    def __init__(
        self,
        data: Mapping[str, pd.DataFrame],
        *,
        pace_s: float = 0.0,
        speed: float | None = None,
        sleep: Callable[[threading.Event, float], object] | None = None,
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

    @classmethod
    def from_paths(
        cls, entries: Sequence[str], symbols: Sequence[str] | None = None, **kw: object
    ) -> ReplayFeed:
        """Load files / samples / directories (see :func:`load_bars_files`) and replay them."""
        return cls(load_bars_files(entries, symbols), **kw)  # type: ignore[arg-type]

    def ticks(self, stop: threading.Event, resume: Resume) -> Iterator[list[Bar]]:
        """Yield bar-time groups from the first bar each symbol needs, pacing between them."""
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
