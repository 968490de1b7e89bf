"""No-skill controls: the same numbers with the model's information destroyed.

- labels: the evaluated labels permuted (seeded), scored against the real ``bull_prob``;
- ``bull_prob``: each symbol's series permuted in time, then passed through the same fusion
  (:func:`~mlsignal.models.fusion.fuse_batch`) and Kelly sizing
  (:func:`~mlsignal.models.kelly.kelly_fraction_batch`) as a live call, with the bar's own
  rule scores and regime. A model whose enhanced backtest is no better than these has shown
  nothing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlsignal.bundle import Bundle
from mlsignal.models.fusion import fuse_batch
from mlsignal.models.kelly import kelly_fraction_batch


def shuffle_within(groups: np.ndarray, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``values`` permuted within each group (symbol), so each keeps its own distribution."""
    out = np.array(values, copy=True)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        out[idx] = values[rng.permutation(idx)]
    return out


def rescore(bundle: Bundle, frame: pd.DataFrame, bull_prob: np.ndarray) -> pd.DataFrame:
    """Enhanced scores and Kelly of ``frame``'s bars had the model said ``bull_prob``.

    ``frame`` has the columns ``ss``, ``bs`` and ``regime`` of :func:`score_bars`; the result
    has ``enhanced_ss``, ``enhanced_bs``, ``kelly`` and ``kelly_side``, aligned with it.
    """
    ess, ebs = fuse_batch(frame["ss"].to_numpy(), frame["bs"].to_numpy(), bull_prob, bundle.fusion)
    kelly, side = kelly_fraction_batch(
        bull_prob, list(frame["regime"]), bundle.kelly_params, bundle.kelly_config
    )
    return pd.DataFrame(
        {"enhanced_ss": ess, "enhanced_bs": ebs, "kelly": kelly, "kelly_side": side},
        index=frame.index,
    )
