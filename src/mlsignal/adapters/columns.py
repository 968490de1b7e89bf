"""mlsignal's per-bar columns for a frame that a trading tool hands over again and again.

Backtests get the whole history once: :meth:`FrameScorer.columns` with ``stream=False`` is
:meth:`~mlsignal.enhancer.MLSignalEnhancer.score_frame`. A live bot hands over the same
frame each candle with new candles at the end: with ``stream=True`` only the new candles go
through the enhancer's per-symbol stream (:meth:`~mlsignal.enhancer.MLSignalEnhancer.enhance_bar`,
no pandas, one window per candle), and the rows scored before come from a cache. The first
frame of a symbol is scored with ``score_frame`` and seeds the stream; a frame the stream
cannot follow (a gap longer than the frame, a candle changed after the fact) has its new
candles scored with ``score_frame`` on the bars up to them, and the stream is seeded again.
Either way each row holds what ``enhance_signal`` gives on the bars up to it, bar for bar.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mlsignal.data import BAR_COLUMNS
from mlsignal.data.io import TIMESTAMP_NAMES
from mlsignal.enhancer import MLSignalEnhancer
from mlsignal.features import FeatureStream
from mlsignal.frames import FRAME_COLUMNS, RowScores

log = logging.getLogger(__name__)

#: Columns :meth:`FrameScorer.columns` returns: :data:`~mlsignal.frames.FRAME_COLUMNS`,
#: with ``source`` named ``ml_source`` (a name a strategy's own columns will not use).
COLUMNS = tuple("ml_source" if c == "source" else c for c in FRAME_COLUMNS)


@dataclass
class _Seen:
    """The rows scored for one symbol, indexed by bar timestamp (int64 ns)."""

    rows: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(COLUMNS)))
    streamed: int = 0  # candles that went through the stream
    rescored: int = 0  # frames scored with score_frame


class FrameScorer:
    """Per-symbol columns over one enhancer, for frames handed over again and again.

    Args:
        enhancer: the enhancer to score with (its streams hold one stream per symbol).
    """

    def __init__(self, enhancer: MLSignalEnhancer) -> None:
        self.enhancer = enhancer
        self._seen: dict[str, _Seen] = {}
        self._lock = threading.Lock()

    def columns(
        self,
        bars: pd.DataFrame,
        symbol: str,
        ss: RowScores = None,
        bs: RowScores = None,
        *,
        stream: bool = False,
    ) -> pd.DataFrame:
        """:data:`COLUMNS` for every row of ``bars`` (its index and order; NaN before
        ``min_bars - 1`` rows of history). ``bars``: oldest first, with a timestamp column
        or a DatetimeIndex. ``ss``/``bs`` as :meth:`MLSignalEnhancer.score_frame` takes them.
        ``stream``: keep the symbol's stream and score only candles not seen before."""
        if not stream:
            return _named(self.enhancer.score_frame(bars, ss, bs, symbol=symbol))
        with self._lock:
            return self._streamed(bars, symbol, ss, bs)

    def stats(self, symbol: str) -> tuple[int, int]:
        """``(candles streamed, frames scored whole)`` for ``symbol`` so far."""
        seen = self._seen.get(symbol)
        return (0, 0) if seen is None else (seen.streamed, seen.rescored)

    # --- streaming --------------------------------------------------------------------------
    def _streamed(
        self, bars: pd.DataFrame, symbol: str, ss: RowScores, bs: RowScores
    ) -> pd.DataFrame:
        t_ns, ohlcv = _arrays(bars)
        seen = self._seen.setdefault(symbol, _Seen())
        st = self.enhancer.streams.get(symbol)
        need = self.enhancer.min_bars
        if st is None or len(st) < need:
            new = np.flatnonzero(t_ns > (seen.rows.index.max() if len(seen.rows) else -1))
            self._rescore(bars, symbol, ss, bs, seen, int(new[0]) if new.size else len(bars))
        else:
            start = int(np.searchsorted(t_ns, st.last_ns, side="right"))
            if start < len(bars):
                if _follows(st, t_ns, ohlcv, start):
                    self._stream(bars, symbol, ss, bs, seen, start, ohlcv, t_ns)
                else:
                    log.info("%s: candles do not follow the stream; rescoring them", symbol)
                    self._rescore(bars, symbol, ss, bs, seen, start)
        seen.rows = seen.rows.loc[seen.rows.index >= t_ns[0]] if len(t_ns) else seen.rows
        return seen.rows.reindex(t_ns).set_axis(bars.index, axis=0)

    def _rescore(
        self,
        bars: pd.DataFrame,
        symbol: str,
        ss: RowScores,
        bs: RowScores,
        seen: _Seen,
        start: int,
    ) -> None:
        """Score rows ``start..`` with ``score_frame`` on the bars up to them; seed the stream
        with the last ``min_bars`` bars."""
        need = self.enhancer.min_bars
        lo = max(0, start - (need - 1))
        part = bars.iloc[lo:]
        cols = self.enhancer.score_frame(part, _rows(ss, lo), _rows(bs, lo), symbol=symbol)
        fresh = _named(cols).iloc[start - lo :]
        fresh.index = _arrays(bars.iloc[start:])[0]
        seen.rows = _append(seen.rows.loc[seen.rows.index < _first(fresh)], fresh)
        seen.rescored += 1
        if len(bars) >= need:
            self.enhancer.seed(symbol, bars.iloc[-need:])
        else:
            self.enhancer.streams.drop(symbol)

    def _stream(
        self,
        bars: pd.DataFrame,
        symbol: str,
        ss: RowScores,
        bs: RowScores,
        seen: _Seen,
        start: int,
        ohlcv: np.ndarray,
        t_ns: np.ndarray,
    ) -> None:
        """Rows ``start..`` through the stream, one candle at a time."""
        ss_rows, bs_rows = _values(ss, len(bars)), _values(bs, len(bars))
        out = []
        for i in range(start, len(bars)):
            bar = (pd.Timestamp(int(t_ns[i])), *ohlcv[i].tolist())
            s = None if ss_rows is None else float(ss_rows[i])
            b = None if bs_rows is None else float(bs_rows[i])
            ess, ebs, info = self.enhancer.enhance_bar(symbol, bar, s, b)
            row = {c: info.get(c) for c in FRAME_COLUMNS}
            row.update(enhanced_ss=ess, enhanced_bs=ebs, ml_source=info["source"])
            out.append(row)
        fresh = pd.DataFrame(out, index=t_ns[start:], columns=list(COLUMNS))
        seen.rows = _append(seen.rows, fresh)
        seen.streamed += len(fresh)


def _follows(st: FeatureStream, t_ns: np.ndarray, ohlcv: np.ndarray, start: int) -> bool:
    """Whether the bars before ``start`` end with the bars the stream holds, bit for bit."""
    if start == 0:
        return False  # the stream's last bar is not in the frame: a gap
    k = min(len(st), start)
    return st.holds(t_ns[start - k : start], ohlcv[start - k : start])


def _arrays(bars: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """int64 ns timestamps (UTC) and float64 ``(n, 5)`` OHLCV of a frame as tools hand it."""
    if isinstance(bars.index, pd.DatetimeIndex):
        ts = bars.index
    else:
        ts = pd.DatetimeIndex(bars[_time_column(bars)])
    if ts.tz is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    values = np.ascontiguousarray(bars[list(BAR_COLUMNS)].to_numpy(dtype=np.float64))
    return ts.as_unit("ns").asi8, values


def _time_column(bars: pd.DataFrame) -> str:
    for name in TIMESTAMP_NAMES:  # in normalize_bars' order
        if name in bars.columns:
            return name
    raise KeyError(f"no date column in {list(bars.columns)[:8]}")


def _named(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.rename(columns={"source": "ml_source"})


def _append(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([old, new]) if len(old) and len(new) else (new if len(new) else old)


def _first(frame: pd.DataFrame) -> int:
    return int(frame.index[0]) if len(frame) else np.iinfo(np.int64).max


def _values(scores: RowScores, n: int) -> np.ndarray | None:
    if scores is None:
        return None
    if np.ndim(scores) == 0:
        return np.full(n, float(scores))  # type: ignore[arg-type]
    return np.asarray(scores, dtype=np.float64)


def _rows(scores: RowScores, lo: int) -> RowScores:
    """Per-row scores from row ``lo`` on (numbers stay numbers)."""
    if scores is None or np.ndim(scores) == 0:
        return scores
    if isinstance(scores, pd.Series):
        return scores.iloc[lo:]
    return np.asarray(scores, dtype=np.float64)[lo:]
