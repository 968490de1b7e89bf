"""Is there skill? Block permutation nulls for AUC and IC, and a verdict in words.

Labels of neighbouring bars overlap (a 5-bar label shares 4 bars with the next one), so they
are not independent: shuffling them one by one (an i.i.d. permutation) destroys that
dependence and gives a null distribution that is too narrow, and noise then reads as skill.
A *block* permutation cuts each symbol's series into consecutive blocks of ``block`` bars
(default :func:`default_block`: ``max(20, 4 * horizon)``, at least the label horizon) and
shuffles whole blocks, which keeps the dependence inside a block.

The verdict combines the nulls with the Brier score against the base rate:

- ``skill``: AUC or IC above its block null at ``alpha / 2`` each (one-sided; Bonferroni, so
  that two chances stay within ``alpha``), and a Brier score no worse than always predicting
  the base rate;
- ``worse than base rate``: a Brier score worse than the base rate by more than
  :data:`BRIER_TOLERANCE` (relative) and no ranking skill: the probabilities hurt;
- ``no skill detected``: anything else.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlsignal.errors import DataError

#: The three verdicts, in words.
VERDICTS = ("skill", "no skill detected", "worse than base rate")
#: Brier skill below minus this counts as worse than the base rate (1 % of its Brier score).
BRIER_TOLERANCE = 0.01
#: One-sided significance level of the nulls.
ALPHA = 0.05


def default_block(horizon: int) -> int:
    """The block length for label horizon ``horizon``: ``max(20, 4 * horizon)`` bars."""
    if horizon < 1:
        raise DataError(f"label horizon must be >= 1 bar, got {horizon}")
    return max(20, 4 * int(horizon))


def block_permutation(groups: np.ndarray, block: int, rng: np.random.Generator) -> np.ndarray:
    """Indices that shuffle whole blocks of ``block`` consecutive rows within each group.

    ``groups`` (N,) labels each row with its symbol, rows of one symbol in time order. The
    result ``idx`` (N,) is a permutation: ``values[idx]`` moves each block of a symbol's
    series to another block's place of the same symbol (the last, shorter block included).
    """
    if block < 1:
        raise DataError(f"block must be >= 1, got {block}")
    groups = np.asarray(groups)
    idx = np.arange(len(groups))
    out = idx.copy()
    for g in dict.fromkeys(groups.tolist()):
        rows = idx[groups == g]
        pieces = [rows[i : i + block] for i in range(0, len(rows), block)]
        order = rng.permutation(len(pieces))
        out[rows] = np.concatenate([pieces[k] for k in order])
    return out


def information_coefficient(p: np.ndarray, fwd: np.ndarray) -> float:
    """Spearman rank correlation of ``p`` with the forward return ``fwd`` (NaN if either is
    constant): does a higher bull_prob go with a higher return?"""
    from scipy.stats import spearmanr

    p, fwd = np.asarray(p, np.float64), np.asarray(fwd, np.float64)
    if p.size < 3 or np.ptp(p) == 0 or np.ptp(fwd) == 0:
        return float("nan")
    return float(spearmanr(p, fwd).statistic)


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if np.unique(y).size == 2 else float("nan")


def _finite_ic(p: np.ndarray, fwd: np.ndarray) -> float:
    # Rows without a return are dropped after the permutation (it moves them too).
    ok = np.isfinite(fwd)
    return information_coefficient(p[ok], fwd[ok])


def _summary(observed: float, null: np.ndarray) -> dict[str, float]:
    null = null[np.isfinite(null)]
    if not np.isfinite(observed) or null.size == 0:
        return {"observed": observed, "null_mean": float("nan"), "null_q05": float("nan"),
                "null_q95": float("nan"), "p_value": float("nan")}  # fmt: skip
    return {
        "observed": observed,
        "null_mean": float(null.mean()),
        "null_q05": float(np.quantile(null, 0.05)),
        "null_q95": float(np.quantile(null, 0.95)),
        "p_value": float((1 + (null >= observed).sum()) / (1 + null.size)),
    }


def skill_nulls(
    y: np.ndarray,
    p: np.ndarray,
    fwd: np.ndarray | None,
    groups: np.ndarray,
    block: int,
    n_permutations: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Block permutation nulls of AUC (``p`` against labels ``y``) and IC (``p`` against
    forward returns ``fwd``; skipped when ``None``). Rows in time order within each group.

    The labels (and returns) are moved in blocks against the fixed ``p``. Returns the
    method in words, the block, and per statistic its observed value, the null's mean,
    5 % and 95 % quantiles and the one-sided p-value ``(1 + #{null >= observed}) / (1 + n)``.
    Also returns ``null_auc``, the list of null AUCs (for a plot).
    """
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    groups = np.asarray(groups)
    if not (y.shape == p.shape == groups.shape) or y.ndim != 1:
        raise DataError(f"y {y.shape}, p {p.shape}, groups {groups.shape} must be (N,) alike")
    rng = np.random.default_rng(seed)
    perms = [block_permutation(groups, block, rng) for _ in range(max(0, n_permutations))]
    null_auc = np.array([_auc(y[i], p) for i in perms])
    out: dict[str, Any] = {
        "method": f"block permutation: blocks of {block} bars shuffled within each symbol",
        "block": int(block),
        "n_permutations": len(perms),
        "auc": _summary(_auc(y, p), null_auc),
    }
    out["null_auc"] = [float(v) for v in null_auc[:200]]
    if fwd is not None:
        fwd = np.asarray(fwd, np.float64)
        null_ic = np.array([_finite_ic(p, fwd[i]) for i in perms])
        out["ic"] = _summary(_finite_ic(p, fwd), null_ic)
    return out


def verdict(
    nulls: dict[str, Any],
    brier: float,
    brier_base: float,
    alpha: float = ALPHA,
    reference: str = "base rate",
) -> dict[str, str]:
    """``{"verdict": one of VERDICTS, "why": a sentence}`` from :func:`skill_nulls` and the
    Brier score of the probabilities against ``brier_base``, that of a constant forecast
    (``reference`` names it: the sample's base rate ``b (1 - b)``, or the bundle's base rate
    m, ``b (1 - b) + (b - m)^2``, which a forecaster knows beforehand)."""
    tests = {k: nulls[k] for k in ("auc", "ic") if k in nulls}
    level = alpha / max(1, len(tests))  # Bonferroni: AUC or IC passing is two chances
    passed = [k for k, t in tests.items() if np.isfinite(t["p_value"]) and t["p_value"] < level]
    shown = ", ".join(
        f"{k.upper()} {t['observed']:.3f} (block null 95% {t['null_q95']:.3f}, "
        f"p {t['p_value']:.3f})"
        for k, t in tests.items()
    )
    bss = 1.0 - brier / brier_base if brier_base > 0 else float("nan")
    brier_txt = f"Brier {brier:.4f} vs {brier_base:.4f} for {reference} (skill score {bss:+.4f})"
    if passed and not bss < -BRIER_TOLERANCE:
        return {"verdict": "skill", "why": f"{shown}; {brier_txt}"}
    if bss < -BRIER_TOLERANCE and not passed:
        return {
            "verdict": "worse than base rate",
            "why": f"{brier_txt}: always predicting the {reference} would do better; {shown}",
        }
    reason = "no statistic beats its block null" if not passed else "ranking beats the null "
    if passed:
        reason += f"but the probabilities are worse than the {reference}"
    return {"verdict": "no skill detected", "why": f"{reason} at {alpha:g}: {shown}; {brier_txt}"}
