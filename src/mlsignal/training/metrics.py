"""Out-of-sample classification metrics and their table."""

from __future__ import annotations

import numpy as np

MODEL_ORDER = ("lstm", "tft", "stack", "logistic", "boosting")
METRIC_NAMES = ("auc", "ic", "brier", "log_loss", "hit_rate", "base_rate", "n")


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUC, Brier score, log loss, hit rate (accuracy of ``p > 0.5``), base rate, count."""
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    both = len(np.unique(y)) == 2
    return {
        "auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "hit_rate": float(np.mean((p > 0.5) == (y > 0.5))),
        "base_rate": float(y.mean()),
        "n": float(len(y)),
    }


def format_metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    """A fixed-width text table: one row per model, one column per metric."""
    header = f"{'model':<10}" + "".join(f"{m:>10}" for m in METRIC_NAMES)
    rows = [header, "-" * len(header)]
    order = [k for k in MODEL_ORDER if k in metrics] + [k for k in metrics if k not in MODEL_ORDER]
    for model in order:
        m = metrics[model]
        cells = "".join(
            f"{int(m[k]):>10d}" if k == "n" else f"{m.get(k, float('nan')):>10.4f}"
            for k in METRIC_NAMES
        )
        rows.append(f"{model:<10}{cells}")
    return "\n".join(rows)
