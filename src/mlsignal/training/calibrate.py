"""Stacking and calibration of the models that ship, on data they never saw.

The final LSTM and TFT are trained on every sample before a *calibration segment* (the
latest ``calib_frac`` of the timeline, purged: no training label reaches into it, plus the
embargo). Their outputs on that segment are out of sample for exactly these models, so the
stack and the calibration fitted there describe the bundle's own models (fitting them on the
fold models' outputs and then swapping in refitted models would apply one model's map to
another).

Before a calibration map ships, the segment is asked whether the stack ranks at all: the
stack is cross-fitted on the segment's two halves (each half scored by weights fitted on the
other) and its AUC tested against a block permutation null
(:func:`~mlsignal.training.skill.skill_nulls`). Without skill at ``alpha`` the map is flat at
the segment's base rate: the bundle then says "no information" on every bar, which neutral
fusion turns into unchanged scores and a flat Kelly, instead of shipping a map fitted to
noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mlsignal.models.stack import (
    apply_stack,
    fit_calibration,
    fit_stack,
    flat_knots,
)
from mlsignal.training.skill import skill_nulls


@dataclass(frozen=True)
class Calibration:
    """What goes into the bundle: stack ``(w (2,), b)``, calibration knots ``(x, y)``, the
    base rate (float32-exact) and the manifest's record of how they were fitted."""

    stack: tuple[np.ndarray, float]
    knots: tuple[np.ndarray, np.ndarray]
    base_rate: float
    record: dict[str, Any]


def _cross_fitted(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Stacked probabilities (N,), each half scored by the stack fitted on the other half."""
    half = len(y) // 2
    parts = [(slice(0, half), slice(half, None)), (slice(half, None), slice(0, half))]
    out = np.empty(len(y))
    for score, fit in parts:
        if np.unique(y[fit]).size < 2:  # a degenerate half: no ranking can be shown
            out[score] = y[fit].mean()
            continue
        out[score] = apply_stack(logits[score], *fit_stack(logits[fit], y[fit]))
    return out


def calibrate(
    logits: np.ndarray,
    y: np.ndarray,
    fwd: np.ndarray,
    groups: np.ndarray,
    *,
    block: int,
    n_knots: int,
    alpha: float,
    n_permutations: int = 200,
    seed: int = 0,
) -> Calibration:
    """Fit the stack and the calibration on the calibration segment's samples (time order
    within each symbol): base ``logits (N, 2)`` of the final models, labels ``y (N,)``,
    forward returns ``fwd (N,)`` and symbols ``groups (N,)``."""
    y = np.asarray(y, np.float64)
    base = float(np.float32(y.mean()))
    stack = fit_stack(logits, y)
    nulls = skill_nulls(y, _cross_fitted(logits, y), fwd, groups, block, n_permutations, seed)
    p_auc = nulls["auc"]["p_value"]
    skilled = bool(np.isfinite(p_auc) and p_auc < alpha)
    if skilled:
        knots = fit_calibration(apply_stack(logits, *stack), y, n_knots)
        shipped = "fitted on the segment (the stack ranks above its block null)"
    else:
        knots = flat_knots(base)
        shipped = (
            f"flat at the base rate: the stack shows no ranking skill on the segment "
            f"(block-null p {p_auc:.3f} >= {alpha:g}); bull_prob is the base rate on every bar"
        )
    record = {
        "base_rate": base,
        "stack": {"w": [float(v) for v in stack[0]], "b": stack[1]},
        "skill_test": {k: v for k, v in nulls.items() if k != "null_auc"},
        "alpha": alpha,
        "skilled": skilled,
        "map": shipped,
    }
    return Calibration(stack, knots, base, record)
