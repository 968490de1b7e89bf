"""Per-row scoring of one symbol's bars: the work of :meth:`MLSignalEnhancer.score_frame`.

A backtest needs, for every bar ``t``, what a live loop would have got on that bar:
``enhance_signal(df.iloc[: t + 1], ss[t], bs[t])``. :func:`score_rows` gives exactly that for
every bar from ``min_bars - 1`` on, without a call per bar: the bars are validated once, then
in chunks of ``batch_size`` bars :func:`~mlsignal.pipeline.prepare_rows` builds the chunk's
windows in one vectorised pass (and its GARCH volatilities in another), the caller's
``forward`` runs one model pass per chunk and :func:`~mlsignal.pipeline.finish` (inside
``forward``) fuses each bar as it fuses a live one. Rows before ``min_bars - 1`` have too
little history for the model: NaN (``None`` in the text columns).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mlsignal.bundle import Bundle
from mlsignal.data import normalize_rows
from mlsignal.errors import DataError
from mlsignal.pipeline import Prepared, SignalResult, prepare_rows
from mlsignal.pipeline.types import naming

#: Columns of :func:`score_rows`, in order: the ``ml_info`` values of each bar, its enhanced
#: scores, and the rule scores they were fused from (the caller's, or the built-in rules').
FRAME_COLUMNS = (
    "bull_prob", "base_rate", "p_lstm", "p_tft", "regime", "regime_vol", "kelly",
    "kelly_side", "enhanced_ss", "enhanced_bs", "rule_ss", "rule_bs", "source",
)  # fmt: skip
_TEXT = frozenset(("regime", "kelly_side", "source"))

#: Prepared bars of one chunk -> their finished results, in order (a model pass + finish).
Forward = Callable[[list[Prepared]], list[SignalResult]]
#: Per-row scores as callers have them: a Series (on the frame's index), an array or a
#: sequence (one per row), one number for every row, or ``None`` (the built-in rules).
RowScores = pd.Series | np.ndarray | Sequence[float] | float | None


def score_rows(
    bundle: Bundle,
    df: pd.DataFrame,
    ss: RowScores,
    bs: RowScores,
    forward: Forward,
    *,
    symbol: str = "",
    batch_size: int = 256,
) -> pd.DataFrame:
    """One row per row of ``df`` (its index, its order): :data:`FRAME_COLUMNS` of every bar
    from ``bundle.min_bars - 1`` on, NaN/``None`` before (all of them with fewer bars).

    ``df`` is validated as a whole, as ``enhance_signal`` validates its input (a bad bar
    anywhere raises its :class:`~mlsignal.errors.DataError`). ``ss``/``bs`` of the scored
    rows must be numbers in 0..100 (the first that is not raises, naming its bar).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    with naming(symbol):
        bars, flipped = normalize_rows(df)
        need = bundle.min_bars
        ss_rows = _row_scores(ss, df, bars, flipped, "ss", need)
        bs_rows = _row_scores(bs, df, bars, flipped, "bs", need)
    n = len(bars)
    t_ns = bars.index.asi8
    ohlcv = np.ascontiguousarray(bars.to_numpy(dtype=np.float64))  # (n, 5)
    cols = {c: _empty(n, c) for c in FRAME_COLUMNS}
    for start in range(need - 1, n, batch_size):
        ends = np.arange(start, min(start + batch_size, n))
        chunk = slice(start, int(ends[-1]) + 1)
        prepared = prepare_rows(
            bundle,
            symbol,
            t_ns,
            ohlcv,
            ends,
            None if ss_rows is None else ss_rows[chunk],
            None if bs_rows is None else bs_rows[chunk],
        )
        for e, result in zip(ends.tolist(), forward(prepared), strict=True):
            _fill(cols, e, result)
    out = pd.DataFrame(cols, columns=list(FRAME_COLUMNS))
    if flipped:
        out = out.iloc[::-1]
    return out.set_axis(df.index, axis=0)


def _empty(n: int, column: str) -> np.ndarray:
    return np.full(n, None, dtype=object) if column in _TEXT else np.full(n, np.nan)


def _fill(cols: dict[str, np.ndarray], row: int, result: SignalResult) -> None:
    info = result.ml_info
    for c in FRAME_COLUMNS:
        if c == "enhanced_ss":
            cols[c][row] = result.enhanced_ss
        elif c == "enhanced_bs":
            cols[c][row] = result.enhanced_bs
        else:
            value = info[c]
            cols[c][row] = np.nan if value is None and c not in _TEXT else value


def _row_scores(
    value: RowScores,
    df: pd.DataFrame,
    bars: pd.DataFrame,
    flipped: bool,
    name: str,
    need: int,
) -> np.ndarray | None:
    """Per-row scores in the bars' order, float64 ``(n,)``, checked on the scored rows."""
    if value is None:
        return None
    n = len(df)
    if isinstance(value, pd.Series):
        if len(value) != n or not value.index.equals(df.index):
            raise DataError(
                f"{name} is a Series whose index is not the bars frame's ({len(value)} rows "
                f"against {n}); pass it on the frame's index, or as an array in row order"
            )
        value = value.to_numpy()
    if np.ndim(value) == 0:
        rows = np.full(n, _number(value, name), dtype=np.float64)
    else:
        rows = _numbers(value, name, n)
    if flipped:
        rows = rows[::-1]
    bad = ~((rows >= 0.0) & (rows <= 100.0))  # NaN too
    bad[: need - 1] = False  # rows the model does not score may hold anything
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{name} of the bar at {bars.index[i]} must be a number in 0..100, "
            f"got {float(rows[i])!r}"
        )
    return rows


def _number(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"{name} must be a number in 0..100, got {value!r}") from None


def _numbers(value: Any, name: str, n: int) -> np.ndarray:
    try:
        rows = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{name} must hold numbers in 0..100, one per row") from None
    if rows.shape != (n,):
        raise DataError(f"{name} has shape {rows.shape}; need one score per row ({n},)")
    return rows
