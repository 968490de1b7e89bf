"""Feature schema and bars -> feature windows (the same code for training and serving)."""

from __future__ import annotations

from mlsignal.features.batch import feature_windows_many
from mlsignal.features.compute import (
    INDICATOR_LOOKBACK,
    compute_features,
    feature_window,
    feature_windows,
    ohlcv_arrays,
    valid_ends,
)
from mlsignal.features.schema import (
    DEFAULT_SCHEMA,
    FEATURE_CLIP,
    FEATURE_NAMES,
    FEATURE_VERSION,
    FeatureSchema,
)
from mlsignal.features.streaming import FeatureStream, FeatureStreams

__all__ = [
    "DEFAULT_SCHEMA",
    "FEATURE_CLIP",
    "FEATURE_NAMES",
    "FEATURE_VERSION",
    "INDICATOR_LOOKBACK",
    "FeatureSchema",
    "FeatureStream",
    "FeatureStreams",
    "compute_features",
    "feature_window",
    "feature_windows",
    "feature_windows_many",
    "ohlcv_arrays",
    "valid_ends",
]
