"""Sinks: where the live loop records every signal.

:class:`SqliteSink` (the default) keeps one row per ``(symbol, bar_ts)`` in table ``signals``::

    symbol TEXT, bar_ts TEXT  -- PRIMARY KEY; bar_ts: the bar's time, ISO 8601, UTC, no zone
    close REAL, ss REAL, bs REAL, enhanced_ss REAL, enhanced_bs REAL,
    bull_prob REAL, regime TEXT, regime_vol REAL, kelly REAL,
    source TEXT        -- remote | local | fallback | rules
    latency_ms REAL, fallback_reason TEXT, model_version TEXT, endpoint TEXT,
    ml_info TEXT       -- the whole ml_info dict as JSON
    recorded_at TEXT   -- when the row was written, ISO 8601 UTC with ms and "Z"

**Idempotent**: rows go in with ``INSERT OR IGNORE``: the first write of a bar wins and a
second one (a replay after a restart, a late enhancer answer) changes nothing.

**Durable once acknowledged**: :meth:`SqliteSink.write` commits one transaction per call and
returns only after the commit. The database runs in WAL mode with ``synchronous=FULL``: the
WAL is fsynced at every commit, so an acknowledged row survives not only a killed process
(SIGKILL, OOM: with WAL, ``NORMAL`` would already survive that, because the commit is in the
OS page cache) but also a host crash or power loss, which ``NORMAL`` may roll back to the
last checkpoint. Live bars come a few per second at most and the runner commits once per bar
time for all its symbols, so one fsync per commit is cheap. ``synchronous="normal"`` is
available where the disk is slow and host crashes are acceptable losses.

**Quarantine**: lines a feed could not read as bars, and bars the runner refused (high below
low, a NaN price), go into table ``rejected`` of the same database, once each::

    source TEXT        -- the file's absolute path, or the symbol for a bar not from a file
    line INTEGER       -- the 1-based line in the file (the header is line 1); NULL otherwise
    symbol TEXT        -- when known
    raw TEXT           -- the line as read (or the refused bar's values)
    reason TEXT        -- why it is not a bar
    rejected_at TEXT   -- when it was first quarantined, ISO 8601 UTC with ms and "Z"

A unique index on ``(source, line, raw)`` keeps a line that a restart reads again from being
recorded twice.

**A busy database is not an error the loop dies of**: a write that finds another connection
holding the write lock waits at most ``busy_timeout_ms`` inside SQLite, then raises
:class:`SinkBusyError`; the runner (:mod:`.writer`) retries it and, past the bar's deadline,
keeps the group queued in memory. Any other failure to write (disk full, a read-only file, a
corrupt database) raises :class:`SinkError`, one line naming the file.

:class:`JsonlSink` writes each record as one JSON line to a stream (stdout). It keeps no
state, so it cannot tell a restart where to resume; use it beside SQLite for that. Its
rejections go to a JSON-lines file of their own (``rejected``), once each.
"""

from __future__ import annotations

import json
import math
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import pandas as pd

from mlsignal.errors import ConfigError, MLSignalError, UnavailableError
from mlsignal.live.rows import Rejection

SCHEMA = """
CREATE TABLE IF NOT EXISTS signals (
    symbol          TEXT NOT NULL,
    bar_ts          TEXT NOT NULL,
    close           REAL,
    ss              REAL NOT NULL,
    bs              REAL NOT NULL,
    enhanced_ss     REAL NOT NULL,
    enhanced_bs     REAL NOT NULL,
    bull_prob       REAL,
    regime          TEXT,
    regime_vol      REAL,
    kelly           REAL,
    source          TEXT NOT NULL,
    latency_ms      REAL,
    fallback_reason TEXT,
    model_version   TEXT,
    endpoint        TEXT,
    ml_info         TEXT NOT NULL,
    recorded_at     TEXT NOT NULL,
    PRIMARY KEY (symbol, bar_ts)
) WITHOUT ROWID
"""

REJECTED_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS rejected (
    source      TEXT NOT NULL,
    line        INTEGER,
    symbol      TEXT,
    raw         TEXT NOT NULL,
    reason      TEXT NOT NULL,
    rejected_at TEXT NOT NULL
)
""",
    "CREATE UNIQUE INDEX IF NOT EXISTS rejected_once ON rejected (source, ifnull(line, -1), raw)",
)
REJECTED_COLUMNS: tuple[str, ...] = ("source", "line", "symbol", "raw", "reason", "rejected_at")

#: SQLite result codes (the low byte of ``sqlite_errorcode``) of a lock held elsewhere.
BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
#: How long opening the database waits for a lock (creating the tables needs one).
OPEN_BUSY_TIMEOUT_MS = 10_000


class SinkError(MLSignalError):
    """The sink cannot record (disk full, read-only, corrupt): ``mlsignal live`` exits 3."""


class SinkBusyError(SinkError, UnavailableError):
    """Another connection holds the database's write lock: nothing was written; retry."""


COLUMNS: tuple[str, ...] = (
    "symbol", "bar_ts", "close", "ss", "bs", "enhanced_ss", "enhanced_bs", "bull_prob",
    "regime", "regime_vol", "kelly", "source", "latency_ms", "fallback_reason",
    "model_version", "endpoint", "ml_info", "recorded_at",
)  # fmt: skip

SYNC_MODES = ("full", "normal")


def format_ts(ts: pd.Timestamp) -> str:
    """A bar time as stored: ISO 8601, UTC, no zone suffix (sorts in time order as text)."""
    return pd.Timestamp(ts).isoformat()


def utc_now() -> str:
    """The current time as ``2024-01-02T03:04:05.678Z``."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e3):03d}Z"


@dataclass(frozen=True)
class Record:
    """One recorded signal: a bar, its raw scores and the enhancer's (or fallback) answer."""

    symbol: str
    bar_ts: pd.Timestamp
    close: float
    ss: float
    bs: float
    enhanced_ss: float
    enhanced_bs: float
    ml_info: dict[str, Any]

    @property
    def source(self) -> str:
        """``ml_info["source"]``."""
        return str(self.ml_info.get("source"))

    def row(self, recorded_at: str) -> tuple[Any, ...]:
        """The values of one ``signals`` row, in :data:`COLUMNS` order."""
        info = self.ml_info
        return (
            self.symbol, format_ts(self.bar_ts), self.close, self.ss, self.bs,
            self.enhanced_ss, self.enhanced_bs, info.get("bull_prob"), info.get("regime"),
            info.get("regime_vol"), info.get("kelly"), self.source, info.get("latency_ms"),
            info.get("fallback_reason"), info.get("model_version"), info.get("endpoint"),
            to_json(info), recorded_at,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (what :class:`JsonlSink` prints)."""
        return {
            "symbol": self.symbol,
            "bar_ts": format_ts(self.bar_ts),
            "close": self.close,
            "ss": self.ss,
            "bs": self.bs,
            "enhanced_ss": self.enhanced_ss,
            "enhanced_bs": self.enhanced_bs,
            "ml_info": self.ml_info,
        }


def to_json(value: Any) -> str:
    """JSON with NaN/inf as null and numpy scalars as numbers (strict JSON for any reader)."""
    return json.dumps(_clean(value), separators=(",", ":"), allow_nan=False)


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def rejection_row(r: Rejection, rejected_at: str) -> tuple[Any, ...]:
    """The values of one ``rejected`` row, in :data:`REJECTED_COLUMNS` order."""
    return (r.source, r.line, r.symbol, r.raw, r.reason, rejected_at)


class Sink(Protocol):
    """Where records go. ``write`` returns how many were new (not already recorded).

    Both methods raise :class:`SinkBusyError` when the store is busy for now (nothing was
    written: retry later) and :class:`SinkError` when it cannot write at all.
    """

    def write(self, records: Sequence[Record]) -> int:
        """Record ``records`` durably before returning; the number actually added."""
        ...

    def reject(self, rejections: Sequence[Rejection]) -> list[Rejection]:
        """Quarantine ``rejections``; returns those not quarantined before."""
        ...

    def last_recorded(self) -> dict[str, pd.Timestamp]:
        """The newest recorded bar time per symbol (empty when the sink keeps no state)."""
        ...

    def close(self) -> None:
        """Flush and release."""
        ...


class SqliteSink:
    """SQLite tables ``signals`` and ``rejected`` (see the module docstring).

    Args:
        path: the database file (created with its directory if missing).
        synchronous: ``"full"`` (default: survives a host crash) or ``"normal"``.
        busy_timeout_ms: how long one write waits inside SQLite for another connection's
            lock before it raises :class:`SinkBusyError` (the runner retries it until the
            bar's deadline, so this only bounds how far one attempt can overrun it).
    """

    def __init__(
        self, path: str | Path, *, synchronous: str = "full", busy_timeout_ms: int = 200
    ) -> None:
        if synchronous not in SYNC_MODES:
            raise ConfigError(f"synchronous={synchronous!r}; choose one of {', '.join(SYNC_MODES)}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout = {OPEN_BUSY_TIMEOUT_MS}")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            self._db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            for statement in (SCHEMA, *REJECTED_SCHEMA):
                self._db.execute(statement)
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"{self.path}: cannot open the signals database: {e}") from e
        if str(mode).lower() != "wal":
            raise ConfigError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
        marks = ", ".join("?" for _ in COLUMNS)
        self._insert = f"INSERT OR IGNORE INTO signals ({', '.join(COLUMNS)}) VALUES ({marks})"
        marks = ", ".join("?" for _ in REJECTED_COLUMNS)
        self._reject = (
            f"INSERT OR IGNORE INTO rejected ({', '.join(REJECTED_COLUMNS)}) VALUES ({marks})"
        )

    def write(self, records: Sequence[Record]) -> int:
        """Insert ``records`` in one transaction; returns after the commit (rows added)."""
        if not records:
            return 0
        stamp = utc_now()
        added = 0
        with self._transaction() as cur:
            for r in records:
                cur.execute(self._insert, r.row(stamp))
                added += cur.rowcount
        return added

    def reject(self, rejections: Sequence[Rejection]) -> list[Rejection]:
        """Insert ``rejections`` into ``rejected`` in one transaction; returns the new ones."""
        if not rejections:
            return []
        stamp = utc_now()
        new = []
        with self._transaction() as cur:
            for r in rejections:
                cur.execute(self._reject, rejection_row(r, stamp))
                if cur.rowcount:
                    new.append(r)
        return new

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error; SQLite errors come
        out as :class:`SinkBusyError` or :class:`SinkError`."""
        cur = self._db.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            yield cur
            cur.execute("COMMIT")
        except BaseException as e:
            self._rollback()
            if isinstance(e, sqlite3.Error):
                raise self._error(e) from e
            raise

    def _rollback(self) -> None:
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:  # the connection is past saving; the error raised says why
            pass

    def _error(self, e: sqlite3.Error) -> SinkError:
        code = getattr(e, "sqlite_errorcode", None)
        if (code is not None and code & 0xFF in BUSY_CODES) or "locked" in str(e):
            return SinkBusyError(f"{self.path}: the database is locked by another connection")
        return SinkError(f"{self.path}: cannot write: {e}")

    def last_recorded(self) -> dict[str, pd.Timestamp]:
        """``{symbol: newest bar_ts}`` over the whole table."""
        try:
            rows = self._db.execute(
                "SELECT symbol, MAX(bar_ts) FROM signals GROUP BY symbol"
            ).fetchall()
        except sqlite3.Error as e:
            raise SinkError(f"{self.path}: cannot read the last recorded bars: {e}") from e
        return {symbol: pd.Timestamp(ts) for symbol, ts in rows}

    def count(self) -> int:
        """Rows in the table."""
        return int(self._db.execute("SELECT COUNT(*) FROM signals").fetchone()[0])

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite when the last one closes)."""
        with suppress(sqlite3.Error):  # a failed final checkpoint: the WAL keeps the commits
            self._db.close()


class JsonlSink:
    """One JSON object per record and line on ``stream`` (default stdout), flushed per write.

    ``rejected``: a file that gets one JSON object per quarantined line (the columns of the
    ``rejected`` table), once each across restarts; without it, rejections are only logged.
    """

    def __init__(self, stream: TextIO | None = None, *, rejected: str | Path | None = None) -> None:
        self.stream = stream
        self.rejected = Path(rejected) if rejected is not None else None
        self._seen: set[tuple[str, int | None, str]] | None = None

    def write(self, records: Sequence[Record]) -> int:
        """Print the records; all count as added (this sink cannot tell duplicates)."""
        out = self.stream or sys.stdout
        try:
            for r in records:
                out.write(to_json(r.to_dict()) + "\n")
            out.flush()
        except OSError as e:
            raise SinkError(f"cannot write JSON lines: {e}") from e
        return len(records)

    def reject(self, rejections: Sequence[Rejection]) -> list[Rejection]:
        """Append the rejections not in the ``rejected`` file yet; returns them."""
        if self.rejected is None:
            return list(rejections)
        seen = self._keys()
        new = [r for r in rejections if r.key() not in seen]
        if not new:
            return []
        stamp = utc_now()
        lines = "".join(
            to_json(dict(zip(REJECTED_COLUMNS, rejection_row(r, stamp), strict=True))) + "\n"
            for r in new
        )
        try:
            with self.rejected.open("a", encoding="utf-8") as f:
                f.write(lines)
        except OSError as e:
            raise SinkError(f"{self.rejected}: cannot write: {e.strerror or e}") from e
        seen.update(r.key() for r in new)
        return new

    def _keys(self) -> set[tuple[str, int | None, str]]:
        if self._seen is None:
            self._seen = set()
            if self.rejected is not None and self.rejected.exists():
                for line in self.rejected.read_text(encoding="utf-8").splitlines():
                    try:
                        doc = json.loads(line)
                        self._seen.add((doc["source"], doc["line"], doc["raw"]))
                    except (ValueError, KeyError, TypeError):
                        continue  # a torn last line: its rejection is written again
        return self._seen

    def last_recorded(self) -> dict[str, pd.Timestamp]:
        """Nothing: JSON lines keep no state to resume from."""
        return {}

    def close(self) -> None:
        """Flush the stream."""
        with suppress(OSError):
            (self.stream or sys.stdout).flush()


class TeeSink:
    """Writes to several sinks; the first one is the record of truth (its count, its resume)."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        if not sinks:
            raise ConfigError("TeeSink needs at least one sink")
        self.sinks = tuple(sinks)

    def write(self, records: Sequence[Record]) -> int:
        """Write to the first sink, then (only if it succeeded) to the others."""
        added = self.sinks[0].write(records)
        for sink in self.sinks[1:]:
            sink.write(records)
        return added

    def reject(self, rejections: Sequence[Rejection]) -> list[Rejection]:
        """Quarantine in the first sink; the others get only what was new there."""
        new = self.sinks[0].reject(rejections)
        for sink in self.sinks[1:]:
            if new:
                sink.reject(new)
        return new

    def last_recorded(self) -> dict[str, pd.Timestamp]:
        """The first sink's resume point."""
        return self.sinks[0].last_recorded()

    def close(self) -> None:
        """Close every sink."""
        for sink in self.sinks:
            sink.close()
