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

:class:`JsonlSink` writes each record as one JSON line to a stream (stdout). It keeps no
state, so it cannot tell a restart where to resume; use it beside SQLite for that.
"""

from __future__ import annotations

import json
import math
import sqlite3
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import pandas as pd

from mlsignal.errors import ConfigError

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


class Sink(Protocol):
    """Where records go. ``write`` returns how many were new (not already recorded)."""

    def write(self, records: Sequence[Record]) -> int:
        """Record ``records`` durably before returning; the number actually added."""
        ...

    def last_recorded(self) -> dict[str, pd.Timestamp]:
        """The newest recorded bar time per symbol (empty when the sink keeps no state)."""
        ...

    def close(self) -> None:
        """Flush and release."""
        ...


class SqliteSink:
    """SQLite table ``signals`` (see the module docstring for schema and guarantees).

    Args:
        path: the database file (created with its directory if missing).
        synchronous: ``"full"`` (default: survives a host crash) or ``"normal"``.
        busy_timeout_ms: how long a write waits for another connection's lock.
    """

    def __init__(
        self, path: str | Path, *, synchronous: str = "full", busy_timeout_ms: int = 10_000
    ) -> None:
        if synchronous not in SYNC_MODES:
            raise ConfigError(f"synchronous={synchronous!r}; choose one of {', '.join(SYNC_MODES)}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            self._db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            self._db.execute(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"{self.path}: cannot open the signals database: {e}") from e
        if str(mode).lower() != "wal":
            raise ConfigError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
        marks = ", ".join("?" for _ in COLUMNS)
        self._insert = f"INSERT OR IGNORE INTO signals ({', '.join(COLUMNS)}) VALUES ({marks})"

    def write(self, records: Sequence[Record]) -> int:
        """Insert ``records`` in one transaction; returns after the commit (rows added)."""
        if not records:
            return 0
        stamp = utc_now()
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            added = 0
            for r in records:
                cur.execute(self._insert, r.row(stamp))
                added += cur.rowcount
            cur.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        return added

    def last_recorded(self) -> dict[str, pd.Timestamp]:
        """``{symbol: newest bar_ts}`` over the whole table."""
        rows = self._db.execute("SELECT symbol, MAX(bar_ts) FROM signals GROUP BY symbol")
        return {symbol: pd.Timestamp(ts) for symbol, ts in rows}

    def count(self) -> int:
        """Rows in the table."""
        return int(self._db.execute("SELECT COUNT(*) FROM signals").fetchone()[0])

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite when the last one closes)."""
        self._db.close()


class JsonlSink:
    """One JSON object per record and line on ``stream`` (default stdout), flushed per write."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def write(self, records: Sequence[Record]) -> int:
        """Print the records; all count as added (this sink cannot tell duplicates)."""
        out = self.stream or sys.stdout
        for r in records:
            out.write(to_json(r.to_dict()) + "\n")
        out.flush()
        return len(records)

    def last_recorded(self) -> dict[str, pd.Timestamp]:
        """Nothing: JSON lines keep no state to resume from."""
        return {}

    def close(self) -> None:
        """Flush the stream."""
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

    def last_recorded(self) -> dict[str, pd.Timestamp]:
        """The first sink's resume point."""
        return self.sinks[0].last_recorded()

    def close(self) -> None:
        """Close every sink."""
        for sink in self.sinks:
            sink.close()
