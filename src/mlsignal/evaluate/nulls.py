"""Is there skill? Block permutation nulls of every model output, and the report's verdict.

Neighbouring labels overlap (a 5-bar label shares 4 bars with the next one) and returns are
serially dependent, so the nulls shuffle whole blocks of consecutive bars within each symbol
(:func:`mlsignal.training.skill.block_permutation`), not single bars: an i.i.d. shuffle gives
a band that is too narrow, and noise then reads as skill. The verdict is
:func:`mlsignal.training.skill.verdict` for ``bull_prob`` pooled, with the caveats that
decide how much it is worth (not a forward test, few bars, a plain baseline as good).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mlsignal.bundle import Bundle
from mlsignal.errors import ConfigError
from mlsignal.training.labels import LabelConfig
from mlsignal.training.skill import default_block, skill_nulls, verdict

#: What each verdict means for a trader, in plain words (shown first in the report).
PLAIN = {
    "skill": (
        "Skill detected on these bars: bull_prob ranks the outcomes better than the block "
        "permutation null at the 5 % level, and its probabilities are no worse than always "
        "predicting the base rate. One test on one period is evidence, not a proven trading "
        "edge: check each symbol, the periods over time, the baselines and the backtest after "
        "costs before you trust it."
    ),
    "no skill detected": (
        "No skill detected: on these bars bull_prob does not beat chance (block permutation "
        "null) together with the base-rate Brier score. Treat the enhanced scores and the Kelly "
        "sizes as noise around your rule signals, not as an edge."
    ),
    "worse than base rate": (
        "Worse than the base rate: always predicting the share of up-labels would have scored "
        "better than bull_prob on these bars. The model's probabilities hurt here; do not let "
        "them move your scores or size your positions."
    ),
}


def null_block(bundle: Bundle, opts: Any) -> int:
    """Bars per block of the nulls: ``opts.block``, or ``max(20, 4 * horizon)`` of the bundle's
    labels. A block shorter than the label horizon is refused: it would cut overlapping labels
    apart and give a null too narrow to trust."""
    horizon = LabelConfig(**bundle.config.get("labels", {})).horizon
    block = opts.block if opts.block is not None else default_block(horizon)
    if block < horizon:
        raise ConfigError(
            f"null block {block} bars is shorter than the label horizon {horizon}: the null "
            "would be too narrow (noise would read as skill); use at least the horizon"
        )
    return int(block)


def null_section(
    lab: pd.DataFrame, models: Sequence[str], block: int, opts: Any
) -> tuple[dict[str, Any], list[float]]:
    """Block nulls of AUC and IC for each column of ``models`` of the labelled rows ``lab``
    (each symbol's rows in time order). Returns the section and the null AUCs of
    ``bull_prob`` (for the plot)."""
    y = lab["label"].to_numpy(np.float64)
    fwd = lab["fwd"].to_numpy(np.float64)
    groups = lab["symbol"].to_numpy()
    n, seed = opts.permutations, opts.seed + 1
    runs = {
        m: skill_nulls(y, lab[m].to_numpy(np.float64), fwd, groups, block, n, seed) for m in models
    }
    first = runs[models[0]]
    section = {
        "method": first["method"] + "; labels and forward returns move, probabilities stay",
        "block": block,
        "n_permutations": first["n_permutations"],
        "auc": {m: r["auc"] for m, r in runs.items()},
        "ic": {m: r["ic"] for m, r in runs.items()},
    }
    return section, runs["bull_prob"]["null_auc"]


def report_verdict(
    classification: Mapping[str, Any],
    selection: Mapping[str, Any],
    few: int,
    base_rate: float,
) -> dict[str, Any]:
    """The verdict on ``bull_prob`` pooled, its reason, its meaning in plain words and the
    caveats that weaken it (``few``: below this many labelled bars the sample is small).

    The Brier reference is the forecast a model without skill makes: the bundle's
    ``base_rate`` on every bar (known before the period), not the period's own base rate
    (known only afterwards). A bundle that says its base rate everywhere is then "no skill
    detected", however far the period's share of up-labels drifted from it."""
    nulls, pooled = classification["nulls"], classification["pooled"]
    m = pooled["bull_prob"]
    if nulls["n_permutations"] < 1:
        v = {
            "verdict": "no skill detected",
            "why": "no permutation null was computed (--permutations 0), so no skill can be "
            "claimed",
        }
    else:
        tests = {k: nulls[k]["bull_prob"] for k in ("auc", "ic")}
        if not np.isfinite(tests["ic"]["observed"]):
            tests.pop("ic")  # a constant bull_prob has no rank correlation to test
        b = m["base_rate"]
        ref = m["brier_base"] + (b - base_rate) ** 2  # Brier of base_rate on every bar
        words = f"the bundle's base rate ({base_rate:.4f}) on every bar"
        v = verdict(tests, m["brier"], ref, reference=words)
    return {
        "verdict": v["verdict"],
        "plain": PLAIN[v["verdict"]],
        "why": v["why"],
        "caveats": _caveats(v["verdict"], pooled, selection, few),
        "model": "bull_prob",
        "method": nulls["method"],
    }


def _caveats(
    word: str, pooled: Mapping[str, Any], selection: Mapping[str, Any], few: int
) -> list[str]:
    out = []
    if not selection["honest"]:
        out.append(
            f"not a forward out-of-sample test ({selection['status']}): the verdict is weaker "
            "evidence than it reads"
        )
    n = int(pooled["bull_prob"]["n"])
    if n < few:
        out.append(f"only {n} labelled bars: a verdict on so few bars is fragile")
    auc = pooled["bull_prob"]["auc"]
    better = [
        f"{b} (AUC {pooled[b]['auc']:.3f})"
        for b in ("logistic", "boosting")
        if b in pooled and pooled[b]["auc"] >= auc
    ]
    if better and word == "skill":
        out.append(
            f"a plain baseline on the same features ranks as well as bull_prob (AUC {auc:.3f}): "
            + ", ".join(better)
            + "; the deep models add nothing over it here"
        )
    return out
