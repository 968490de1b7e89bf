"""Plain baselines beside the bundle's models: logistic regression and gradient boosting.

They are fitted on the bundle's own training data (the manifest's data set, symbols and
span): the samples whose bar lies inside the training span and whose label ends by its last
bar, with the bundle's feature schema and labels, so they never see an evaluated bar's
outcome in a forward test. Then they score the evaluated bars' feature windows. If the deep
models cannot beat these, their extra machinery buys nothing on this data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlsignal.errors import MLSignalError
from mlsignal.evaluate.periods import TrainingSpan
from mlsignal.features import FeatureSchema, feature_windows
from mlsignal.training.baselines import BASELINES, fit_baselines, predict_baselines
from mlsignal.training.dataset import Dataset, build_dataset
from mlsignal.training.labels import LabelConfig

#: Fewer training samples than this: the baselines are left out (too few to fit).
MIN_SAMPLES = 100


@dataclass(frozen=True)
class Baselines:
    """Fitted baselines (``models`` empty when left out) and what the report says of them."""

    models: dict[str, Any]
    info: dict[str, Any]

    def score(
        self, bars: pd.DataFrame, ends: np.ndarray, schema: FeatureSchema
    ) -> dict[str, np.ndarray]:
        """P(label 1) ``(len(ends),)`` of each baseline on one symbol's bars at ``ends``."""
        if not self.models:
            return {}
        return predict_baselines(self.models, feature_windows(bars, ends, schema))


def fit_on_training_data(
    span: TrainingSpan | None, schema: FeatureSchema, labels: LabelConfig, seed: int = 0
) -> Baselines:
    """Fit :data:`BASELINES` on the training samples of ``span`` (see the module docstring).

    Never raises for missing or unusable training data: the baselines are then left out and
    ``info["reason"]`` says why (the report shows it among its warnings).
    """
    if span is None:
        return _left_out("the bundle records no training span")
    if not span.data:
        return _left_out("the bundle records no training data set")
    try:
        ds = training_samples(span, schema, labels)
    except (MLSignalError, OSError, ValueError) as e:
        return _left_out(f"its training data {span.data!r} could not be loaded or used ({e})")
    if len(ds) < MIN_SAMPLES or np.unique(ds.y).size < 2:
        return _left_out(f"only {len(ds)} training samples in the span (one class or too few)")
    models = fit_baselines(ds.X, ds.y, seed)
    info = {
        "fitted": True,
        "models": list(BASELINES),
        "what": "logistic regression (standardised, L2) and histogram gradient boosting on the "
        "last bar's features and their window means; fitted here on the bundle's training "
        "samples, true labels",
        "data": span.data,
        "samples": len(ds),
        "first": str(np.datetime_as_string(ds.ts.min(), "s")),
        "last": str(np.datetime_as_string(ds.ts.max(), "s")),
        "base_rate": float(np.mean(ds.y)),
    }
    return Baselines(models, info)


def _left_out(reason: str) -> Baselines:
    return Baselines({}, {"fitted": False, "reason": f"baselines left out: {reason}"})


def training_samples(span: TrainingSpan, schema: FeatureSchema, labels: LabelConfig) -> Dataset:
    """Windows and labels of the samples of ``span``: bars inside it, labels ending by its end.

    Each symbol is cut at the span's last timestamp (so no label runs past it) and, for speed,
    a warm-up before its first: the windows and labels equal those of the whole series.
    """
    from mlsignal.data import load_dataset

    bars = load_dataset(span.data)
    if span.symbols:
        bars = {s: b for s, b in bars.items() if s in span.symbols}
    warmup = max(schema.lookback, labels.vol_window + 1)
    cut = {s: _cut(b, span, warmup) for s, b in bars.items()}
    cut = {s: b for s, b in cut.items() if len(b)}
    ds = build_dataset(cut, schema, labels)
    return ds.subset(np.flatnonzero(ds.ts >= span.start.to_datetime64()))


def _cut(bars: pd.DataFrame, span: TrainingSpan, warmup: int) -> pd.DataFrame:
    ts = bars.index.values
    first = int(np.searchsorted(ts, span.start.to_datetime64(), side="left"))
    last = int(np.searchsorted(ts, span.end.to_datetime64(), side="right"))
    return bars.iloc[max(0, first - warmup) : last]


def add_baseline_columns(
    table: pd.DataFrame,
    baselines: Baselines,
    bars_by_symbol: Mapping[str, pd.DataFrame],
    selected: Mapping[str, np.ndarray],
    schema: FeatureSchema,
) -> pd.DataFrame:
    """``table`` (rows per symbol in ``selected`` order) with a column per fitted baseline."""
    if not baselines.models:
        return table
    parts = [baselines.score(bars_by_symbol[s], e, schema) for s, e in selected.items()]
    out = table.copy()
    at = out.columns.get_loc("p_tft") + 1
    for k, name in enumerate(baselines.models):
        out.insert(at + k, name, np.concatenate([p[name] for p in parts]))
    return out
