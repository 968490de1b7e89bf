"""Streaming features: per-symbol ring buffers of recent bars, one validated bar at a time.

A live loop gets one closed bar per symbol per interval. Re-reading, re-validating and
re-featurising a DataFrame of history for every bar costs milliseconds, almost all of it
pandas. :class:`FeatureStream` keeps the last ``capacity`` bars of one symbol in preallocated
numpy ring buffers; :meth:`FeatureStream.append` validates only the new bar and stores it in
O(1); :meth:`FeatureStream.window` gives the model window, bit for bit equal to
``feature_window(bars.iloc[: t + 1])`` of the batch pipeline (the parity test checks every
step over thousands of bars).

Cost, honestly: appending is O(1). A window is O(``schema.lookback``) work (256 bars): it
runs the batch pipeline's own ``_feature_matrix`` on the contiguous ring contents, with no
pandas, no DataFrame and no re-validation. So the per-bar cost is constant in the length of
the history, but it is not O(1) in the lookback, and it cannot be while the results stay
exact: the feature contract (:mod:`mlsignal.features.compute`) computes a window from exactly
the last ``lookback`` bars, with prices divided by the first close of that lookback, volume
referenced to its mean volume, and the recursive indicators (MACD's EMAs, Wilder's RSI, ATR,
ADX) seeded at its first bar. When a bar arrives the lookback's first bar moves, so every
row of the window changes: the price reference, the volume reference and the seeds all move.
A recursive O(1) update (carrying EMA/Wilder state from bar to bar) would compute indicators
seeded at the start of the whole history instead: numerically close after the warm-up, but
not the values the model was trained on, and not what the batch path, the server or a
restarted process compute. That would break training = serving = remote, so it is not done.
Nor can a feature be cached across bars bit for bit: every price feature is computed from
prices already divided by the lookback's first close (``x / ref`` rounds differently for
every ``ref``), and the volume feature from volume divided by the lookback's mean, so no
intermediate value survives the next bar unchanged. What the window does avoid is work on
rows the window does not return (see ``rows`` in ``_feature_matrix``).

The double-written ring makes the last ``k`` bars one contiguous slice without copying: each
bar is written at slot ``i`` and at slot ``i + capacity`` of a ``2 * capacity`` buffer.

A repeated timestamp is not an append: :meth:`FeatureStream.append` refuses it (a live loop
that sees the same bar twice is usually wrong), and :meth:`FeatureStream.replace_last`
replaces the last bar explicitly (a corrected or re-sent bar). An older timestamp is refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mlsignal.data.io import _EPOCH_UNITS, _YYYYMMDD, normalize_bars
from mlsignal.data.validate import BAR_COLUMNS, T_MAX_NS, T_MIN_NS, TIME_RANGE, check_bar
from mlsignal.errors import (
    FeatureSchemaError,
    InsufficientDataError,
    MissingColumnError,
    PriceError,
    TimestampError,
)
from mlsignal.features.compute import _check_schema, _feature_matrix
from mlsignal.features.schema import DEFAULT_SCHEMA, FEATURE_NAMES, FeatureSchema

#: One bar: a mapping with ``timestamp, open, high, low, close, volume`` (a ``pd.Series``
#: may carry the timestamp as its name instead), or a 6-sequence in that order.
BarLike = Mapping[str, Any] | Sequence[Any] | pd.Series

_FIELDS = ("timestamp", *BAR_COLUMNS)


# --- one bar in -----------------------------------------------------------------------------
def to_ns(ts: Any) -> int:
    """A timestamp as int64 nanoseconds, tz-naive UTC, the way ``normalize_bars`` reads it.

    Accepts what ``pandas.Timestamp`` accepts (tz-aware values are converted to UTC), and
    numbers: YYYYMMDD integers, or epoch s/ms/us/ns told apart by magnitude.
    """
    if isinstance(ts, (int, float, np.integer, np.floating)) and not isinstance(ts, bool):
        return _in_range(_number_ns(float(ts), ts), ts)
    try:
        t = pd.Timestamp(ts)
    except (TypeError, ValueError) as exc:
        raise TimestampError(f"timestamp {ts!r} cannot be parsed ({exc})") from None
    if t is pd.NaT:
        raise TimestampError(f"timestamp {ts!r} is missing (NaT)")
    if t.tzinfo is not None:
        t = t.tz_convert("UTC").tz_localize(None)
    try:
        return _in_range(int(t.as_unit("ns").value), ts)
    except (OverflowError, pd.errors.OutOfBoundsDatetime):
        raise TimestampError(f"timestamp {ts!r} is outside {TIME_RANGE}") from None


def _in_range(ns: int, raw: Any) -> int:
    """``ns``, or a :class:`TimestampError` when it is outside ``TIME_RANGE``."""
    if not T_MIN_NS <= ns <= T_MAX_NS:
        raise TimestampError(f"timestamp {raw!r} is outside {TIME_RANGE}")
    return ns


def _number_ns(x: float, raw: Any) -> int:
    if not math.isfinite(x):
        raise TimestampError(f"timestamp {raw!r} is not finite")
    if x == round(x) and _YYYYMMDD[0] <= x <= _YYYYMMDD[1]:
        return to_ns(pd.Timestamp(f"{x:.0f}"))
    unit = next((u for limit, u in _EPOCH_UNITS if abs(x) < limit), "ns")
    try:
        return int(pd.Timestamp(raw, unit=unit).as_unit("ns").value)
    except (OverflowError, ValueError, pd.errors.OutOfBoundsDatetime):
        raise TimestampError(f"timestamp {raw!r} is outside {TIME_RANGE}") from None


def split_bar(bar: BarLike) -> tuple[Any, tuple[float, float, float, float, float]]:
    """``(timestamp, (open, high, low, close, volume))`` of one bar; values as floats."""
    if isinstance(bar, pd.Series):
        ts = bar["timestamp"] if "timestamp" in bar.index else bar.name
        values = [bar.get(c) for c in BAR_COLUMNS]
        missing = [c for c in BAR_COLUMNS if c not in bar.index]
    elif isinstance(bar, Mapping):
        ts = bar.get("timestamp")
        values = [bar.get(c) for c in BAR_COLUMNS]
        missing = [c for c in _FIELDS if c not in bar]
    elif isinstance(bar, Sequence) and not isinstance(bar, str) and len(bar) == len(_FIELDS):
        ts, values, missing = bar[0], list(bar[1:]), []
    else:
        raise MissingColumnError(
            f"a bar must be a mapping with {', '.join(_FIELDS)} or a sequence of those 6 "
            f"values, got {type(bar).__name__}"
        )
    if missing or ts is None:
        raise MissingColumnError(f"bar lacks {', '.join(missing) or 'timestamp'}")
    return ts, tuple(_float(v, name, ts) for v, name in zip(values, BAR_COLUMNS, strict=True))


def _float(value: Any, name: str, ts: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise PriceError(f"bar {ts}: {name} {value!r} is not a number") from None


# --- one symbol -----------------------------------------------------------------------------
class FeatureStream:
    """The last ``capacity`` bars of one symbol, and the model window of its last bar.

    Args:
        schema: the feature schema (window and warm-up); the bundle's for a model.
        capacity: bars kept; at least ``schema.lookback``. The enhancer uses the bundle's
            ``min_bars`` so rule scores and GARCH see what the batch path sees.
        symbol: named in error messages.

    Every method that returns arrays returns views into the ring: valid until the next
    append, never to be written to. :meth:`window` is cached until the next append.
    """

    def __init__(
        self, schema: FeatureSchema = DEFAULT_SCHEMA, capacity: int | None = None, symbol: str = ""
    ) -> None:
        _check_schema(schema)
        self.schema = schema
        self.symbol = symbol
        self.capacity = max(schema.lookback, int(capacity or 0))
        cap = self.capacity
        self._cols = np.zeros((len(BAR_COLUMNS), 2 * cap))  # (5, 2 cap) float64
        self._ts = np.zeros(2 * cap, dtype=np.int64)  # (2 cap,) ns
        self.reset()

    def reset(self) -> None:
        """Forget every bar."""
        self._last = self.capacity - 1  # slot of the last bar; the first append goes to 0
        self._n = 0  # bars held, <= capacity
        self._window: np.ndarray | None = None

    # --- state ------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Bars held (at most ``capacity``)."""
        return self._n

    @property
    def ready(self) -> bool:
        """Whether the stream holds a full lookback, so :meth:`window` can run."""
        return self._n >= self.schema.lookback

    @property
    def last_ns(self) -> int | None:
        """The last bar's timestamp in int64 nanoseconds (``None`` when empty)."""
        return int(self._ts[self._last]) if self._n else None

    @property
    def last_timestamp(self) -> pd.Timestamp | None:
        """The last bar's timestamp (``None`` when empty)."""
        return pd.Timestamp(self.last_ns) if self._n else None

    def _span(self, k: int | None) -> slice:
        k = self._n if k is None else min(int(k), self._n)
        end = self._last + self.capacity + 1
        return slice(end - k, end)

    def arrays(self, k: int | None = None) -> tuple[np.ndarray, ...]:
        """Contiguous float64 views ``(open, high, low, close, volume)`` of the last ``k`` bars
        (all held when ``None``)."""
        s = self._span(k)
        return tuple(self._cols[i, s] for i in range(len(BAR_COLUMNS)))

    def timestamps(self, k: int | None = None) -> np.ndarray:
        """int64 nanosecond view of the last ``k`` timestamps."""
        return self._ts[self._span(k)]

    def values(self, k: int | None = None) -> np.ndarray:
        """The last ``k`` bars as a new ``(k, 5)`` float64 array (open .. volume)."""
        return self._cols[:, self._span(k)].T.copy()

    def frame(self, k: int | None = None) -> pd.DataFrame:
        """The last ``k`` bars as a canonical bars DataFrame (a copy; for remote calls)."""
        index = pd.DatetimeIndex(self.timestamps(k).astype("datetime64[ns]"), name="timestamp")
        return pd.DataFrame(self.values(k), index=index, columns=list(BAR_COLUMNS))

    def holds(self, ts_ns: np.ndarray, values: np.ndarray) -> bool:
        """Whether the last ``len(ts_ns)`` bars held are these: int64 ns ``(k,)`` and float64
        ``(k, 5)`` (open .. volume), compared bit for bit."""
        k = len(ts_ns)
        if k > self._n or values.shape != (k, len(BAR_COLUMNS)) or values.dtype != np.float64:
            return False
        s = self._span(k)
        held = self._cols[:, s].view(np.int64)
        return np.array_equal(ts_ns, self._ts[s]) and np.array_equal(values.T.view(np.int64), held)

    def label(self, ns: int | None = None) -> str:
        """``AAPL: bar 2020-01-02 00:00:00``: how messages name a bar."""
        ts = pd.Timestamp(self.last_ns if ns is None else ns)
        return f"{self.symbol}: bar {ts}" if self.symbol else f"bar {ts}"

    # --- bars in ----------------------------------------------------------------------------
    def append(self, bar: BarLike) -> None:
        """Validate one closed bar and add it (O(1)). See :func:`split_bar` for ``bar``."""
        ns, values = self.check(bar)
        self._store(ns, values)

    def check(self, bar: BarLike) -> tuple[int, tuple[float, float, float, float, float]]:
        """Validate ``bar`` as the next bar without adding it: ``(timestamp ns, values)``."""
        ts, values = split_bar(bar)
        ns = to_ns(ts)
        self._check(ns, values)
        return ns, values

    def append_values(self, ts_ns: int, o: float, h: float, low: float, c: float, v: float) -> None:
        """:meth:`append` for a timestamp in int64 ns and five floats."""
        values = (o, h, low, c, v)
        self._check(ts_ns, values)
        self._store(ts_ns, values)

    def _check(self, ns: int, values: Sequence[float]) -> None:
        if self._n and ns <= self._ts[self._last]:
            kind = "duplicates" if ns == self._ts[self._last] else "is earlier than"
            hint = "; use replace_last() to correct the last bar" if kind == "duplicates" else ""
            raise TimestampError(
                f"{self.label(ns)}: timestamp {kind} the last bar "
                f"({pd.Timestamp(self.last_ns)}); timestamps must be increasing{hint}"
            )
        o, h, low, c, v = values
        inf = math.inf
        ok = 0 < o < inf and 0 < h < inf and 0 < low < inf and 0 < c < inf and 0 <= v < inf
        if not (ok and h >= o and h >= c and low <= o and low <= c):
            check_bar(self.label(ns), values)  # raises, naming the problem

    def _store(self, ns: int, values: Sequence[float]) -> None:
        self._last = (self._last + 1) % self.capacity
        self._put(self._last, ns, values)
        self._n = min(self._n + 1, self.capacity)

    def replace_last(self, bar: BarLike) -> None:
        """Replace the last bar with a corrected one of the same timestamp (validated)."""
        ts, values = split_bar(bar)
        ns = to_ns(ts)
        if not self._n or ns != self._ts[self._last]:
            last = pd.Timestamp(self.last_ns) if self._n else "none"
            raise TimestampError(
                f"{self.label(ns)}: replace_last needs the last bar's timestamp ({last})"
            )
        check_bar(self.label(ns), values)
        self._put(self._last, ns, values)

    def _put(self, slot: int, ns: int, values: Sequence[float]) -> None:
        cap = self.capacity
        self._cols[:, slot] = values
        self._cols[:, slot + cap] = values
        self._ts[slot] = self._ts[slot + cap] = ns
        self._window = None

    def extend(self, bars: pd.DataFrame) -> None:
        """Add many bars at once (e.g. history at start-up), validated as a whole frame.

        ``bars`` is anything :func:`mlsignal.data.normalize_bars` reads; its first bar must be
        later than the stream's last. Only the last ``capacity`` bars are kept.
        """
        bars = normalize_bars(bars)
        ts = bars.index.asi8
        if self._n and ts[0] <= self._ts[self._last]:
            raise TimestampError(
                f"{self.label(int(ts[0]))}: the first new bar is not later than the last bar "
                f"held ({pd.Timestamp(self.last_ns)}); timestamps must be increasing"
            )
        self.extend_valid(ts, bars.to_numpy(dtype=np.float64))

    def extend_valid(self, ts_ns: np.ndarray, values: np.ndarray) -> None:
        """Add bars already validated and later than the last one: int64 ns ``(k,)`` and
        float64 ``(k, 5)`` (open .. volume). For callers that validated them as a frame."""
        cap = self.capacity
        ts_ns, values = ts_ns[-cap:], values[-cap:]
        k = len(ts_ns)
        if k == 0:
            return
        slots = (self._last + 1 + np.arange(k)) % cap
        for offset in (0, cap):
            self._cols[:, slots + offset] = values.T
            self._ts[slots + offset] = ts_ns
        self._last = int(slots[-1])
        self._n = min(self._n + k, cap)
        self._window = None

    # --- model inputs -----------------------------------------------------------------------
    def window(self) -> np.ndarray:
        """The model window of the last bar: read-only float32 ``(schema.window, F)``.

        Equal bit for bit to ``feature_window(bars, schema)`` of the same bars. Raises
        :class:`InsufficientDataError` before ``schema.lookback`` bars, and
        :class:`FeatureSchemaError` naming the feature and bar if a value is not finite.
        """
        if self._window is None:
            self._window = self._compute_window()
        return self._window

    def _compute_window(self) -> np.ndarray:
        lb, t = self.schema.lookback, self.schema.window
        if self._n < lb:
            who = f"{self.symbol}: " if self.symbol else ""
            raise InsufficientDataError(
                f"{who}stream holds {self._n} bars, need at least {lb} "
                f"(window {t} + warmup {self.schema.warmup})"
            )
        m = _feature_matrix(*self.arrays(lb), rows=t)  # (t, F) float64
        w = m.astype(np.float32)
        if not np.isfinite(w).all():
            step, f = (int(x) for x in np.argwhere(~np.isfinite(w))[0])
            raise FeatureSchemaError(
                f"feature {FEATURE_NAMES[f]!r} is {w[step, f]} at "
                f"{self.label(int(self.timestamps(t)[step]))}; "
                "check the bars for NaN, zero or negative prices"
            )
        w.flags.writeable = False
        return w

    def log_returns(self, k: int | None = None) -> np.ndarray:
        """1-bar log returns of the last ``k`` closes (all held when ``None``): ``(k - 1,)``.

        The GARCH input, as ``np.diff(np.log(bars["close"]))`` of the same bars.
        """
        return np.diff(np.log(self.arrays(k)[3]))


# --- many symbols ---------------------------------------------------------------------------
class FeatureStreams:
    """One :class:`FeatureStream` per symbol, created on first use, all of one schema."""

    def __init__(self, schema: FeatureSchema = DEFAULT_SCHEMA, capacity: int | None = None) -> None:
        _check_schema(schema)
        self.schema = schema
        self.capacity = max(schema.lookback, int(capacity or 0))
        self._streams: dict[str, FeatureStream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def __iter__(self) -> Iterator[str]:
        return iter(self._streams)

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._streams

    def __getitem__(self, symbol: str) -> FeatureStream:
        return self._streams[symbol]

    def get(self, symbol: str) -> FeatureStream | None:
        """The symbol's stream, or ``None``."""
        return self._streams.get(symbol)

    def stream(self, symbol: str) -> FeatureStream:
        """The symbol's stream, created empty on first use."""
        s = self._streams.get(symbol)
        if s is None:
            s = self._streams[symbol] = FeatureStream(self.schema, self.capacity, symbol)
        return s

    def append(self, symbol: str, bar: BarLike) -> FeatureStream:
        """Validate and add one bar to ``symbol``'s stream; returns the stream."""
        s = self.stream(symbol)
        s.append(bar)
        return s

    def seed(self, symbol: str, bars: pd.DataFrame) -> FeatureStream:
        """Replace ``symbol``'s bars with ``bars`` (history at start-up); returns the stream."""
        s = self.stream(symbol)
        s.reset()
        s.extend(bars)
        return s

    def drop(self, symbol: str) -> None:
        """Forget a symbol."""
        self._streams.pop(symbol, None)

    def windows(self, symbols: Sequence[str]) -> np.ndarray:
        """Stacked windows of ``symbols``: float32 ``(N, T, F)``, one forward pass's input."""
        return np.stack([self._streams[s].window() for s in symbols])
