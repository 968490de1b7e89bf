"""Replay feed, bar-file loading and ``--source`` parsing."""

from __future__ import annotations

import importlib.util
import threading

import pandas as pd
import pytest

from mlsignal.errors import ConfigError, DataError, PriceError
from mlsignal.live.feeds import ReplayFeed, Resume, load_bars_files
from mlsignal.live.sources import make_feed, parse_source


@pytest.fixture(scope="module")
def spx(sp500_bars):
    return sp500_bars.iloc[-40:]


def _ticks(feed, resume=None):
    return list(feed.ticks(threading.Event(), resume or Resume()))


def test_one_file_per_symbol_csv_and_parquet(tmp_path, spx):
    spx.to_csv(tmp_path / "spx.csv")
    spx.iloc[:30].to_parquet(tmp_path / "short.parquet")
    data = load_bars_files([str(tmp_path / "spx.csv"), str(tmp_path / "short.parquet")])
    assert list(data) == ["spx", "short"]
    pd.testing.assert_frame_equal(data["spx"], spx, check_freq=False)
    assert len(data["short"]) == 30


def test_freqtrade_feather_files_replay_with_bad_rows_quarantined(tmp_path, spx):
    """freqtrade's data files (``<PAIR>-<timeframe>.feather``, column ``date`` in UTC) replay as
    any bars file, from a path or their directory; a bad row is quarantined by row number."""
    pytest.importorskip("pyarrow")
    df = spx.reset_index().rename(columns={"timestamp": "date"})
    df["date"] = df["date"].dt.tz_localize("UTC").dt.as_unit("ms")
    df.loc[5, "high"] = df.loc[5, "low"] / 2  # high below low: not a bar
    (tmp_path / "user_data").mkdir()
    path = tmp_path / "user_data" / "SPX_USDT-1d.feather"
    df.to_feather(path, compression="lz4")
    feed = make_feed(parse_source(f"replay:{tmp_path / 'user_data'}"))
    ticks = _ticks(feed)
    (rejected,), bars = ticks[0], [b for t in ticks[1:] for b in t]
    assert (rejected.line, rejected.symbol) == (6, "SPX_USDT-1d")  # row 6 of the file
    assert rejected.reason.startswith("high ") and "below" in rejected.reason
    assert [b.ts for b in bars] == list(spx.index.drop(spx.index[5]))
    assert bars[-1].close == spx["close"].iloc[-1]


def test_a_symbol_column_splits_one_file_and_a_directory_reads_all(tmp_path, spx):
    a = spx.reset_index().assign(symbol="AAA")
    b = (spx * 2).reset_index().assign(symbol="BBB")
    pd.concat([a, b]).sort_values("timestamp").to_csv(tmp_path / "both.csv", index=False)
    data = load_bars_files([str(tmp_path / "both.csv")])
    assert sorted(data) == ["AAA", "BBB"]
    assert data["BBB"]["close"].iloc[-1] == 2 * spx["close"].iloc[-1]
    only = load_bars_files([str(tmp_path / "both.csv")], symbols=["BBB"])
    assert list(only) == ["BBB"]
    (tmp_path / "dir").mkdir()
    spx.to_csv(tmp_path / "dir" / "x.csv")
    spx.to_csv(tmp_path / "dir" / "y.csv.gz")
    (tmp_path / "dir" / "notes.txt").write_text("ignored")
    assert list(load_bars_files([str(tmp_path / "dir")])) == ["x", "y"]


def test_samples_are_sources_too():
    data = load_bars_files(["nasdaq"])
    assert list(data) == ["nasdaq"] and len(data["nasdaq"]) > 5000


def test_loading_errors_name_the_file_and_line(tmp_path, spx):
    bad = spx.reset_index().assign(symbol="AAA")
    bad.loc[7, "close"] = -1.0  # the 8th row: line 9 after the header
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(PriceError, match=r"bad\.csv line 9: close -1\.0 is not positive$"):
        load_bars_files([str(tmp_path / "bad.csv")])
    spx.to_csv(tmp_path / "spx.csv")
    with pytest.raises(DataError, match=r"symbol\(s\) nope not in the source"):
        load_bars_files([str(tmp_path / "spx.csv")], symbols=["nope"])
    (tmp_path / "d").mkdir()
    spx.to_csv(tmp_path / "d" / "spx.csv")
    with pytest.raises(DataError, match="symbol 'spx' comes from two sources"):
        load_bars_files([str(tmp_path / "spx.csv"), str(tmp_path / "d")])
    with pytest.raises(DataError, match="no such file"):
        load_bars_files([str(tmp_path / "missing.csv")])
    with pytest.raises(DataError, match="unknown bars file type"):
        load_bars_files([str(tmp_path / "x.json")])


def test_replay_groups_symbols_by_bar_time_in_time_order(spx):
    other = spx.iloc[::2]  # every other day: some groups have one symbol only
    ticks = _ticks(ReplayFeed({"S": spx, "O": other}))
    assert len(ticks) == len(spx)
    assert sum(len(t) for t in ticks) == len(spx) + len(other)
    times = [t[0].ts for t in ticks]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert all(len({b.ts for b in t}) == 1 for t in ticks)
    assert [b.symbol for b in ticks[0]] == ["S", "O"]
    bar = ticks[-1][0]
    assert (bar.symbol, bar.close, bar.volume) == (
        "S",
        spx["close"].iloc[-1],
        spx["volume"].iloc[-1],
    )


def test_replay_skips_to_the_context_before_the_resume_point(spx):
    resume = Resume({"S": spx.index[29]}, context_bars=5)
    ticks = _ticks(ReplayFeed({"S": spx, "T": spx.iloc[:10]}), resume)
    s_times = [b.ts for t in ticks for b in t if b.symbol == "S"]
    assert s_times == list(spx.index[25:])  # 5 bars of context, then the first new bar (30)
    assert sum(b.symbol == "T" for t in ticks for b in t) == 10  # no resume point: all


def test_pace_and_speed_wait_between_bar_times(spx):
    waits = []
    feed = ReplayFeed({"S": spx.iloc[:4]}, pace_s=0.25, sleep=lambda ev, s: waits.append(s))
    assert len(_ticks(feed)) == 4 and waits == [0.25] * 3
    waits.clear()
    days = spx.iloc[:4].index.to_series().diff().dt.total_seconds().iloc[1:]
    feed = ReplayFeed({"S": spx.iloc[:4]}, speed=86400.0, sleep=lambda ev, s: waits.append(s))
    _ticks(feed)
    assert waits == list(days / 86400.0)
    with pytest.raises(ConfigError, match="not both"):
        ReplayFeed({"S": spx}, pace_s=1.0, speed=2.0)


def test_a_stop_during_the_pace_wait_ends_the_replay(spx):
    stop = threading.Event()
    feed = ReplayFeed({"S": spx}, pace_s=30.0, sleep=lambda ev, s: ev.set())
    assert len(list(feed.ticks(stop, Resume()))) == 1


def test_source_syntax():
    assert parse_source("replay:a.csv, b.parquet").entries == ("a.csv", "b.parquet")
    assert parse_source("a.csv,dir").kind == "replay"
    assert parse_source("a.csv", follow=True).kind == "follow"
    assert parse_source("follow:x.csv").entries == ("x.csv",)
    spec = parse_source("ccxt:binance:15m")
    assert (spec.kind, spec.exchange, spec.timeframe) == ("ccxt", "binance", "15m")
    with pytest.raises(ConfigError, match="ccxt:EXCHANGE:TIMEFRAME"):
        parse_source("ccxt:binance")
    with pytest.raises(ConfigError, match="no files"):
        parse_source("replay: ,")
    with pytest.raises(ConfigError, match="--follow applies to plain paths"):
        parse_source("replay:a.csv", follow=True)
    with pytest.raises(ConfigError, match="replay sources only"):
        make_feed(parse_source("follow:x.csv"), pace_s=1.0)


def test_the_exchange_source_without_ccxt_says_how_to_install_it():
    if importlib.util.find_spec("ccxt") is not None:
        pytest.skip("ccxt is installed here")
    with pytest.raises(ConfigError, match=r"pip install 'mlsignal\[exchange\]'"):
        make_feed(parse_source("ccxt:binance:1m"), ["BTC/USDT"])
