"""The live sinks: SQLite idempotence, durability across SIGKILL, resume query, JSON lines."""

from __future__ import annotations

import io
import json
import math
import os
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from mlsignal.errors import ConfigError
from mlsignal.live.rows import Rejection
from mlsignal.live.sink import (
    COLUMNS,
    REJECTED_COLUMNS,
    JsonlSink,
    Record,
    SinkBusyError,
    SqliteSink,
    TeeSink,
    to_json,
)


def _record(symbol: str, day: int, source: str = "local", **info) -> Record:
    ts = pd.Timestamp("2024-01-01") + pd.Timedelta(days=day)
    ml_info = {
        "bull_prob": 0.6,
        "regime": "normal",
        "regime_vol": 0.01,
        "kelly": 0.1,
        "source": source,
        "latency_ms": 1.5,
        "model_version": "v1",
        "bar_ts": ts.isoformat(),
        "fallback_reason": None,
        **info,
    }
    return Record(symbol, ts, 100.0 + day, 20.0, 70.0, 18.0, 75.0, ml_info)


def test_rows_are_idempotent_on_symbol_and_bar_time(tmp_path):
    sink = SqliteSink(tmp_path / "s.db")
    assert sink.write([_record("A", 0), _record("A", 1), _record("B", 0)]) == 3
    # The same bars again, one with a different answer: the first write wins.
    again = [_record("A", 1, source="remote"), _record("B", 0), _record("B", 1)]
    assert sink.write(again) == 1
    assert sink.count() == 4
    db = sqlite3.connect(tmp_path / "s.db")
    (source,) = db.execute("SELECT source FROM signals WHERE symbol='A' AND bar_ts LIKE '%01-02%'")
    assert source == ("local",)
    sink.close()


def test_every_column_and_the_whole_ml_info_are_stored(tmp_path):
    sink = SqliteSink(tmp_path / "s.db")
    rec = _record("BTC/USDT", 3, source="fallback", fallback_reason="timeout", endpoint=None)
    rec.ml_info["p_lstm"] = np.float32(0.25)  # numpy scalars are stored as numbers
    sink.write([rec])
    db = sqlite3.connect(tmp_path / "s.db")
    db.row_factory = sqlite3.Row
    row = db.execute("SELECT * FROM signals").fetchone()
    assert tuple(row.keys()) == COLUMNS
    assert row["symbol"] == "BTC/USDT" and row["bar_ts"] == "2024-01-04T00:00:00"
    assert (row["ss"], row["bs"], row["enhanced_ss"], row["enhanced_bs"]) == (20, 70, 18, 75)
    assert row["source"] == "fallback" and row["fallback_reason"] == "timeout"
    assert row["bull_prob"] == 0.6 and row["regime"] == "normal" and row["kelly"] == 0.1
    assert row["latency_ms"] == 1.5 and row["close"] == 103.0
    info = json.loads(row["ml_info"])
    assert info["p_lstm"] == 0.25 and info["bar_ts"] == "2024-01-04T00:00:00"
    assert row["recorded_at"].endswith("Z")


def test_wal_and_full_synchronous_are_on(tmp_path):
    sink = SqliteSink(tmp_path / "s.db")
    assert sink._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert sink._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    normal = SqliteSink(tmp_path / "n.db", synchronous="normal")
    assert normal._db.execute("PRAGMA synchronous").fetchone()[0] == 1
    with pytest.raises(ConfigError, match="synchronous"):
        SqliteSink(tmp_path / "x.db", synchronous="off")


def test_last_recorded_per_symbol_is_the_newest_bar(tmp_path):
    sink = SqliteSink(tmp_path / "s.db")
    assert sink.last_recorded() == {}
    sink.write([_record("A", 5), _record("A", 2), _record("B", 12), _record("A", 11)])
    assert sink.last_recorded() == {
        "A": pd.Timestamp("2024-01-12"),
        "B": pd.Timestamp("2024-01-13"),
    }
    # Sub-second bar times still sort in time order as stored text.
    t = pd.Timestamp("2024-03-01 10:00:00")
    recs = [
        Record("C", t + pd.Timedelta(milliseconds=ms), 1, 1, 1, 1, 1, {"source": "local"})
        for ms in (0, 500, 1000, 1500)
    ]
    sink.write(recs)
    assert sink.last_recorded()["C"] == t + pd.Timedelta(milliseconds=1500)


def test_a_bad_database_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match=r"bad\.db: cannot open the signals database"):
        SqliteSink(bad)


def test_to_json_is_strict_json():
    text = to_json({"a": math.nan, "b": [np.float64(1.5), math.inf], "c": pd.Timestamp(0)})
    assert json.loads(text) == {"a": None, "b": [1.5, None], "c": "1970-01-01 00:00:00"}


def test_jsonl_sink_prints_one_object_per_line_and_tee_mirrors(tmp_path):
    out = io.StringIO()
    sink = JsonlSink(out)
    assert sink.write([_record("A", 0), _record("B", 0)]) == 2
    lines = out.getvalue().splitlines()
    assert [json.loads(x)["symbol"] for x in lines] == ["A", "B"]
    assert json.loads(lines[0])["ml_info"]["source"] == "local"
    assert sink.last_recorded() == {}

    out2 = io.StringIO()
    tee = TeeSink([SqliteSink(tmp_path / "t.db"), JsonlSink(out2)])
    assert tee.write([_record("A", 0)]) == 1
    assert tee.write([_record("A", 0)]) == 0  # the database's count
    assert tee.last_recorded() == {"A": pd.Timestamp("2024-01-01")}
    assert len(out2.getvalue().splitlines()) == 2
    tee.close()


WRITER = textwrap.dedent(
    """
    import sys
    import pandas as pd
    from mlsignal.live.sink import Record, SqliteSink

    sink = SqliteSink(sys.argv[1])
    t0 = pd.Timestamp("2020-01-01")
    for i in range(100000):
        ts = t0 + pd.Timedelta(minutes=i)
        recs = [Record(s, ts, 1.0, 1.0, 2.0, 1.0, 2.0, {"source": "local", "i": i}) for s in "AB"]
        sink.write(recs)
        print(i, flush=True)  # acknowledged: printed only after the commit returned
    """
)


def test_acknowledged_rows_survive_sigkill(tmp_path):
    db = tmp_path / "crash.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True, env=env
    )
    acked = -1
    try:
        for line in proc.stdout:
            acked = int(line)
            if acked >= 300:
                break
        proc.kill()  # SIGKILL mid-stream: no cleanup, no final checkpoint
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -9 and acked >= 300
    rows = sqlite3.connect(db).execute("SELECT symbol, ml_info FROM signals").fetchall()
    indexes = {(s, json.loads(info)["i"]) for s, info in rows}
    for i in range(acked + 1):  # every acknowledged bar of both symbols is there
        assert ("A", i) in indexes and ("B", i) in indexes, i
    # Groups are atomic: each bar time has both symbols or neither.
    assert len(rows) % 2 == 0
    sink = SqliteSink(db)  # the database opens cleanly and resumes after the newest bar
    last = sink.last_recorded()
    assert last["A"] == last["B"] >= pd.Timestamp("2020-01-01") + pd.Timedelta(minutes=acked)


def test_rejections_are_quarantined_once_each_across_connections(tmp_path):
    db = tmp_path / "q.db"
    sink = SqliteSink(db)
    line = Rejection("/data/spx.csv", 263, "2012-12-19,abc,1,1,1,1", "open 'abc' is not a number")
    bar = Rejection("BTC/USDT", None, "2024-01-05T00:00:00,1.0,0.5,0.9,1.0,3.0", "high", "BTC/USDT")
    assert sink.reject([line, bar]) == [line, bar]
    sink.close()
    again = SqliteSink(db)  # a restart meets the same line and the same bar again
    other = Rejection("/data/spx.csv", 264, "x,y", "2 fields where the header has 6")
    assert again.reject([line, bar, other]) == [other]
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    rows = con.execute("SELECT * FROM rejected ORDER BY rowid").fetchall()
    assert tuple(rows[0].keys()) == REJECTED_COLUMNS
    assert [(r["source"], r["line"], r["reason"]) for r in rows] == [
        ("/data/spx.csv", 263, "open 'abc' is not a number"),
        ("BTC/USDT", None, "high"),
        ("/data/spx.csv", 264, "2 fields where the header has 6"),
    ]
    assert rows[0]["raw"] == "2012-12-19,abc,1,1,1,1" and rows[0]["rejected_at"].endswith("Z")


def test_a_write_lock_held_elsewhere_is_a_busy_error_and_nothing_is_written(tmp_path):
    db = tmp_path / "b.db"
    sink = SqliteSink(db, busy_timeout_ms=50)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(SinkBusyError, match=r"b\.db: the database is locked by another"):
        sink.write([_record("A", 0)])
    with pytest.raises(SinkBusyError):
        sink.reject([Rejection("f", 2, "x", "bad")])
    other.execute("ROLLBACK")
    assert sink.write([_record("A", 0)]) == 1 and sink.count() == 1


def test_jsonl_rejections_go_to_their_own_file_once(tmp_path):
    path = tmp_path / "live.rejected.jsonl"
    r1, r2 = Rejection("/f.csv", 3, "a,b", "why"), Rejection("S", None, "c", "why", "S")
    assert JsonlSink(io.StringIO(), rejected=path).reject([r1]) == [r1]
    assert JsonlSink(io.StringIO(), rejected=path).reject([r1, r2]) == [r2]  # a restart
    docs = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(d["source"], d["line"], d["raw"], d["symbol"]) for d in docs] == [
        ("/f.csv", 3, "a,b", None),
        ("S", None, "c", "S"),
    ]
    assert JsonlSink(io.StringIO()).reject([r1]) == [r1]  # no file: only logged
