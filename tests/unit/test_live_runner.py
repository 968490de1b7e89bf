"""``LiveRunner`` with the real tiny bundle: what is recorded, restarts, score hooks, deadline."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing

import pandas as pd
import pytest

from mlsignal.enhancer import MLSignalEnhancer
from mlsignal.errors import ConfigError
from mlsignal.live import LiveRunner, ReplayFeed, SinkError, SqliteSink, load_hook
from mlsignal.live.follow import FollowFeed
from mlsignal.rules import last_rule_scores

N_NEW = 12  # bars per symbol with enough history


@pytest.fixture(scope="module")
def local(tiny_bundle):
    return MLSignalEnhancer(tiny_bundle, device="cpu")


@pytest.fixture(scope="module")
def data(local):
    from mlsignal.data import load_sample

    n = local.min_bars - 1 + N_NEW
    return {"spx": load_sample("sp500").iloc[-n:], "ndx": load_sample("nasdaq").iloc[-n - 3 :]}


def _rows(db) -> list[sqlite3.Row]:
    with closing(sqlite3.connect(db)) as con:
        con.row_factory = sqlite3.Row
        return con.execute("SELECT * FROM signals ORDER BY symbol, bar_ts").fetchall()


def test_every_bar_with_history_is_recorded_once_with_the_enhancers_answer(local, data, tmp_path):
    runner = LiveRunner(local, ReplayFeed(data), SqliteSink(tmp_path / "a.db"))
    summary = runner.run()
    assert dict(summary.recorded) == {"spx": N_NEW, "ndx": N_NEW + 3}
    assert dict(summary.warmup) == {"spx": local.min_bars - 1, "ndx": local.min_bars - 1}
    assert dict(summary.sources) == {"local": 2 * N_NEW + 3}
    rows = _rows(tmp_path / "a.db")
    assert len(rows) == 2 * N_NEW + 3
    spx = [r for r in rows if r["symbol"] == "spx"]
    expected_ts = [ts.isoformat() for ts in data["spx"].index[local.min_bars - 1 :]]
    assert [r["bar_ts"] for r in spx] == expected_ts
    # The recorded numbers are what enhance_signal gives on the same window, bit for bit.
    for row in (spx[0], spx[-1]):
        end = data["spx"].index.get_loc(pd.Timestamp(row["bar_ts"])) + 1
        window = data["spx"].iloc[end - local.min_bars : end]
        ss, bs = last_rule_scores(window)
        ess, ebs, info = local.enhance_signal(window, ss, bs)
        assert (row["ss"], row["bs"], row["enhanced_ss"], row["enhanced_bs"]) == (ss, bs, ess, ebs)
        assert row["bull_prob"] == info["bull_prob"] and row["source"] == "local"
        assert row["close"] == window["close"].iloc[-1]


def test_a_stopped_run_resumes_at_the_first_unrecorded_bar(local, data, tmp_path):
    calls = []

    def stop_after_seven(symbol, bars):  # a score hook that stops the run mid-way
        calls.append(symbol)
        if len(calls) == 7:
            runner.stop()
        return last_rule_scores(bars)

    db = tmp_path / "r.db"
    runner = LiveRunner(local, ReplayFeed(data), SqliteSink(db), scores=stop_after_seven)
    first = runner.run()
    assert 7 <= first.total < 2 * N_NEW + 3  # the group in progress was finished
    second = LiveRunner(local, ReplayFeed(data), SqliteSink(db)).run()
    assert first.total + second.total == 2 * N_NEW + 3
    assert second.duplicates == 0 and second.already_recorded > 0
    resumed = _rows(db)
    one_shot = tmp_path / "one.db"
    LiveRunner(local, ReplayFeed(data), SqliteSink(one_shot)).run()
    keys = ("symbol", "bar_ts", "ss", "bs", "enhanced_ss", "enhanced_bs", "bull_prob", "kelly")
    assert [tuple(r[k] for k in keys) for r in resumed] == [
        tuple(r[k] for k in keys) for r in _rows(one_shot)
    ]


def test_score_hook_gets_the_history_and_its_scores_are_enhanced(local, data, tmp_path):
    seen = []

    def hook(symbol, bars):
        seen.append((symbol, len(bars), bars.index[-1]))
        return (10.0, 80.0) if symbol == "spx" else (60.0, 5.0)

    runner = LiveRunner(
        local, ReplayFeed(data), SqliteSink(tmp_path / "h.db"), scores=hook, history_bars=300
    )
    runner.run()
    rows = _rows(tmp_path / "h.db")
    assert {(r["symbol"], r["ss"], r["bs"]) for r in rows} == {("spx", 10, 80), ("ndx", 60, 5)}
    assert len(seen) == len(rows)
    for symbol, n, ts in seen:  # all the history there is, up to history_bars
        assert n == min(300, data[symbol].index.get_loc(ts) + 1)
    assert {ts for _, _, ts in seen} == set(data["ndx"].index[local.min_bars - 1 :])
    row = rows[-1]
    bars = data[row["symbol"]].iloc[-local.min_bars :]
    ess, ebs, _ = local.enhance_signal(bars, row["ss"], row["bs"])
    assert (row["enhanced_ss"], row["enhanced_bs"]) == (ess, ebs)


def test_score_hooks_by_name_from_a_module_or_a_file(tmp_path, monkeypatch):
    code = "def scores(symbol, bars):\n    return 25.0, float(len(bars) % 100)\n"
    (tmp_path / "my_scores.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    by_module = load_hook("my_scores:scores")
    by_file = load_hook(f"{tmp_path / 'my_scores.py'}:scores")
    bars = pd.DataFrame({"close": range(256)})
    assert by_module("X", bars) == by_file("X", bars) == (25.0, 56.0)
    with pytest.raises(ConfigError, match="has no function 'nope'"):
        load_hook("my_scores:nope")
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_xyz'"):
        load_hook("no_such_module_xyz:f")
    with pytest.raises(ConfigError, match="expected module:function"):
        load_hook("my_scores")


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (ZeroDivisionError("boom"), "raised ZeroDivisionError: boom"),
        ((50.0, 101.0), r"must return \(ss, bs\) in 0..100"),
        ("oops", r"must return \(ss, bs\)"),
    ],
)
def test_a_failing_score_hook_stops_the_run_and_the_bar_is_retried(
    local, data, tmp_path, answer, message
):
    def hook(symbol, bars):
        if symbol == "ndx" and bars.index[-1] == data["ndx"].index[-2]:
            if isinstance(answer, Exception):
                raise answer
            return answer
        return last_rule_scores(bars)

    db = tmp_path / "f.db"
    bad_bar = data["ndx"].index[-2]
    with pytest.raises(ConfigError, match=f"on ndx bar {bad_bar}.*{message}"):
        LiveRunner(local, ReplayFeed(data), SqliteSink(db), scores=hook).run()
    last = SqliteSink(db).last_recorded()
    assert last["ndx"] < bad_bar  # that bar's group was not recorded
    LiveRunner(local, ReplayFeed(data), SqliteSink(db)).run()
    assert len(_rows(db)) == 2 * N_NEW + 3


def test_the_deadline_records_the_rules_fallback_and_a_late_answer_is_discarded(
    tiny_bundle, server_factory, data, tmp_path
):
    server = server_factory(tiny_bundle, "--device", "cpu").start()
    enhancer = MLSignalEnhancer(
        tiny_bundle, remote_urls=[server.url], timeout_s=60.0, local_fallback="off"
    )
    spx = {"spx": data["spx"].iloc[: enhancer.min_bars - 1 + 6]}  # 6 bars to record
    state = []

    def pace(stop, seconds):  # called before each bar: the server hangs for bars 1..3
        if sum(runner.summary.warmup.values()) < enhancer.min_bars - 1:
            return
        if runner.summary.total == 0 and "paused" not in state:
            server.pause()
            state.append("paused")
        if runner.summary.total == 3 and "resumed" not in state:
            server.resume()  # bar 1's call, still waiting on the server, now answers late
            state.append("resumed")
            deadline = time.monotonic() + 30
            while runner.summary.late_answers < 1 and time.monotonic() < deadline:
                time.sleep(0.05)

    feed = ReplayFeed(spx, pace_s=0.01, sleep=pace)
    # 4 s: a hung server never answers in time, a running one (under 1 s on a loaded box) does.
    runner = LiveRunner(enhancer, feed, SqliteSink(tmp_path / "d.db"), bar_deadline_ms=4000)
    try:
        summary = runner.run()
    finally:
        server.resume()
        enhancer.close()
    rows = [r for r in _rows(tmp_path / "d.db") if r["bar_ts"] >= spx["spx"].index[-6].isoformat()]
    assert len(rows) == 6 == summary.total
    late, on_time = rows[:3], rows[3:]
    for r in late:
        assert r["source"] == "rules" and r["fallback_reason"].startswith("deadline: no answer")
        assert (r["enhanced_ss"], r["enhanced_bs"]) == (r["ss"], r["bs"])
        assert r["bull_prob"] == enhancer.bundle.fusion.centre  # no information
        assert r["kelly"] == 0.0 and r["regime"] in {"low", "normal", "high"}
    assert "still busy with an earlier late call" in late[1]["fallback_reason"]
    assert [r["source"] for r in on_time] == ["remote"] * 3, [
        (r["fallback_reason"], r["recorded_at"]) for r in rows
    ]
    assert summary.deadline_misses == 3 and summary.late_answers == 1


def test_a_followed_file_is_recorded_bar_by_bar_as_lines_complete(local, data, tmp_path):
    frame = data["spx"]
    lines = frame.to_csv().splitlines(keepends=True)  # header, then one line per bar
    path, db = tmp_path / "spx.csv", tmp_path / "f.db"
    path.write_text("".join(lines[: 1 + local.min_bars]))  # exactly one bar with history
    runner = LiveRunner(local, FollowFeed([path], poll_s=0.02), SqliteSink(db))
    thread = threading.Thread(target=runner.run)
    thread.start()

    def wait_rows(n):
        deadline = time.monotonic() + 60
        while len(_rows(db)) < n and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.02)
        return len(_rows(db))

    try:
        assert wait_rows(1) == 1
        nxt, partial = lines[1 + local.min_bars], lines[2 + local.min_bars]
        with path.open("a") as f:
            f.write(nxt + partial[:12])
        assert wait_rows(2) == 2
        time.sleep(0.3)
        assert len(_rows(db)) == 2  # the half-written line is not a bar
        with path.open("a") as f:
            f.write(partial[12:])
        assert wait_rows(3) == 3
    finally:
        runner.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()
    expected = [ts.isoformat() for ts in frame.index[local.min_bars - 1 : local.min_bars + 2]]
    assert [r["bar_ts"] for r in _rows(db)] == expected


def test_a_bad_bar_is_rejected_and_the_next_good_bar_goes_on(local, data, tmp_path):
    spx = data["spx"].copy()
    bad_ts = spx.index[-5]
    spx.loc[bad_ts, "high"] = spx.loc[bad_ts, "low"] / 2  # high below low: not a bar
    runner = LiveRunner(local, ReplayFeed({"spx": spx}), SqliteSink(tmp_path / "b.db"))
    summary = runner.run()
    assert summary.rejected == 1 and summary.errors == 0
    assert summary.total == N_NEW - 1
    rows = _rows(tmp_path / "b.db")
    assert bad_ts.isoformat() not in {r["bar_ts"] for r in rows}
    # the bar after it is scored on the good bars before it (the bad one never entered)
    row = rows[-4]
    assert row["bar_ts"] == spx.index[-4].isoformat()
    bars = spx.drop(index=bad_ts).loc[: spx.index[-4]].iloc[-local.min_bars :]
    ess, ebs, info = local.enhance_signal(bars, row["ss"], row["bs"])
    assert (row["enhanced_ss"], row["enhanced_bs"], row["bull_prob"]) == (
        ess, ebs, info["bull_prob"]
    )  # fmt: skip
    # ... and it is in quarantine with its reason, once, even after a second run.
    LiveRunner(local, ReplayFeed({"spx": spx}), SqliteSink(tmp_path / "b.db")).run()
    with closing(sqlite3.connect(tmp_path / "b.db")) as con:
        (row,) = con.execute("SELECT source, line, symbol, raw, reason FROM rejected").fetchall()
    o, h, lo, c, v = spx.loc[bad_ts]
    assert row[:4] == ("spx", None, "spx", f"{bad_ts.isoformat()},{o!r},{h!r},{lo!r},{c!r},{v!r}")
    assert row[4].startswith(f"high {h!r} is below ")


def test_a_database_locked_past_the_busy_timeout_costs_no_bar(local, data, tmp_path):
    db = tmp_path / "busy.db"
    sink = SqliteSink(db, busy_timeout_ms=100)  # SQLite's own wait: shorter than the lock
    other = sqlite3.connect(db, isolation_level=None)
    lock: dict[str, float] = {}

    def pace(stop, seconds):  # between bar groups: lock after 3 rows, release 1.2 s later
        if runner.summary.total >= 3 and "at" not in lock:
            other.execute("BEGIN EXCLUSIVE")
            lock["at"] = time.monotonic()
        elif "at" in lock and "free" not in lock and time.monotonic() - lock["at"] > 1.2:
            other.execute("ROLLBACK")
            lock["free"], lock["rows"] = time.monotonic(), runner.summary.total

    feed = ReplayFeed({"spx": data["spx"]}, pace_s=0.001, sleep=pace)
    runner = LiveRunner(local, feed, sink, bar_deadline_ms=200)
    summary = runner.run()
    assert "free" in lock and lock["rows"] < N_NEW  # bars went on while it was locked
    rows = _rows(db)
    expected = [ts.isoformat() for ts in data["spx"].index[local.min_bars - 1 :]]
    assert [r["bar_ts"] for r in rows] == expected  # every bar, once
    stamps = [r["recorded_at"] for r in rows]
    assert stamps == sorted(stamps)  # committed in bar order
    assert summary.total == N_NEW and summary.duplicates == 0 and summary.queued >= 2


def test_a_lock_that_outlasts_the_run_ends_it_with_an_error_and_loses_nothing(
    local, data, tmp_path
):
    db = tmp_path / "held.db"
    spx = {"spx": data["spx"]}
    other = sqlite3.connect(db, isolation_level=None)
    SqliteSink(db).close()
    other.execute("BEGIN EXCLUSIVE")
    runner = LiveRunner(
        local, ReplayFeed(spx), SqliteSink(db, busy_timeout_ms=20), bar_deadline_ms=50,
        drain_s=0.3,
    )  # fmt: skip
    first = spx["spx"].index[local.min_bars - 1]
    with pytest.raises(
        SinkError,
        match=rf"locked .* still locked after 0.3 s at the end of the "
        rf"run; {N_NEW} bars not recorded \(from spx {first}\); a restart resumes",
    ):
        runner.run()  # fmt: skip
    other.execute("ROLLBACK")
    assert _rows(db) == []
    LiveRunner(local, ReplayFeed(spx), SqliteSink(db)).run()
    assert len(_rows(db)) == N_NEW


def test_a_replay_reports_its_progress_as_it_goes(local, data, tmp_path):
    seen: list[str] = []
    runner = LiveRunner(
        local, ReplayFeed(data), SqliteSink(tmp_path / "p.db"),
        progress=lambda s: seen.append(s.progress_line()), progress_s=0.0,
    )  # fmt: skip
    summary = runner.run()
    assert len(seen) >= summary.total > 0
    assert seen[-1].startswith(f"{summary.total} bars recorded so far (")
    assert "rejected" in seen[-1]
