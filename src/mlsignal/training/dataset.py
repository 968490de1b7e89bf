"""From bars of one or many symbols to a training set on one global timeline."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlsignal.errors import InsufficientDataError
from mlsignal.features import DEFAULT_SCHEMA, FeatureSchema, feature_windows, valid_ends
from mlsignal.training.labels import LabelConfig, triple_barrier_labels


@dataclass(frozen=True)
class Dataset:
    """Windows, labels and positions of every usable bar of every symbol.

    Shapes: ``X`` (N, T, F) float32; ``y``, ``fwd`` (N,); ``symbol`` (N,) index into
    ``symbols``; ``start``/``end`` (N,) positions on the global timeline of the sample's bar
    and of the last bar its label uses; ``ts`` (N,) the sample's bar timestamp.
    """

    X: np.ndarray
    y: np.ndarray
    fwd: np.ndarray
    symbol: np.ndarray
    start: np.ndarray
    end: np.ndarray
    ts: np.ndarray
    symbols: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> Dataset:
        """The samples at ``idx`` (same symbols)."""
        return Dataset(
            self.X[idx],
            self.y[idx],
            self.fwd[idx],
            self.symbol[idx],
            self.start[idx],
            self.end[idx],
            self.ts[idx],
            self.symbols,
        )


def build_dataset(
    bars_by_symbol: Mapping[str, pd.DataFrame],
    schema: FeatureSchema = DEFAULT_SCHEMA,
    labels: LabelConfig | None = None,
    max_samples_per_symbol: int | None = None,
) -> Dataset:
    """Feature windows and triple-barrier labels for every bar that has both.

    ``max_samples_per_symbol`` keeps only the latest samples of each symbol (for tests).
    """
    labels = labels or LabelConfig()
    timeline = np.unique(np.concatenate([b.index.values for b in bars_by_symbol.values()]))
    parts = []
    for k, (name, bars) in enumerate(bars_by_symbol.items()):
        y, fwd = triple_barrier_labels(bars["close"].to_numpy(), labels)
        ends = valid_ends(len(bars), schema)
        ends = ends[np.isfinite(y[ends])]
        if max_samples_per_symbol is not None:
            ends = ends[-max_samples_per_symbol:]
        if len(ends) == 0:
            raise InsufficientDataError(
                f"{name}: {len(bars)} bars give no labelled window; need more than "
                f"{schema.lookback + labels.horizon} bars"
            )
        pos = np.searchsorted(timeline, bars.index.values)
        parts.append(
            (
                feature_windows(bars, ends, schema),
                y[ends].astype(np.float32),
                fwd[ends],
                np.full(len(ends), k),
                pos[ends],
                pos[ends + labels.horizon],
                bars.index.values[ends],
            )
        )
    cols = [np.concatenate(c) for c in zip(*parts, strict=True)]
    order = np.argsort(cols[4], kind="stable")  # global time order
    return Dataset(*(c[order] for c in cols), symbols=tuple(bars_by_symbol))
