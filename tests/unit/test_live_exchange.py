"""``CcxtFeed``'s closed-candle logic against a fake exchange (a test double of ccxt's API).

The double answers ``fetch_ohlcv(symbol, timeframe, since, limit)`` like ccxt: candles oldest
first, from ``since`` (or the newest ``limit``), at most ``limit``, the last one still forming
(open time within the current minute). Prices are the real S&P 500 closes, one per minute.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from contextlib import closing

import pandas as pd
import pytest

from mlsignal.errors import ConfigError, PriceError
from mlsignal.live.exchange import CcxtFeed, timeframe_seconds
from mlsignal.live.feeds import Resume

T0 = pd.Timestamp("2024-01-01").value // 1_000_000  # ms
MIN = 60_000


class Clock:
    def __init__(self, t_s: float) -> None:
        self.t = t_s

    def __call__(self) -> float:
        return self.t


class FakeExchange:
    """ccxt-like OHLCV source over real closes; can fail on demand; records its calls."""

    def __init__(self, closes, clock: Clock, closed_only: bool = False) -> None:
        self.closes = list(closes)
        self.clock = clock
        self.closed_only = closed_only
        self.calls: list[tuple] = []
        self.fail: Exception | None = None

    def fetch_ohlcv(self, symbol, timeframe, since=None, limit=None):
        self.calls.append((symbol, timeframe, since, limit))
        if self.fail is not None:
            raise self.fail
        assert timeframe == "1m"
        now_ms = self.clock() * 1000
        candles = []
        for i, c in enumerate(self.closes):
            open_ms = T0 + i * MIN
            if open_ms > now_ms:
                break
            forming = open_ms + MIN > now_ms
            if forming and self.closed_only:
                break
            close = c if not forming else c * 1.001  # the forming candle's price still moves
            candles.append([open_ms, c, max(c, close) + 1, min(c, close) - 1, close, 10.0 + i])
        if since is not None:
            candles = [k for k in candles if k[0] >= since]
            return candles[:limit]
        return candles[-limit:]


@pytest.fixture(scope="module")
def closes(sp500_bars):
    return sp500_bars["close"].to_numpy()[:400]


def _feed(closes, now_s, **kw):
    clock = Clock(now_s)
    ex = FakeExchange(closes, clock, kw.pop("closed_only", False))
    return CcxtFeed(ex, "1m", ["SPX/USD"], clock=clock, grace_s=2.0, page=50, **kw), ex, clock


def _minutes(bars):
    return [(b.ts.value // 1_000_000 - T0) // MIN for b in bars]


def test_the_forming_candle_is_dropped_and_each_candle_delivered_once(closes):
    now = (T0 + 10 * MIN + 30_000) / 1000  # 30 s into minute 10: candles 0..9 closed
    feed, ex, clock = _feed(closes, now)
    got = feed.to_bars("SPX/USD", ex.fetch_ohlcv("SPX/USD", "1m", None, 100))
    assert _minutes(got) == list(range(10))
    assert got[-1].close == closes[9]  # closed candles carry their final price
    assert feed.poll() == []  # nothing new until minute 10 closes
    clock.t = (T0 + 11 * MIN + 1_000) / 1000  # 1 s after the close: inside the grace
    assert feed.poll() == []
    clock.t = (T0 + 11 * MIN + 2_500) / 1000
    (bar,) = feed.poll()
    assert _minutes([bar]) == [10] and bar.close == closes[10]
    assert ex.calls[-1][2] == T0 + 9 * MIN + 1  # polls ask from just after the last candle
    clock.t += 3 * 60
    assert _minutes(feed.poll()) == [11, 12, 13]


def test_an_exchange_that_returns_only_closed_candles_loses_nothing(closes):
    now = (T0 + 10 * MIN + 30_000) / 1000
    feed, _ex, _clock = _feed(closes, now, closed_only=True)
    assert _minutes(feed.poll()) == list(range(10))  # the newest closed candle is kept


def test_backfill_pages_from_the_context_before_the_resume_point(closes):
    now = (T0 + 300 * MIN + 5_000) / 1000  # candles 0..299 closed
    feed, ex, _ = _feed(closes, now)
    last = pd.Timestamp(T0 + 200 * MIN, unit="ms")
    bars = feed.backfill("SPX/USD", Resume({"SPX/USD": last}, context_bars=20))
    assert _minutes(bars) == list(range(180, 300))  # 20 of context, then 201..299 to record
    assert [c[2] for c in ex.calls] == [T0 + 180 * MIN, T0 + 229 * MIN + 1, T0 + 279 * MIN + 1]
    assert all(c[3] == 50 for c in ex.calls)


def test_fresh_start_fetches_just_the_context(closes):
    now = (T0 + 300 * MIN + 5_000) / 1000
    feed, _, _ = _feed(closes, now)
    bars = feed.backfill("SPX/USD", Resume({}, context_bars=30))
    assert _minutes(bars)[-1] == 299 and 30 <= len(bars) <= 32


def test_ticks_backfill_then_poll_until_stopped(closes):
    now = (T0 + 100 * MIN + 5_000) / 1000
    stop = threading.Event()
    waits = []

    def sleep(ev, s):  # each idle wait moves the clock one minute; the third one stops
        waits.append(s)
        clock.t += 60
        if len(waits) == 3:
            ev.set()

    feed, _ex, clock = _feed(closes, now, sleep=sleep, poll_s=5.0)
    ticks = list(feed.ticks(stop, Resume({}, context_bars=10)))
    minutes = [m for t in ticks for m in _minutes(t)]
    assert minutes == list(range(89, 102))  # backfill 89..99, then 100 and 101 as they close
    assert waits == [5.0, 5.0, 5.0]


def test_exchange_errors_while_polling_are_logged_once_and_retried(closes, caplog):
    now = (T0 + 20 * MIN + 5_000) / 1000
    feed, ex, clock = _feed(closes, now)
    feed.poll()
    ex.fail = TimeoutError("read timed out")
    with caplog.at_level(logging.INFO, logger="mlsignal.live.exchange"):
        assert feed.poll() == [] and feed.poll() == []
        ex.fail = None
        clock.t += 60
        assert _minutes(feed.poll()) == [20]
    assert caplog.text.count("exchange feed failing") == 1
    assert "read timed out" in caplog.text and "recovered" in caplog.text


class PoisonedExchange(FakeExchange):
    """Candles that are not bars: ``negative`` (a negative price), ``nan`` (a NaN close),
    ``timeless`` (no open time)."""

    def __init__(self, closes, clock: Clock, negative=3, nan=5, timeless=7) -> None:
        bad = list(closes)
        bad[negative], bad[nan] = -1.0, float("nan")
        super().__init__(bad, clock)
        self.timeless_ms = T0 + timeless * MIN

    def fetch_ohlcv(self, symbol, timeframe, since=None, limit=None):
        got = super().fetch_ohlcv(symbol, timeframe, since, limit)
        return [[None, *k[1:]] if k[0] == self.timeless_ms else k for k in got]


def _poisoned(closes, now_s, bad=(3, 5, 7), **kw):
    clock = Clock(now_s)
    ex = PoisonedExchange(closes, clock, *bad)
    return CcxtFeed(ex, "1m", ["SPX/USD"], clock=clock, grace_s=2.0, page=50, **kw), ex, clock


def test_bad_candles_are_quarantined_once_and_the_good_ones_go_on(closes):
    feed, ex, clock = _poisoned(closes, (T0 + 10 * MIN + 5_000) / 1000)
    assert _minutes(feed.poll()) == [0, 1, 2, 4, 6, 8, 9]  # candles 0..9 closed
    bad = feed.rejected
    assert [(r.source, r.symbol, r.line) for r in bad] == [("SPX/USD", "SPX/USD", None)] * 3
    assert all(not r.reason.startswith("row") for r in bad), bad  # the candle's own reason
    assert any("not finite" in r.reason for r in bad), bad
    assert any("timestamp" in r.reason for r in bad) and any("None" in r.raw for r in bad), bad
    assert [c for c in bad if c.raw.startswith(f"[{T0 + 3 * MIN}, ")], bad  # the candle as sent
    clock.t += 60
    assert _minutes(feed.poll()) == [10] and len(feed.rejected) == 3  # not fetched again
    assert ex.calls[-1][2] == T0 + 9 * MIN + 1


def test_ticks_yield_the_quarantined_candles_before_the_bars(closes):
    stop = threading.Event()
    feed, _ex, _clock = _poisoned(
        closes, (T0 + 12 * MIN + 5_000) / 1000, sleep=lambda ev, s: ev.set()
    )
    ticks = list(feed.ticks(stop, Resume({}, context_bars=20)))
    assert [type(x).__name__ for x in ticks[0]] == ["Rejection"] * 3
    assert [m for t in ticks[1:] for m in _minutes(t)] == [0, 1, 2, 4, 6, 8, 9, 10, 11]
    assert feed.rejected == []  # handed over once


def test_strict_stops_at_a_bad_candle_naming_the_symbol(closes):
    feed, _ex, _ = _poisoned(closes, (T0 + 10 * MIN + 5_000) / 1000, strict=True)
    with pytest.raises(PriceError, match=rf"SPX/USD candle from the exchange \[{T0 + 3 * MIN}, "):
        feed.poll()  # the first bad one in the exchange's order


def test_config_errors():
    assert timeframe_seconds("15m") == 900 and timeframe_seconds("1d") == 86400
    for bad in ("1M", "0m", "m5", ""):
        with pytest.raises(ConfigError, match="timeframe"):
            timeframe_seconds(bad)
    with pytest.raises(ConfigError, match="--symbols"):
        CcxtFeed(object(), "1m", [])


def test_a_live_run_quarantines_bad_candles_and_records_the_rest(tiny_bundle, closes, tmp_path):
    """The runner on the exchange feed: a bad candle used to end the run (DataError); now it
    is in table ``rejected`` and every good candle after it is recorded."""
    from mlsignal.enhancer import MLSignalEnhancer
    from mlsignal.live import LiveRunner, SqliteSink

    polls = []

    def sleep(ev, s):  # each wait: one minute later; the sixth one stops the run
        polls.append(s)
        clock.t += 60
        if len(polls) == 6:
            ev.set()

    feed, _ex, clock = _poisoned(
        closes, (T0 + 300 * MIN + 5_000) / 1000, bad=(301, 302, 303), sleep=sleep
    )  # 0..299 closed at the start; 300..305 close while it polls
    db = tmp_path / "x.db"
    enhancer = MLSignalEnhancer(tiny_bundle, device="cpu", allow_timeframe_mismatch=True)
    summary = LiveRunner(enhancer, feed, SqliteSink(db)).run()
    with closing(sqlite3.connect(db)) as con:
        recorded = [r[0] for r in con.execute("SELECT bar_ts FROM signals ORDER BY bar_ts")]
        rejected = con.execute("SELECT source, line, symbol, raw FROM rejected").fetchall()
    minute = {pd.Timestamp(T0 + m * MIN, unit="ms").isoformat(): m for m in range(400)}
    got = [minute[t] for t in recorded]
    assert got[-3:] == [299, 300, 304] and summary.errors == 0, got
    assert len(rejected) == 3 and {r[:3] for r in rejected} == {("SPX/USD", None, "SPX/USD")}
