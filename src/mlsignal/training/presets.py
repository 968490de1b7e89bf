"""Named training presets: ``tiny`` (tests), ``quick`` (2 CPU cores, minutes), ``full`` (GPU)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mlsignal.errors import ConfigError
from mlsignal.training.fit import FitConfig
from mlsignal.training.labels import LabelConfig


@dataclass(frozen=True)
class Preset:
    """Everything that sizes a training run. ``embargo`` in bars of the global timeline."""

    name: str
    n_folds: int
    lstm_fit: FitConfig
    tft_fit: FitConfig
    labels: LabelConfig = field(default_factory=LabelConfig)
    embargo: int = 5
    initial_train_frac: float = 0.4
    val_frac: float = 0.15
    max_samples_per_symbol: int | None = None
    n_golden: int = 16
    #: Latest share of the timeline kept from the final models to fit stack + calibration.
    calib_frac: float = 0.2

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (recorded in the manifest)."""
        return asdict(self)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "tiny",
        n_folds=3,
        lstm_fit=FitConfig(epochs=2, lr=3e-3, patience=2),
        tft_fit=FitConfig(epochs=2, batch_size=128, lr=2e-3, patience=2),
        max_samples_per_symbol=900,
        n_golden=8,
    ),
    "quick": Preset(
        "quick",
        n_folds=3,
        lstm_fit=FitConfig(epochs=5, lr=2e-3, patience=2),
        # The TFT is cheaper per sample on CPU at batch 128 than at 256 (cache-sized steps).
        tft_fit=FitConfig(epochs=5, batch_size=128, lr=1e-3, patience=2),
    ),
    "full": Preset(
        "full",
        n_folds=6,
        lstm_fit=FitConfig(epochs=40, lr=1e-3, patience=6),
        tft_fit=FitConfig(epochs=40, lr=5e-4, patience=6),
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``, or a :class:`ConfigError` listing the choices."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
