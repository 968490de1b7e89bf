"""No-skill controls: the same numbers with the model's information destroyed.

Every shuffle moves whole blocks of consecutive bars within each symbol
(:func:`~mlsignal.training.skill.block_permutation`), so overlapping labels and serially
dependent returns keep their dependence and the control is as noisy as no skill really is:

- labels: the evaluated labels (and forward returns) moved in blocks, scored against the real
  model outputs;
- ``bull_prob``: each symbol's series moved in blocks, then passed through the same fusion
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
from mlsignal.training.skill import block_permutation


def shuffle_blocks(
    groups: np.ndarray, values: np.ndarray, block: int, rng: np.random.Generator
) -> np.ndarray:
    """``values`` (N,) moved in whole blocks of ``block`` consecutive rows within each group
    (symbol; its rows in time order), so each symbol keeps its own values and their runs."""
    return np.asarray(values)[block_permutation(np.asarray(groups), block, rng)]


def rescore(bundle: Bundle, frame: pd.DataFrame, bull_prob: np.ndarray) -> pd.DataFrame:
    """Enhanced scores and Kelly of ``frame``'s bars had the model said ``bull_prob``.

    ``frame`` has the columns ``ss``, ``bs`` and ``regime`` of :func:`score_bars`; the result
    has ``enhanced_ss``, ``enhanced_bs``, ``kelly`` and ``kelly_side``, aligned with it.
    """
    ess, ebs = fuse_batch(frame["ss"].to_numpy(), frame["bs"].to_numpy(), bull_prob, bundle.fusion)
    kelly, side = kelly_fraction_batch(
        bull_prob,
        list(frame["regime"]),
        bundle.kelly_params,
        bundle.kelly_config,
        bundle.fusion.kelly_base_rate,  # as a live call sizes it
    )
    return pd.DataFrame(
        {"enhanced_ss": ess, "enhanced_bs": ebs, "kelly": kelly, "kelly_side": side},
        index=frame.index,
    )
