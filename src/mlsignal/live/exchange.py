"""``CcxtFeed``: closed candles polled from an exchange through ccxt (``mlsignal[exchange]``).

``fetch_ohlcv`` returns candles oldest first, ``[open_ms, open, high, low, close, volume]``;
the last one is normally the candle still forming. A candle is closed once its open time plus
the timeframe is at least ``grace_s`` in the past by our clock: this drops the forming candle
(and one the exchange may still be amending just after the close) and keeps a closed last
candle on exchanges that return only closed ones. Each candle is delivered once: only candles
newer than the last delivered per symbol go out.

At start it fetches enough closed candles for the runner's context (``resume.context_bars``)
and, after a restart, everything since the last recorded bar, page by page; then it polls.
ccxt is imported only when an exchange is named by string; tests pass an exchange object.

A candle that is not a bar (a missing or non-finite price, high below low, no timestamp) is
**quarantined**: it becomes a :class:`~mlsignal.live.rows.Rejection` (source and symbol: the
exchange symbol; raw: the candle as the exchange sent it; the reason), yielded before the
tick's bars so that the runner records it in table ``rejected``, and the other candles go on
as if it were not there. The feed moves past it, so it is fetched (and logged) once. With
``strict`` the first bad candle raises its :class:`~mlsignal.errors.DataError` instead.
"""

from __future__ import annotations

import importlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pandas as pd

from mlsignal.data import normalize_bars
from mlsignal.errors import ConfigError, DataError, UnavailableError
from mlsignal.live.feeds import Bar, Resume, Tick, frame_to_bars, group_by_time
from mlsignal.live.rows import Rejection, reason_of

log = logging.getLogger(__name__)

_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TF_RE = re.compile(r"^(\d+)([smhdw])$")


def timeframe_seconds(timeframe: str) -> int:
    """``"15m"`` -> 900. Months (``1M``) are not fixed-length and are refused."""
    m = _TF_RE.match(timeframe.strip())
    if not m or int(m.group(1)) <= 0:
        raise ConfigError(f"timeframe {timeframe!r}: use N followed by s, m, h, d or w (e.g. 5m)")
    return int(m.group(1)) * _UNIT_S[m.group(2)]


def make_exchange(name: str) -> Any:
    """A ccxt exchange instance by id (``binance``); ConfigError if ccxt or the id is missing."""
    try:
        ccxt = importlib.import_module("ccxt")
    except ImportError:
        raise ConfigError(
            "the exchange feed needs ccxt: pip install 'mlsignal[exchange]'"
        ) from None
    cls = getattr(ccxt, name, None)
    if cls is None or not isinstance(cls, type):
        raise ConfigError(f"ccxt has no exchange {name!r}; see ccxt.exchanges for the ids")
    exchange = cls({"enableRateLimit": True})
    if not exchange.has.get("fetchOHLCV"):
        raise ConfigError(f"exchange {name!r} does not offer OHLCV candles (fetchOHLCV)")
    return exchange


class CcxtFeed:
    """Polls closed candles of ``symbols`` on ``timeframe``; ends only when ``stop`` is set.

    Args:
        exchange: a ccxt exchange id (``"binance"``) or an object with ccxt's
            ``fetch_ohlcv(symbol, timeframe, since=None, limit=None)``.
        timeframe: candle length, e.g. ``1m``, ``15m``, ``1h``, ``1d``.
        symbols: exchange symbols, e.g. ``BTC/USDT``.
        poll_s: seconds between polls (default: a tenth of the timeframe, 1..30 s).
        grace_s: a candle counts as closed this long after its close time.
        page: most candles asked for per request while catching up.
        clock: seconds since the epoch (injectable for tests).
        sleep: injectable wait ``(event, seconds)``; default ``event.wait``.
        strict: a bad candle raises instead of being quarantined.
    """

    def __init__(
        self,
        exchange: str | Any,
        timeframe: str,
        symbols: Sequence[str],
        *,
        poll_s: float | None = None,
        grace_s: float = 2.0,
        page: int = 500,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[threading.Event, float], object] | None = None,
        strict: bool = False,
    ) -> None:
        if not symbols:
            raise ConfigError("the exchange feed needs --symbols (e.g. BTC/USDT,ETH/USDT)")
        self.tf_s = timeframe_seconds(timeframe)
        self.timeframe = timeframe
        self.exchange = make_exchange(exchange) if isinstance(exchange, str) else exchange
        self.symbols = tuple(symbols)
        self.poll_s = poll_s if poll_s is not None else min(max(self.tf_s / 10, 1.0), 30.0)
        self.grace_s = grace_s
        self.page = page
        self._clock = clock
        self._sleep = sleep or (lambda ev, s: ev.wait(s))
        self.strict = strict
        self.last: dict[str, pd.Timestamp] = {}  # last candle delivered per symbol
        self.rejected: list[Rejection] = []  # quarantined candles not yet yielded by ticks()
        self._failing: str | None = None

    # --- the closed-candle rule --------------------------------------------------------------
    def closed(self, candles: Sequence[Sequence[float]]) -> list[Sequence[float]]:
        """The candles whose close time is at least ``grace_s`` in the past. One without a
        usable open time (which :meth:`to_bars` quarantines) counts as closed once a candle
        after it in the answer (oldest first) is: it may be the one still forming."""
        now = pd.Timestamp(self._clock() * 1e3 - (self.tf_s + self.grace_s) * 1e3, unit="ms")
        out: list[Sequence[float]] = []
        later_closed = False
        for c in reversed(candles):
            ts = _open_time(c)
            if ts is None:
                if later_closed:
                    out.append(c)
            elif ts <= now:
                later_closed = True
                out.append(c)
        return out[::-1]

    def to_bars(self, symbol: str, candles: Sequence[Sequence[float]]) -> list[Bar]:
        """Closed candles newer than the last delivered, as validated bars (updates ``last``);
        a bad one goes to :attr:`rejected` (or raises, ``strict``)."""
        rows = [r for r in self.closed(candles) if not self._seen(symbol, r)]
        if not rows:
            return []
        try:
            frame = normalize_bars(_frame(rows))
        except DataError:
            rows = [r for r in rows if self._valid(symbol, r)]
            frame = normalize_bars(_frame(rows)) if rows else None
        if frame is None or not len(frame):
            return []
        self.last[symbol] = max(frame.index[-1], self.last.get(symbol, frame.index[-1]))
        return frame_to_bars(symbol, frame)

    def _seen(self, symbol: str, candle: Sequence[Any]) -> bool:
        """A candle at or before the last delivered (or quarantined) one of ``symbol``."""
        last, ts = self.last.get(symbol), _open_time(candle)
        return last is not None and ts is not None and ts <= last

    def _valid(self, symbol: str, candle: Sequence[Any]) -> bool:
        """Whether ``candle`` alone is a bar; if not, quarantine it and move past it (or
        raise, ``strict``)."""
        try:
            normalize_bars(_frame([candle]))
            return True
        except DataError as e:
            reason, raw = reason_of(e), _raw(candle)
            if self.strict:
                raise type(e)(f"{symbol} candle from the exchange {raw}: {reason}") from e
            self.rejected.append(Rejection(symbol, None, raw, reason, symbol))
            ts = _open_time(candle)
            if ts is not None and (symbol not in self.last or ts > self.last[symbol]):
                self.last[symbol] = ts
            return False

    # --- fetching ----------------------------------------------------------------------------
    def fetch(self, symbol: str, since_ms: int | None, limit: int) -> list[Sequence[float]]:
        """One ``fetch_ohlcv`` call; exchange errors become :class:`UnavailableError`."""
        try:
            return list(
                self.exchange.fetch_ohlcv(symbol, self.timeframe, since=since_ms, limit=limit)
            )
        except Exception as exc:  # ccxt's NetworkError, ExchangeError, ... (ccxt is optional)
            raise UnavailableError(f"fetch_ohlcv({symbol}, {self.timeframe}): {exc}") from exc

    def backfill(self, symbol: str, resume: Resume) -> list[Bar]:
        """Closed candles from the context before the resume point up to now, paged."""
        tf_ms = self.tf_s * 1000
        now_ms = int(self._clock() * 1000)
        last = resume.last.get(symbol)
        start_ms = now_ms - (resume.context_bars + 2) * tf_ms
        if last is not None:
            last_ms = int(pd.Timestamp(last).value // 1_000_000)
            start_ms = min(start_ms, last_ms - resume.context_bars * tf_ms)
        bars: list[Bar] = []
        since = start_ms
        while True:
            candles = self.fetch(symbol, since, self.page)
            bars.extend(self.to_bars(symbol, candles))
            if not candles or candles[-1][0] < since:  # nothing more, or no progress
                return bars
            if candles[-1][0] + 2 * tf_ms > now_ms:  # reached the last closed candle
                return bars
            since = int(candles[-1][0]) + 1

    def poll(self) -> list[Bar]:
        """New closed candles of every symbol; a failing exchange is logged and skipped."""
        bars: list[Bar] = []
        failed = False
        for symbol in self.symbols:
            since = None
            if symbol in self.last:
                since = int(self.last[symbol].value // 1_000_000) + 1
            try:
                bars.extend(self.to_bars(symbol, self.fetch(symbol, since, self.page)))
            except UnavailableError as e:
                self._note(str(e))
                failed = True
        if not failed:
            self._note(None)
        return bars

    def _note(self, reason: str | None) -> None:
        if reason != self._failing:
            if reason:
                log.warning("exchange feed failing, will retry: %s", reason)
            else:
                log.info("exchange feed recovered")
        self._failing = reason

    def ticks(self, stop: threading.Event, resume: Resume) -> Iterator[Tick]:
        """Backfill, then poll every ``poll_s`` and yield new closed candles by bar time (the
        candles quarantined meanwhile first, as a tick of their own)."""
        history: list[Bar] = []
        for symbol in self.symbols:
            history.extend(self.backfill(symbol, resume))
        yield from self._quarantined()
        yield from group_by_time(history)
        while not stop.is_set():
            bars = self.poll()
            yield from self._quarantined()
            yield from group_by_time(bars)
            if not stop.is_set():
                self._sleep(stop, self.poll_s)

    def _quarantined(self) -> Iterator[Tick]:
        if self.rejected:
            out, self.rejected = self.rejected, []
            yield out

    def close(self) -> None:
        """Close the exchange's HTTP session if it has one."""
        closer = getattr(self.exchange, "close", None)
        if callable(closer):
            try:
                closer()
            except Exception as exc:  # closing must never mask the run's own outcome
                log.debug("closing the exchange failed: %s", exc)


_COLUMNS = ["timestamp", "open", "high", "low", "close", "volume"]


def _frame(candles: Sequence[Sequence[Any]]) -> pd.DataFrame:
    """ccxt candles as a bars frame (timestamps from epoch ms, UTC), deduplicated, sorted."""
    raw = pd.DataFrame([list(r[:6]) for r in candles], columns=_COLUMNS)
    raw["timestamp"] = pd.to_datetime(raw["timestamp"], unit="ms", utc=True, errors="coerce")
    return raw.drop_duplicates("timestamp", keep="last").sort_values("timestamp")


def _open_time(candle: Sequence[Any]) -> pd.Timestamp | None:
    """The candle's open time (naive UTC, as bar indexes are), or None without a usable one."""
    try:
        return pd.Timestamp(int(candle[0]), unit="ms")
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def _raw(candle: Sequence[Any]) -> str:
    """The candle as the exchange sent it: ``[1704067380000, -1.0, 0.0, -2.0, -1.0, 13.0]``."""
    return repr([x.item() if hasattr(x, "item") else x for x in candle])
