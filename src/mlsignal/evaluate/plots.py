"""PNG plots of the report (matplotlib with the Agg backend, imported when a plot is drawn)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Colours and line styles of the backtest curves.
_STYLE = {
    "long_only": ("#999999", "-"),
    "raw": ("#1f77b4", "-"),
    "enhanced": ("#d62728", "-"),
    "enhanced_kelly": ("#2ca02c", "-"),
    "control_enhanced": ("#d62728", ":"),
    "control_kelly": ("#2ca02c", ":"),
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def plot_reliability(
    bins: Mapping[str, Sequence[Mapping[str, float]]],
    control: Sequence[Mapping[str, float]],
    path: Path,
) -> Path:
    """Observed frequency against mean predicted probability per bin, for each model, the
    shuffled-label control in grey, and the bull_prob bin counts below."""
    plt = _pyplot()
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(6.5, 7), height_ratios=(3, 1), sharex=True)
    lo = min(b["mean_pred"] for v in bins.values() for b in v)
    hi = max(b["mean_pred"] for v in bins.values() for b in v)
    pad = max(0.02, 0.1 * (hi - lo))
    ax.plot([0, 1], [0, 1], color="black", lw=0.8, label="perfect calibration")
    for name, v in bins.items():
        x = [b["mean_pred"] for b in v]
        y = [b["observed"] for b in v]
        ax.plot(x, y, "o-", lw=2.0 if name == "bull_prob" else 1.0, label=name)
    ax.plot(
        [b["mean_pred"] for b in control],
        [b["observed"] for b in control],
        "s--",
        color="grey",
        label="bull_prob vs shuffled labels",
    )
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylabel("observed frequency of label 1")
    ax.set_title("Reliability (quantile bins; equal values share a bin)")
    ax.legend(fontsize=8)
    main = bins["bull_prob"]
    x, counts = [b["mean_pred"] for b in main], [b["count"] for b in main]
    axc.vlines(x, 0, counts, color="#1f77b4", lw=2)
    axc.plot(x, counts, "o", color="#1f77b4")
    axc.set_ylim(0, max(counts) * 1.15)
    axc.set_xlabel("mean predicted probability in bin")
    axc.set_ylabel("bars (bull_prob)")
    return _save(fig, path)


def plot_histogram(p: np.ndarray, y: np.ndarray, path: Path) -> Path:
    """Histogram of bull_prob, split by the realised label."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    edges = np.histogram_bin_edges(p, bins=30)
    ax.hist(p[y == 1], bins=edges, alpha=0.6, label=f"label 1 (n={int((y == 1).sum())})")
    ax.hist(p[y == 0], bins=edges, alpha=0.6, label=f"label 0 (n={int((y == 0).sum())})")
    ax.axvline(0.5, color="black", lw=0.8)
    ax.set_xlabel("bull_prob")
    ax.set_ylabel("bars")
    ax.set_title("bull_prob histogram by realised label")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_equity(
    curves: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], path: Path
) -> Path:
    """Net equity curves, one panel per symbol and one pooled, every strategy per panel."""
    plt = _pyplot()
    n = len(curves)
    fig, axes = plt.subplots(n, 1, figsize=(8, 3.2 * n), squeeze=False)
    for ax, (panel, strategies) in zip(axes[:, 0], curves.items(), strict=True):
        for name, (ts, eq) in strategies.items():
            color, ls = _STYLE.get(name, (None, "-"))
            ax.plot(ts, eq, ls, color=color, lw=1.2, label=name)
        ax.axhline(1.0, color="black", lw=0.5)
        ax.set_title(f"{panel}: net equity (start 1.0)")
        ax.legend(fontsize=7, ncol=3)
    return _save(fig, path)


def plot_null(null: Sequence[float], observed: float, path: Path, block: int) -> Path:
    """The AUC of bull_prob against labels moved in blocks of ``block`` bars (histogram: the
    block permutation null) and the observed AUC."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    if len(null):
        label = f"{len(null)} block shuffles of labels ({block}-bar blocks)"
        ax.hist(null, bins=30, color="grey", alpha=0.7, label=label)
        ax.axvspan(*np.quantile(null, [0.05, 0.95]), color="grey", alpha=0.12, label="5-95 %")
    if np.isfinite(observed):
        ax.axvline(observed, color="#d62728", lw=2, label=f"observed AUC {observed:.3f}")
    ax.axvline(0.5, color="black", lw=0.8)
    ax.set_xlabel("AUC of bull_prob")
    ax.set_title("What no skill looks like: AUC under block-shuffled labels")
    ax.legend(fontsize=8)
    return _save(fig, path)
