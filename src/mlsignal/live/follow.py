"""``FollowFeed``: tail-follow CSV files that grow, like ``tail -F``.

Each file is polled every ``poll_s`` seconds. Only complete lines are bars: a last line
without its newline is still being written and waits for the next poll. A file is either one
symbol (named after the file) or has a ``symbol`` column. The first line is the header.

Rotation (the path now names another file: a new inode) and truncation (the file is shorter
than what was read) are logged as a WARNING naming the file; the file is then read again from
its start and bars at or before the last one delivered for a symbol are skipped, so a
rotated log neither repeats nor loses bars. Outside of that, a bar that is not newer than the
symbol's previous bar is bad data and raises :class:`~mlsignal.errors.TimestampError`.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pandas as pd

from mlsignal.errors import ConfigError, DataError, TimestampError
from mlsignal.live.feeds import (
    Bar,
    Resume,
    context_start,
    frame_to_bars,
    group_by_time,
    split_symbols,
    symbol_of,
)

log = logging.getLogger(__name__)


class FollowedFile:
    """Read state of one growing CSV file: header, byte offset, identity, last bar times."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.name.lower().endswith(".csv"):
            raise ConfigError(f"{self.path}: only plain .csv files can be followed")
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file")
        self.symbol = symbol_of(self.path)
        self.header: bytes | None = None
        self.offset = 0  # bytes consumed: always just after a newline
        self.inode: int | None = None
        self.last: dict[str, pd.Timestamp] = {}  # last bar delivered per symbol
        self._restarted = False  # re-reading after rotation/truncation: skip old bars
        self._missing_logged = False

    def read_new(self) -> dict[str, pd.DataFrame]:
        """New complete bars since the last call, ``{symbol: bars}`` (maybe empty)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if not self._missing_logged:
                log.warning("%s: file is gone (rotation in progress?); waiting for it", self.path)
                self._missing_logged = True
            return {}
        self._missing_logged = False
        self._check_identity(st)
        if st.st_size == self.offset:
            return {}
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1  # 0 when no complete line yet
        if end == 0:
            return {}
        complete = chunk[:end]
        if self.header is None:
            first = complete.index(b"\n") + 1
            self.header, complete = complete[:first], complete[first:]
        frames = self._parse(complete) if complete.strip() else {}
        self.offset += end
        return self._only_new(frames)

    def _check_identity(self, st: os.stat_result) -> None:
        if self.inode is None:
            self.inode = st.st_ino
            return
        why = None
        if st.st_ino != self.inode:
            why = "was replaced by a new file (rotated)"
        elif st.st_size < self.offset:
            why = f"was truncated ({st.st_size} bytes, {self.offset} already read)"
        if why is None:
            return
        log.warning(
            "%s %s: reading it again from the start; bars at or before the last delivered "
            "(%s) are skipped",
            self.path,
            why,
            ", ".join(f"{s} {t}" for s, t in self.last.items()) or "none",
        )
        self.inode, self.offset, self.header, self._restarted = st.st_ino, 0, None, True

    def _parse(self, lines: bytes) -> dict[str, pd.DataFrame]:
        where = f"{self.path} (bytes {self.offset}..)"
        try:
            raw = pd.read_csv(io.BytesIO((self.header or b"") + lines))
        except Exception as exc:  # pandas raises several types for a malformed line
            raise DataError(f"{where}: cannot parse new lines: {exc}") from exc
        return split_symbols(raw, self.symbol, where)

    def _only_new(self, frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        out = {}
        for symbol, bars in frames.items():
            last = self.last.get(symbol)
            if last is not None and bars.index[0] <= last:
                if not self._restarted:
                    raise TimestampError(
                        f"{self.path}: {symbol} bar at {bars.index[0]} is not after the "
                        f"previous bar {last}; appended bars must be newer"
                    )
                bars = bars[bars.index > last]
            if len(bars):
                out[symbol] = bars
                self.last[symbol] = bars.index[-1]
        self._restarted = False
        return out


class FollowFeed:
    """Tail-follows CSV files; never ends on its own (stop it with the ``stop`` event).

    Args:
        paths: CSV files (one symbol each, or with a ``symbol`` column).
        symbols: keep only these symbols (others are ignored).
        poll_s: seconds between polls when nothing new arrived.
        sleep: injectable wait ``(event, seconds)``; default ``event.wait``.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        symbols: Sequence[str] | None = None,
        *,
        poll_s: float = 1.0,
        sleep: Callable[[threading.Event, float], object] | None = None,
    ) -> None:
        if not paths:
            raise ConfigError("follow feed needs at least one file")
        if not poll_s > 0:
            raise ConfigError(f"poll interval must be positive, got {poll_s}")
        self.files = [FollowedFile(p) for p in paths]
        self.wanted = set(symbols) if symbols else None
        self.poll_s = poll_s
        self._sleep = sleep or (lambda ev, s: ev.wait(s))
        self._resume = Resume()
        self._first = True

    def poll(self) -> list[Bar]:
        """Every new complete bar of every file (the first call reads what is there)."""
        bars: list[Bar] = []
        for f in self.files:
            for symbol, frame in f.read_new().items():
                if self.wanted is not None and symbol not in self.wanted:
                    continue
                if self._first:  # history: keep only the context the runner needs
                    last = self._resume.last.get(symbol)
                    frame = frame.iloc[
                        context_start(frame.index, last, self._resume.context_bars) :
                    ]
                bars.extend(frame_to_bars(symbol, frame))
        self._first = False
        return bars

    def ticks(self, stop: threading.Event, resume: Resume) -> Iterator[list[Bar]]:
        """Yield new bars grouped by bar time, polling until ``stop`` is set."""
        self._resume = resume
        while not stop.is_set():
            bars = self.poll()
            if not bars:
                self._sleep(stop, self.poll_s)
                continue
            yield from group_by_time(bars)

    def close(self) -> None:
        """Nothing held open between polls."""
