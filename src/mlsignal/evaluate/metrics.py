"""Probability metrics against labels: AUC, Brier (with its base rate), log loss,
reliability bins and per-period blocks. The nulls are block permutations (:mod:`.nulls`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mlsignal.errors import DataError
from mlsignal.training.metrics import classification_metrics

#: The model outputs evaluated, in table order.
PROB_COLUMNS = ("bull_prob", "p_lstm", "p_tft")


def probability_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """:func:`classification_metrics` plus ``brier_base`` (the Brier score of always
    predicting the sample's base rate, ``b (1 - b)``), the Brier skill score
    ``1 - brier / brier_base`` (above 0: better than the base rate) and the expected
    calibration error over 10 equal-count bins."""
    y, p = _checked(y, p)
    m = classification_metrics(y, p)
    base = m["base_rate"]
    m["brier_base"] = float(base * (1.0 - base))
    m["brier_skill"] = float(1.0 - m["brier"] / m["brier_base"]) if 0 < base < 1 else float("nan")
    m["ece"] = expected_calibration_error(y, p)
    return m


def _checked(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if y.shape != p.shape or y.size == 0:
        raise DataError(
            f"labels {y.shape} and probabilities {p.shape} must be non-empty, same size"
        )
    if not np.isin(y, (0.0, 1.0)).all():
        raise DataError("labels must be 0 or 1")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise DataError("probabilities must be finite and within 0..1")
    return y, p


def reliability_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> list[dict[str, float]]:
    """About equal-count bins of ``p`` (edges at its quantiles; equal values always share a
    bin, so a plateau of the calibration map is one bin): per bin its lowest and highest
    probability, the mean predicted probability, the observed frequency of label 1 and the
    count. Equal-count rather than equal-width because calibrated probabilities crowd
    around the base rate."""
    y, p = _checked(y, p)
    edges = np.unique(np.quantile(p, np.linspace(0.0, 1.0, max(1, n_bins) + 1)))
    idx = np.searchsorted(edges[1:-1], p, side="right")  # (N,) bin of each sample
    out = []
    for k in np.unique(idx):
        g = idx == k
        out.append(
            {
                "lo": float(p[g].min()),
                "hi": float(p[g].max()),
                "mean_pred": float(p[g].mean()),
                "observed": float(y[g].mean()),
                "count": int(g.sum()),
            }
        )
    return out


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """Count-weighted mean of ``|observed - mean predicted|`` over :func:`reliability_bins`."""
    bins = reliability_bins(y, p, n_bins)
    n = sum(b["count"] for b in bins)
    return float(sum(b["count"] * abs(b["observed"] - b["mean_pred"]) for b in bins) / n)


def block_metrics(
    ts: np.ndarray, y: np.ndarray, p: np.ndarray, n_blocks: int
) -> list[dict[str, Any]]:
    """Metrics of ``p`` on ``n_blocks`` contiguous periods of equal sample count (time order):
    whether any skill is steady or comes from one stretch of the evaluation period."""
    order = np.argsort(ts, kind="stable")
    out = []
    for g in np.array_split(order, max(1, min(n_blocks, len(order)))):
        if len(g) == 0:
            continue
        m = probability_metrics(y[g], p[g])
        first, last = (
            str(np.datetime_as_string(ts[g].min(), "D")),
            str(np.datetime_as_string(ts[g].max(), "D")),
        )
        out.append({"first": first, "last": last, **m})
    return out
