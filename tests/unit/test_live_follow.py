"""``FollowFeed``: growing CSV files, partial lines, truncation and rotation."""

from __future__ import annotations

import logging
import os
import threading

import pandas as pd
import pytest

from mlsignal.errors import ConfigError, DataError, TimestampError
from mlsignal.live.feeds import Resume
from mlsignal.live.follow import FollowFeed
from mlsignal.live.rows import Rejection

HEADER = "timestamp,open,high,low,close,volume\n"


def _line(day: int, close: float = 100.0, symbol: str | None = None) -> str:
    ts = (pd.Timestamp("2024-01-01") + pd.Timedelta(days=day)).date().isoformat()
    row = f"{ts},{close},{close + 1},{close - 1},{close},1000"
    return f"{symbol},{row}\n" if symbol else f"{row}\n"


def _append(path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def _days(bars) -> list[int]:
    return [(b.ts - pd.Timestamp("2024-01-01")).days for b in bars]


def test_reads_history_then_only_complete_new_lines(tmp_path):
    path = tmp_path / "btc.csv"
    path.write_text(HEADER + _line(0) + _line(1))
    feed = FollowFeed([path])
    first = feed.poll()
    assert _days(first) == [0, 1] and {b.symbol for b in first} == {"btc"}
    assert feed.poll() == []
    _append(path, _line(2) + _line(3)[:15])  # bar 3 is half written: no newline yet
    assert _days(feed.poll()) == [2]
    assert feed.poll() == []
    _append(path, _line(3)[15:])  # the rest of the line arrives
    (bar,) = feed.poll()
    assert _days([bar]) == [3] and bar.close == 100.0 and bar.high == 101.0


def test_a_header_without_its_newline_waits_too(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text(HEADER[:10])
    feed = FollowFeed([path])
    assert feed.poll() == []
    _append(path, HEADER[10:] + _line(0))
    assert _days(feed.poll()) == [0]


def test_symbol_column_and_symbol_filter(tmp_path):
    path = tmp_path / "many.csv"
    path.write_text("symbol," + HEADER + _line(0, symbol="A") + _line(0, symbol="B"))
    feed = FollowFeed([path], symbols=["B"])
    assert [(b.symbol, *_days([b])) for b in feed.poll()] == [("B", 0)]
    _append(path, _line(1, symbol="A") + _line(1, symbol="B"))
    assert [(b.symbol, *_days([b])) for b in feed.poll()] == [("B", 1)]


def test_truncation_is_logged_and_old_bars_are_not_repeated(tmp_path, caplog):
    path = tmp_path / "t.csv"
    path.write_text(HEADER + _line(0) + _line(1) + _line(2))
    feed = FollowFeed([path])
    assert _days(feed.poll()) == [0, 1, 2]
    path.write_text(HEADER + _line(2))  # rewritten in place, shorter: truncated
    with caplog.at_level(logging.WARNING, logger="mlsignal.live.follow"):
        assert feed.poll() == []
    assert "t.csv was truncated" in caplog.text and "2024-01-03" in caplog.text
    _append(path, _line(3))
    assert _days(feed.poll()) == [3]


def test_rotation_is_logged_and_the_new_file_followed(tmp_path, caplog):
    path = tmp_path / "r.csv"
    path.write_text(HEADER + _line(0) + _line(1))
    feed = FollowFeed([path])
    assert _days(feed.poll()) == [0, 1]
    os.rename(path, tmp_path / "r.csv.1")
    assert feed.poll() == []  # gone for a moment: waits
    path.write_text(HEADER + _line(1) + _line(2) + _line(3))  # the new file overlaps by one
    with caplog.at_level(logging.WARNING, logger="mlsignal.live.follow"):
        assert _days(feed.poll()) == [2, 3]
    assert "r.csv was replaced by a new file (rotated)" in caplog.text


def test_bad_lines_are_quarantined_with_their_line_numbers_and_the_rest_goes_on(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text(HEADER + _line(0) + _line(1))  # lines 1-3
    feed = FollowFeed([path])
    assert _days(feed.poll()) == [0, 1]
    _append(
        path,
        "2012-12-19,abc,1,1,1,1\n"  # 4: not a number
        + _line(2)  # 5
        + "x,y\n"  # 6: two fields
        + _line(1)  # 7: not after the previous bar
        + "2024-01-05,100,50,99,100,1\n"  # 8: high below open
        + _line(5),  # 9
    )
    got = feed.poll()
    bad = [x for x in got if isinstance(x, Rejection)]
    assert _days([x for x in got if not isinstance(x, Rejection)]) == [2, 5]
    assert [(r.line, r.raw) for r in bad] == [
        (4, "2012-12-19,abc,1,1,1,1"),
        (6, "x,y"),
        (7, _line(1).strip()),
        (8, "2024-01-05,100,50,99,100,1"),
    ]
    assert [r.reason for r in bad] == [
        "open 'abc' is not a number",
        "2 fields where the header has 6",
        "bar time 2024-01-02 00:00:00 is not after the previous bar 2024-01-03 00:00:00; "
        "bars must be newer",
        "high 50.0 is below open 100.0",
    ]
    assert {r.source for r in bad} == {str(path)} and {r.symbol for r in bad} == {"q"}
    _append(path, _line(6))  # line 10: the file goes on
    assert _days(feed.poll()) == [6]
    # A restart reads the whole file again: the same lines, the same numbers, no stop.
    again = FollowFeed([path]).poll()
    assert [(r.line, r.reason) for r in again if isinstance(r, Rejection)] == [
        (r.line, r.reason) for r in bad
    ]
    assert _days([x for x in again if not isinstance(x, Rejection)]) == [0, 1, 2, 5, 6]


def test_strict_stops_at_an_older_bar_naming_the_line(tmp_path):
    path = tmp_path / "o.csv"
    path.write_text(HEADER + _line(5))
    feed = FollowFeed([path], strict=True)
    feed.poll()
    _append(path, _line(4))
    with pytest.raises(TimestampError, match=r"o\.csv line 3: bar time 2024-01-05.*not after"):
        feed.poll()


def test_strict_stops_at_a_malformed_line_naming_the_file_and_line(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(HEADER + _line(0))
    feed = FollowFeed([path], strict=True)
    feed.poll()
    _append(path, "2024-01-02,abc,1,1,1,1\n")
    with pytest.raises(DataError, match=r"m\.csv line 3: open 'abc' is not a number$"):
        feed.poll()


def test_ticks_group_by_time_and_stop(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text(HEADER + "".join(_line(d) for d in range(10)))
    b.write_text(HEADER + "".join(_line(d) for d in range(5, 10)))
    stop = threading.Event()
    feed = FollowFeed([a, b], sleep=lambda ev, s: ev.set())  # first idle poll stops it
    ticks = list(feed.ticks(stop, Resume({"a": pd.Timestamp("2024-01-08")}, context_bars=1)))
    # a: 1 bar of context before the first new one (day 8); b: everything.
    assert [[b.symbol for b in t] for t in ticks] == [
        ["b"],
        ["b"],
        ["a", "b"],
        ["a", "b"],
        ["a", "b"],
    ]
    assert _days(ticks[2]) == [7, 7]


def test_bad_paths_are_refused(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        FollowFeed([tmp_path / "none.csv"])
    (tmp_path / "p.parquet").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"only plain \.csv"):
        FollowFeed([tmp_path / "p.parquet"])
