"""Writing the report: ``metrics.json``, ``signals.csv``, the PNG plots and ``index.html``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsignal.evaluate import plots
from mlsignal.evaluate.html import render_html

#: Files every report directory holds.
REPORT_FILES = (
    "index.html",
    "metrics.json",
    "signals.csv",
    "reliability.png",
    "bull_prob_hist.png",
    "equity.png",
    "auc_null.png",
)


def jsonable(obj: Any) -> Any:
    """``obj`` with NaN/inf as ``None`` and numpy scalars as Python numbers (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_report(
    out: Path,
    metrics: dict[str, Any],
    table: pd.DataFrame,
    cls_extra: dict[str, Any],
    curves: dict[str, Any],
) -> Path:
    """Write every file of :data:`REPORT_FILES` into ``out`` (created) and return ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "signals.csv", index=False)
    cls = metrics["classification"]
    images = {
        "reliability": plots.plot_reliability(
            cls["reliability"], cls["control_reliability"], out / "reliability.png"
        ),
        "histogram": plots.plot_histogram(
            cls_extra["bull_prob"], cls_extra["y"], out / "bull_prob_hist.png"
        ),
        "equity": plots.plot_equity(curves, out / "equity.png"),
        "auc_null": plots.plot_null(
            cls_extra["null_auc"],
            cls_extra["observed_auc"],
            out / "auc_null.png",
            cls_extra["block"],
        ),
    }
    metrics["files"] = {k: p.name for k, p in images.items()} | {
        "signals": "signals.csv",
        "html": "index.html",
    }
    (out / "metrics.json").write_text(
        json.dumps(jsonable(metrics), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    (out / "index.html").write_text(render_html(metrics, images), encoding="utf-8")
    return out
