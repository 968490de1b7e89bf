"""Models: LSTM, TFT and their stacked, calibrated SignalModel (torch); GARCH regime, Kelly
sizing and score fusion (numpy).

Importing this package does not import torch: the torch models load on first attribute access
(``mlsignal.models.SignalModel``), so a remote-only host can use garch, kelly and fusion.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mlsignal.models.fusion import FusionConfig, fuse, fuse_batch
from mlsignal.models.garch import (
    GarchParams,
    classify_regime,
    classify_regime_batch,
    fit_garch,
    garch_forecast,
    garch_forecast_batch,
)
from mlsignal.models.kelly import (
    KellyConfig,
    KellyParams,
    fit_kelly_params,
    kelly_fraction,
    kelly_fraction_batch,
)
from mlsignal.models.stack import apply_calibration, apply_stack, fit_calibration, fit_stack

if TYPE_CHECKING:
    from mlsignal.models.lstm import LSTMClassifier, LSTMConfig
    from mlsignal.models.signal_model import SignalModel, SignalModelConfig
    from mlsignal.models.tft import TemporalFusionTransformer, TFTConfig

_LAZY = {
    "LSTMClassifier": "mlsignal.models.lstm",
    "LSTMConfig": "mlsignal.models.lstm",
    "TFTConfig": "mlsignal.models.tft",
    "TemporalFusionTransformer": "mlsignal.models.tft",
    "SignalModel": "mlsignal.models.signal_model",
    "SignalModelConfig": "mlsignal.models.signal_model",
}

__all__ = [
    "FusionConfig",
    "GarchParams",
    "KellyConfig",
    "KellyParams",
    "LSTMClassifier",
    "LSTMConfig",
    "SignalModel",
    "SignalModelConfig",
    "TFTConfig",
    "TemporalFusionTransformer",
    "apply_calibration",
    "apply_stack",
    "classify_regime",
    "classify_regime_batch",
    "fit_calibration",
    "fit_garch",
    "fit_kelly_params",
    "fit_stack",
    "fuse",
    "fuse_batch",
    "garch_forecast",
    "garch_forecast_batch",
    "kelly_fraction",
    "kelly_fraction_batch",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mlsignal.models' has no attribute {name!r}")
