"""Scores of every evaluated bar through the very code path of ``enhance_signal``.

The bars go through :meth:`MLSignalEnhancer.score_frame`, with ``ss`` and ``bs`` left to the
built-in rules: for each bar ``t`` the same trimming, rule scores, feature window, runtime
forward, GARCH regime, Kelly and fusion as a live call on the bars up to ``t``, with the
windows and the GARCH filter vectorised and one forward pass per chunk. Labels come from
:mod:`mlsignal.training.labels` with the bundle's label settings.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlsignal.errors import MLSignalError
from mlsignal.training.labels import LabelConfig, triple_barrier_labels

#: Per-bar columns of :func:`score_bars`, in order.
SCORE_COLUMNS = (
    "ss", "bs", "enhanced_ss", "enhanced_bs", "bull_prob", "p_lstm", "p_tft",
    "kelly", "kelly_side", "regime", "regime_vol",
)  # fmt: skip


def score_bars(
    enhancer: Any, symbol: str, bars: pd.DataFrame, ends: np.ndarray, batch_size: int = 256
) -> pd.DataFrame:
    """Enhance the bars at positions ``ends`` of ``bars`` (one symbol), ``batch_size`` a pass.

    Returns a DataFrame indexed by bar timestamp with :data:`SCORE_COLUMNS`. Every row equals
    ``enhancer.enhance_signal(bars.iloc[: t + 1])`` for its bar ``t``: the rows come from
    :meth:`~mlsignal.enhancer.MLSignalEnhancer.score_frame` over the bars from the first
    evaluated one's history to the last evaluated one (vectorised windows and GARCH).
    """
    need = enhancer.min_bars
    ends = np.asarray(ends, dtype=np.int64)
    if ends.size and ends.min() < need - 1:
        raise MLSignalError(f"{symbol}: bar {int(ends.min())} has fewer than {need} bars before it")
    if ends.size == 0:
        return pd.DataFrame(index=bars.index[ends], columns=list(SCORE_COLUMNS))
    lo = int(ends.min()) + 1 - need
    frame = enhancer.score_frame(
        bars.iloc[lo : int(ends.max()) + 1], symbol=symbol, batch_size=batch_size
    ).iloc[ends - lo]
    bad = frame["source"] != "local"
    if bad.any():
        raise MLSignalError(
            f"{symbol}: the model did not run for bar {frame.index[bad.argmax()]} (source "
            f"{frame['source'].iloc[bad.argmax()]}); refusing to evaluate rule scores as model "
            "output"
        )
    out = frame.rename(columns={"rule_ss": "ss", "rule_bs": "bs"})[list(SCORE_COLUMNS)]
    return out.set_axis(bars.index[ends], axis=0)


def label_bars(bars: pd.DataFrame, labels: LabelConfig) -> pd.DataFrame:
    """Per bar: the triple-barrier ``label`` (NaN for the last ``h`` bars), the ``h``-bar
    forward log return ``fwd`` and ``next_ret``, the simple return from this bar's close to
    the next one's (NaN on the last bar): what a position taken at this close earns."""
    close = bars["close"].to_numpy(dtype=np.float64)
    y, fwd = triple_barrier_labels(close, labels)
    next_ret = np.full(len(close), np.nan)
    next_ret[:-1] = close[1:] / close[:-1] - 1.0
    return pd.DataFrame({"label": y, "fwd": fwd, "next_ret": next_ret}, index=bars.index)
