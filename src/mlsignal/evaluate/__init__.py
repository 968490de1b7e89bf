"""Out-of-sample evaluation of a bundle: probability metrics, reliability, a cost-aware
backtest of raw against enhanced signals, shuffled controls, plots and an HTML report."""

from __future__ import annotations

from mlsignal.evaluate.run import EvalOptions, EvalResult, evaluate_bundle

__all__ = ["EvalOptions", "EvalResult", "evaluate_bundle"]
