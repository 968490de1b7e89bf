"""``mlsignal live`` end to end: thousands of bars, a server killed and restarted, the runner
itself SIGKILLed and restarted. Afterwards every bar with history is recorded exactly once,
and each row's source matches what was up when it was recorded.

Three symbols on one daily calendar, all real prices: the S&P 500 and NASDAQ samples over the
same dates, and an older S&P 500 stretch stamped with those dates. The runner is a real
``mlsignal live`` subprocess with a real ``mlsignal serve`` on loopback; the test steers by
polling the runner's SQLite database (WAL: readers never block the writer).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pandas as pd
import pytest

from mlsignal.data import load_sample
from server_process import free_port

pytestmark = pytest.mark.slow

MIN_BARS = 256  # the tiny bundle's min_bars (checked below)
N_NEW = 700  # bars per symbol with enough history: 2100 rows in all
PACE_S = "0.01"  # per bar time: >= 7 s in all, so the test can act between bars


@pytest.fixture(scope="module")
def bar_files(tmp_path_factory) -> tuple[list[Path], dict[str, pd.DatetimeIndex]]:
    spx, ndx = load_sample("sp500"), load_sample("nasdaq")
    n = MIN_BARS - 1 + N_NEW
    a, b = spx.iloc[-n:], ndx.loc[spx.index[-n:]]
    c = spx.iloc[1000 : 1000 + n].set_axis(a.index)  # older real prices, same calendar
    out = tmp_path_factory.mktemp("live-bars")
    paths = []
    for name, frame in (("spx", a), ("ndx", b), ("spx_old", c)):
        frame.to_csv(out / f"{name}.csv")
        paths.append(out / f"{name}.csv")
    expected = {
        name: frame.index[MIN_BARS - 1 :]
        for name, frame in zip(("spx", "ndx", "spx_old"), (a, b, c), strict=True)
    }
    return paths, expected


def _now(offset_s: float = 0.0) -> str:
    """The current UTC time (plus ``offset_s``) as the sink writes recorded_at."""
    t = time.time() + offset_s
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e3):03d}Z"


def _count(db: Path, where: str = "1") -> int:
    if not db.exists():
        return 0
    with closing(sqlite3.connect(db, timeout=10)) as con:
        try:
            return con.execute(f"SELECT COUNT(*) FROM signals WHERE {where}").fetchone()[0]
        except sqlite3.OperationalError:  # table not created yet
            return 0


def _wait(cond, what: str, proc: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if proc.poll() is not None:
            pytest.fail(
                f"runner exited {proc.returncode} before {what}:\n{log.read_text()[-4000:]}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)


def test_live_survives_server_and_runner_kills(tiny_bundle, server_class, bar_files, tmp_path):
    from mlsignal.bundle import load_bundle

    assert load_bundle(tiny_bundle).min_bars == MIN_BARS
    paths, expected = bar_files
    total = sum(len(ix) for ix in expected.values())
    db = tmp_path / "signals.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    servers = []

    def start_server():
        server = server_class(tiny_bundle, "--device", "cpu", port=port, log_dir=tmp_path)
        servers.append(server)
        return server.start()

    cmd = [
        sys.executable, "-m", "mlsignal.cli.main", "--log-level", "INFO", "live",
        "--bundle", str(tiny_bundle), "--source", "replay:" + ",".join(map(str, paths)),
        "--remote", url, "--timeout", "10", "--device", "cpu", "--db", str(db),
        "--pace", PACE_S,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("GPU_INFERENCE_API_URL", None)
    logs = [tmp_path / "runner1.log", tmp_path / "runner2.log"]
    runner = None
    try:
        start_server()
        with logs[0].open("wb") as out:
            runner = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        # 1. Remote while the server is up; then the server is killed.
        _wait(lambda: _count(db) >= 300, "300 rows", runner, logs[0])
        t_kill = _now()
        servers[0].kill()
        t_down = _now(1.0)  # an answer received just before the kill may be written after it
        at_kill = _count(db)
        # 2. Local fallback while it is down; then it comes back on the same port. The runner
        # is paused meanwhile (SIGSTOP) so that it cannot run out of bars on a fast machine.
        _wait(lambda: _count(db) >= at_kill + 300, "300 fallback rows", runner, logs[0])
        runner.send_signal(signal.SIGSTOP)
        t_restart = _now()
        try:
            start_server()
        finally:
            runner.send_signal(signal.SIGCONT)
        t_up = _now()
        _wait(lambda: _count(db, f"source='remote' AND recorded_at > '{t_up}'") >= 30,
              "remote rows after the restart", runner, logs[0])  # fmt: skip
        # 3. The runner itself is SIGKILLed mid-run, then started again to the end.
        assert _count(db) < total - 150, "the runner finished too early to be killed"
        runner.kill()
        runner.wait(timeout=30)
        t_runner2 = _now()
        with logs[1].open("wb") as out:
            second = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=300)
        assert second.returncode == 0, logs[1].read_text()[-4000:]
    finally:
        if runner is not None and runner.poll() is None:
            runner.kill()
        for server in servers:
            server.close()

    con = sqlite3.connect(db)
    rows = pd.read_sql_query(
        "SELECT symbol, bar_ts, source, fallback_reason, recorded_at FROM signals", con
    )
    # Every bar with enough history exactly once: no gap, no duplicate, nothing extra.
    assert len(rows) == total
    for symbol, index in expected.items():
        got = rows.loc[rows.symbol == symbol, "bar_ts"].sort_values().tolist()
        assert got == [ts.isoformat() for ts in index], symbol
    # Sources: remote before the kill, local fallback while down, remote again after.
    before = rows[rows.recorded_at < t_kill]
    down = rows[(rows.recorded_at > t_down) & (rows.recorded_at < t_restart)]
    after = rows[rows.recorded_at > t_runner2]
    assert len(before) >= 300 and set(before.source) == {"remote"}
    assert len(down) >= 100 and set(down.source) == {"fallback"}
    assert down.fallback_reason.notna().all()
    assert len(after) > 0 and set(after.source) == {"remote"}
    assert set(rows.source) <= {"remote", "fallback"}  # never a bar without a model answer
    assert "resuming after" in logs[1].read_text()


def test_sigterm_stops_a_follow_run_cleanly(tiny_bundle, bar_files, tmp_path):
    paths, _ = bar_files
    lines = paths[0].read_text().splitlines(keepends=True)
    src, db = tmp_path / "spx.csv", tmp_path / "f.db"
    src.write_text("".join(lines[: 1 + MIN_BARS + 4]))  # 5 bars with history
    cmd = [
        sys.executable, "-m", "mlsignal.cli.main", "live", "--bundle", str(tiny_bundle),
        "--source", f"follow:{src}", "--poll", "0.05", "--device", "cpu", "--db", str(db),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _count(db) < 5 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert _count(db) == 5
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "SIGTERM: finishing the current bar" in err and "spx: 5 bars recorded" in err
    assert not Path(f"{db}-wal").exists()  # the last connection closed: WAL checkpointed
