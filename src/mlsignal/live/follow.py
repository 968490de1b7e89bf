"""``FollowFeed``: tail-follow CSV files that grow, like ``tail -F``.

Each file is polled every ``poll_s`` seconds. Only complete lines are bars: a last line
without its newline is still being written and waits for the next poll. A file is either one
symbol (named after the file) or has a ``symbol`` column. The first line is the header.

Rotation (the path now names another file: a new inode) and truncation (the file is shorter
than what was read) are logged as a WARNING naming the file; the file is then read again from
its start and bars at or before the last one delivered for a symbol are skipped, so a
rotated log neither repeats nor loses bars.

A bad line (not a bar, too many fields, high below low, a bar not newer than the symbol's
previous bar) is quarantined (:mod:`.rows`): it is yielded as a
:class:`~mlsignal.live.rows.Rejection` with the file and its line number, and the lines
after it go on. A restart reads the file again from its start and meets the same line: it is
quarantined again (the sink keeps it once) and never stops the run. With ``strict`` the
first bad line raises a :class:`~mlsignal.errors.DataError` naming the file and the line.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pandas as pd

from mlsignal.errors import ConfigError, DataError
from mlsignal.live.feeds import (
    Bar,
    Resume,
    Tick,
    context_start,
    frame_to_bars,
    group_by_time,
    symbol_of,
)
from mlsignal.live.rows import Reading, Rejection, bars_of, parse_csv

log = logging.getLogger(__name__)


class FollowedFile:
    """Read state of one growing CSV file: header, byte offset, line count, identity, last
    bar times. ``strict``: a bad line raises instead of being quarantined."""

    def __init__(self, path: str | Path, *, strict: bool = False) -> None:
        self.path = Path(path)
        if not self.path.name.lower().endswith(".csv"):
            raise ConfigError(f"{self.path}: only plain .csv files can be followed")
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file")
        self.symbol = symbol_of(self.path)
        self.header: bytes | None = None
        self.offset = 0  # bytes consumed: always just after a newline
        self.lines = 0  # lines consumed, the header included
        self.strict = strict
        self.inode: int | None = None
        self.last: dict[str, pd.Timestamp] = {}  # last bar delivered per symbol
        self._restarted = False  # re-reading after rotation/truncation: skip old bars
        self._missing_logged = False

    def read_new(self) -> tuple[dict[str, pd.DataFrame], list[Rejection]]:
        """New complete bars since the last call, ``{symbol: bars}`` (maybe empty), and the
        new lines quarantined."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if not self._missing_logged:
                log.warning("%s: file is gone (rotation in progress?); waiting for it", self.path)
                self._missing_logged = True
            return {}, []
        self._missing_logged = False
        self._check_identity(st)
        if st.st_size == self.offset:
            return {}, []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1  # 0 when no complete line yet
        if end == 0:
            return {}, []
        complete, first = chunk[:end], self.lines + 1
        if self.header is None:
            cut = complete.index(b"\n") + 1
            self.header, complete, first = complete[:cut], complete[cut:], first + 1
        frames, rejected = self._parse(complete, first)
        self.offset += end
        self.lines += chunk.count(b"\n", 0, end)
        return self._advance(frames), rejected

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
        self.lines = 0

    def _parse(self, lines: bytes, first: int) -> tuple[dict[str, pd.DataFrame], list[Rejection]]:
        how = Reading(
            os.path.abspath(self.path),
            str(self.path),
            self.symbol,
            last=self.last,
            old="skip" if self._restarted else "reject",
            strict=self.strict,
        )
        return parse_csv(self.header or b"", lines, first, how)

    def _advance(self, frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        for symbol, bars in frames.items():
            self.last[symbol] = bars.index[-1]
        if frames:
            self._restarted = False
        return frames


class FollowFeed:
    """Tail-follows CSV files; never ends on its own (stop it with the ``stop`` event).

    Args:
        paths: CSV files (one symbol each, or with a ``symbol`` column).
        symbols: keep only these symbols (others are ignored).
        poll_s: seconds between polls when nothing new arrived.
        sleep: injectable wait ``(event, seconds)``; default ``event.wait``.
        strict: stop on the first bad line (a DataError naming the file and line) instead of
            quarantining it.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        symbols: Sequence[str] | None = None,
        *,
        poll_s: float = 1.0,
        sleep: Callable[[threading.Event, float], object] | None = None,
        strict: bool = False,
    ) -> None:
        if not paths:
            raise ConfigError("follow feed needs at least one file")
        if not poll_s > 0:
            raise ConfigError(f"poll interval must be positive, got {poll_s}")
        self.files = [FollowedFile(p, strict=strict) for p in paths]
        self.wanted = set(symbols) if symbols else None
        self.poll_s = poll_s
        self._sleep = sleep or (lambda ev, s: ev.wait(s))
        self._resume = Resume()
        self._first = True

    def poll(self) -> list[Bar | Rejection]:
        """Every new complete bar of every file (the first call reads what is there), after
        the new lines each file quarantined."""
        out: list[Bar | Rejection] = []
        for f in self.files:
            frames, rejected = f.read_new()
            out.extend(bars_of(rejected, self.wanted))
            for symbol, frame in frames.items():
                if self.wanted is not None and symbol not in self.wanted:
                    continue
                if self._first:  # history: keep only the context the runner needs
                    last = self._resume.last.get(symbol)
                    frame = frame.iloc[
                        context_start(frame.index, last, self._resume.context_bars) :
                    ]
                out.extend(frame_to_bars(symbol, frame))
        self._first = False
        return out

    def ticks(self, stop: threading.Event, resume: Resume) -> Iterator[Tick]:
        """Yield each poll's quarantined lines, then its new bars grouped by bar time,
        polling until ``stop`` is set."""
        self._resume = resume
        while not stop.is_set():
            new = self.poll()
            if not new:
                self._sleep(stop, self.poll_s)
                continue
            rejected = [x for x in new if isinstance(x, Rejection)]
            if rejected:
                yield rejected
            yield from group_by_time([x for x in new if isinstance(x, Bar)])

    def close(self) -> None:
        """Nothing held open between polls."""
