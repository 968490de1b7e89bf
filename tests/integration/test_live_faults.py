"""``mlsignal live`` under real faults, as real subprocesses: a garbage line appended to a
followed file, a bad row in a replayed file (with and without ``--strict``), a database
another connection keeps locked for longer than the old 10 s limit, and a database that
cannot be written (the file-size limit of the process: SQLite gets EFBIG, as on a full disk).

Afterwards every good bar is recorded exactly once and in order, every bad line is in table
``rejected`` once, and every failure is one line on stderr with its exit code, never a
traceback.
"""

from __future__ import annotations

import re
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

MIN_BARS = 256  # the tiny bundle's min_bars
GARBAGE = "2012-12-19,abc,1,1,1,1\n"  # the line of issue 13


def _cmd(bundle: Path, source: str, db: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "mlsignal.cli.main", "live", "--bundle", str(bundle),
        "--source", source, "--device", "cpu", "--db", str(db), *extra,
    ]  # fmt: skip


def _query(db: Path, sql: str) -> list[tuple]:
    if not db.exists():
        return []
    with closing(sqlite3.connect(db, timeout=30)) as con:
        try:
            return con.execute(sql).fetchall()
        except sqlite3.OperationalError:  # the tables are not there yet
            return []


def _bar_times(db: Path) -> list[str]:
    return [ts for (ts,) in _query(db, "SELECT bar_ts FROM signals ORDER BY recorded_at, bar_ts")]


def _wait(cond, what: str, proc: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"runner exited {proc.returncode} before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return err


def _csv_lines(sp500_bars, n_new: int) -> list[str]:
    """Header, then ``MIN_BARS - 1`` bars of warm-up and ``n_new`` bars to record."""
    return sp500_bars.iloc[-(MIN_BARS - 1 + n_new) :].to_csv().splitlines(keepends=True)


def test_a_garbage_line_in_a_followed_file_is_quarantined_and_a_restart_goes_on(
    tiny_bundle, sp500_bars, tmp_path
):
    lines = _csv_lines(sp500_bars, 4)
    src, db = tmp_path / "spx.csv", tmp_path / "f.db"
    src.write_text("".join(lines[: 1 + MIN_BARS]))  # lines 1..257: one bar with history
    cmd = _cmd(tiny_bundle, f"follow:{src}", db, "--poll", "0.05")
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: len(_bar_times(db)) == 1, "the first bar", proc)
        with src.open("a") as f:  # line 258 is garbage, then two good bars
            f.write(GARBAGE + lines[1 + MIN_BARS] + lines[2 + MIN_BARS])
        _wait(lambda: len(_bar_times(db)) == 3, "the bars after the garbage", proc)
        err = _stop(proc)
        # A restart reads the file again from its start, garbage included, and goes on.
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        with src.open("a") as f:
            f.write(lines[3 + MIN_BARS])
        _wait(lambda: len(_bar_times(db)) == 4, "a bar after the restart", proc)
        err2 = _stop(proc)
    finally:
        proc.kill()
    assert err.count(f"quarantined {src} line 258") == 1 and "Traceback" not in err
    assert "quarantined" not in err2 and "Traceback" not in err2  # known: not logged again
    expected = [line.split(",")[0] + "T00:00:00" for line in lines[-4:]]
    assert _bar_times(db) == expected  # every good bar once, in order
    assert _query(db, "SELECT source, line, symbol, raw, reason FROM rejected") == [
        (str(src), 258, "spx", GARBAGE.strip(), "open 'abc' is not a number")
    ]


def test_a_bad_row_in_a_replayed_file_is_quarantined_unless_strict(
    tiny_bundle, sp500_bars, tmp_path
):
    lines = _csv_lines(sp500_bars, 4)
    src = tmp_path / "spx.csv"
    src.write_text("".join([*lines[: 1 + MIN_BARS], GARBAGE, *lines[1 + MIN_BARS :]]))
    db = tmp_path / "r.db"
    for run in (1, 2):  # the second run resumes: nothing new, the row not recorded twice
        done = subprocess.run(_cmd(tiny_bundle, str(src), db), capture_output=True, text=True)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.count("quarantined") == (1 if run == 1 else 0), done.stderr
        assert len(_bar_times(db)) == 4
        assert _query(db, "SELECT line, raw FROM rejected") == [(258, GARBAGE.strip())]
    strict = subprocess.run(
        _cmd(tiny_bundle, str(src), tmp_path / "s.db", "--strict"), capture_output=True, text=True
    )
    assert strict.returncode == 2
    assert strict.stderr == f"mlsignal live: error: {src} line 258: open 'abc' is not a number\n"
    assert _bar_times(tmp_path / "s.db") == []


def test_a_database_locked_longer_than_the_old_limit_costs_no_bar(
    tiny_bundle, sp500_bars, tmp_path
):
    n_new = 30
    lines = _csv_lines(sp500_bars, n_new)
    src, db = tmp_path / "spx.csv", tmp_path / "busy.db"
    src.write_text("".join(lines))
    cmd = _cmd(tiny_bundle, str(src), db, "--bar-deadline-ms", "300", "--pace", "0.02")
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    other = None
    try:
        _wait(lambda: len(_bar_times(db)) >= 2, "two rows", proc)
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # every write of the runner now finds it locked
        locked_rows = len(_bar_times(db))
        time.sleep(11)  # longer than the 10 s after which today's runner died
        assert proc.poll() is None, proc.stderr.read()
        other.execute("ROLLBACK")
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        if other is not None:
            other.close()
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert err.count("the database is locked by another connection") == 1, err  # said once
    expected = [line.split(",")[0] + "T00:00:00" for line in lines[-n_new:]]
    assert _bar_times(db) == expected  # every bar once, committed in bar order
    assert locked_rows < n_new - 10  # most bars came while it was locked


def test_a_database_that_cannot_be_written_ends_the_run_with_exit_3_and_one_line(
    tiny_bundle, sp500_bars, tmp_path
):
    n_new = 30
    lines = _csv_lines(sp500_bars, n_new)
    src, db = tmp_path / "spx.csv", tmp_path / "full.db"
    src.write_text("".join(lines))
    cmd = _cmd(tiny_bundle, str(src), db, "--bar-deadline-ms", "300")

    def small_files() -> None:  # writes past 64 KB fail with EFBIG: SQLite's disk I/O error
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    full = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=small_files)
    assert full.returncode == 3 and "Traceback" not in full.stderr, full.stderr
    last = full.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"mlsignal live: error: {re.escape(str(db))}: cannot write: .+; "
        r"\d+ bars not recorded \(from spx \S+ \S+\); a restart resumes at them",
        last,
    ), last
    written = _bar_times(db)  # what it could write is there
    assert 0 < len(written) < n_new
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert _bar_times(db) == [line.split(",")[0] + "T00:00:00" for line in lines[-n_new:]]
