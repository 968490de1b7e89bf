"""Scores of every evaluated bar through the very code path of ``enhance_signal``.

Each bar ``t`` becomes one :class:`~mlsignal.pipeline.SignalRequest` holding the bars up to
``t`` (the last ``min_bars`` of them, which is all the enhancer ever looks at), with ``ss`` and
``bs`` left to the built-in rules. The requests go through
:meth:`MLSignalEnhancer.enhance_batch` in chunks: the same trimming, rule scores, feature
window, runtime forward, GARCH regime, Kelly and fusion as a live call, with one forward pass
per chunk instead of one per bar. Labels come from :mod:`mlsignal.training.labels` with the
bundle's label settings.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlsignal.errors import MLSignalError
from mlsignal.pipeline import SignalRequest
from mlsignal.training.labels import LabelConfig, triple_barrier_labels

#: Per-bar columns of :func:`score_bars`, in order.
SCORE_COLUMNS = (
    "ss", "bs", "enhanced_ss", "enhanced_bs", "bull_prob", "p_lstm", "p_tft",
    "kelly", "kelly_side", "regime", "regime_vol",
)  # fmt: skip


def score_bars(
    enhancer: Any, symbol: str, bars: pd.DataFrame, ends: np.ndarray, batch_size: int = 256
) -> pd.DataFrame:
    """Enhance the bars at positions ``ends`` of ``bars`` (one symbol), ``batch_size`` a call.

    Returns a DataFrame indexed by bar timestamp with :data:`SCORE_COLUMNS`. Every row equals
    ``enhancer.enhance_signal(bars.iloc[: t + 1])`` for its bar ``t``.
    """
    need = enhancer.min_bars
    ends = np.asarray(ends, dtype=np.int64)
    if ends.size and ends.min() < need - 1:
        raise MLSignalError(f"{symbol}: bar {int(ends.min())} has fewer than {need} bars before it")
    rows: list[dict[str, Any]] = []
    for i in range(0, len(ends), batch_size):
        chunk = ends[i : i + batch_size]
        requests = [SignalRequest(symbol, bars.iloc[e + 1 - need : e + 1]) for e in chunk]
        for r in enhancer.enhance_batch(requests):
            rows.append(_row(symbol, r))
    return pd.DataFrame(rows, index=bars.index[ends], columns=list(SCORE_COLUMNS))


def _row(symbol: str, result: Any) -> dict[str, Any]:
    info = result.ml_info
    if info["source"] != "local":
        raise MLSignalError(
            f"{symbol}: the model did not run for bar {info['bar_ts']} (source "
            f"{info['source']}: {info.get('fallback_reason')}); refusing to evaluate rule "
            "scores as model output"
        )
    return {
        "ss": info["rule_ss"],
        "bs": info["rule_bs"],
        "enhanced_ss": result.enhanced_ss,
        "enhanced_bs": result.enhanced_bs,
        "bull_prob": info["bull_prob"],
        "p_lstm": info["p_lstm"],
        "p_tft": info["p_tft"],
        "kelly": info["kelly"],
        "kelly_side": info["kelly_side"],
        "regime": info["regime"],
        "regime_vol": info["regime_vol"],
    }


def label_bars(bars: pd.DataFrame, labels: LabelConfig) -> pd.DataFrame:
    """Per bar: the triple-barrier ``label`` (NaN for the last ``h`` bars), the ``h``-bar
    forward log return ``fwd`` and ``next_ret``, the simple return from this bar's close to
    the next one's (NaN on the last bar): what a position taken at this close earns."""
    close = bars["close"].to_numpy(dtype=np.float64)
    y, fwd = triple_barrier_labels(close, labels)
    next_ret = np.full(len(close), np.nan)
    next_ret[:-1] = close[1:] / close[:-1] - 1.0
    return pd.DataFrame({"label": y, "fwd": fwd, "next_ret": next_ret}, index=bars.index)
