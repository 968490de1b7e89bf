"""How much the model moved the trader's scores: the fusion's footprint on every evaluated bar.

A model without information should leave ``ss``/``bs`` where the rules put them and keep
Kelly flat. This section measures what it did instead, pooled and per symbol: the mean
absolute change of each score (score points), the share of bars Kelly sized long, short or
flat, and the mean ``bull_prob`` beside the training base rate the fusion is centred on.
A mean ``bull_prob`` away from the base rate on every bar is a constant tilt, not a signal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

#: Kelly sides, in table order.
SIDES = ("flat", "long", "short")


def fusion_effect(table: pd.DataFrame, base_rate: float) -> dict[str, Any]:
    """The footprint of the fusion on ``table`` (rows of :func:`score_bars` with ``symbol``),
    pooled and per symbol; ``base_rate`` is the bundle's training base rate (0.5 when the
    bundle records none)."""
    return {
        "what": "mean |enhanced - raw| score points per bar, Kelly sides as shares of bars, "
        "mean bull_prob against the training base rate the fusion is centred on",
        "base_rate": float(base_rate),
        "pooled": footprint(table, base_rate),
        "per_symbol": {
            str(s): footprint(g, base_rate) for s, g in table.groupby("symbol", sort=False)
        },
    }


def footprint(frame: pd.DataFrame, base_rate: float) -> dict[str, Any]:
    """One row of :func:`fusion_effect` for the bars of ``frame``."""
    side = frame["kelly_side"].astype(str).to_numpy()
    p = frame["bull_prob"].to_numpy(np.float64)
    out: dict[str, Any] = {
        "bars": len(frame),
        "mean_abs_delta_bs": _mean_abs(frame["enhanced_bs"], frame["bs"]),
        "mean_abs_delta_ss": _mean_abs(frame["enhanced_ss"], frame["ss"]),
    }
    out |= {f"kelly_{s}": float(np.mean(side == s)) if len(side) else float("nan") for s in SIDES}
    out["mean_bull_prob"] = float(p.mean()) if len(p) else float("nan")
    out["base_rate"] = float(base_rate)
    out["mean_bull_prob_minus_base_rate"] = out["mean_bull_prob"] - float(base_rate)
    return out


def _mean_abs(a: pd.Series, b: pd.Series) -> float:
    d = np.abs(a.to_numpy(np.float64) - b.to_numpy(np.float64))
    return float(d.mean()) if len(d) else float("nan")
