"""Which bars are out of sample for a bundle: the training span from its manifest, purged.

The manifest records ``training.span`` (first and last timestamp of the labelled samples the
models were fitted on), the label horizon ``h`` and the embargo. A bar ``t`` is

- **after** the training period when its label span ``t+1 .. t+h`` begins at least ``h +
  embargo`` bars after the last training sample ``e``: ``t >= e + h + embargo`` (the training
  labels of ``e`` used bars up to ``e + h``; the embargo adds a gap for serial correlation).
  This is the honest, forward (walk-forward) test;
- **before** the training period when its label ends ``embargo`` bars before the first
  training sample ``s``: ``t + h < s - embargo``. The models never saw these bars as targets,
  but were fitted on later data (a backward test: no label leakage, not a forward test);
- otherwise **in sample**.

Positions are counted in each symbol's own bars, by timestamp, so a symbol the bundle was not
trained on is held to the same calendar cut-off (symbols move together on the same dates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlsignal.bundle import Bundle
from mlsignal.errors import BundleError, ConfigError

PERIODS = ("after", "before")


@dataclass(frozen=True)
class TrainingSpan:
    """What the bundle was trained on: sample timestamps, horizon and embargo (bars)."""

    start: pd.Timestamp
    end: pd.Timestamp
    horizon: int
    embargo: int
    symbols: tuple[str, ...]
    data: str
    holdout_bars: int
    shuffled_labels: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "horizon": self.horizon,
            "embargo": self.embargo,
            "symbols": list(self.symbols),
            "data": self.data,
            "holdout_bars": self.holdout_bars,
            "shuffled_labels": self.shuffled_labels,
        }


def training_span(bundle: Bundle) -> TrainingSpan:
    """The bundle's training span, or a :class:`BundleError` if the manifest lacks it."""
    training = bundle.manifest.get("training") or {}
    span = training.get("span")
    if not isinstance(span, list) or len(span) != 2:
        raise BundleError(
            f"bundle {bundle.path}: manifest records no training span, so out-of-sample bars "
            "cannot be told apart; pass --allow-in-sample to evaluate anyway (not honest)"
        )
    preset = training.get("preset") or {}
    horizon = int(bundle.config.get("labels", {}).get("horizon", 5))
    return TrainingSpan(
        start=pd.Timestamp(span[0]),
        end=pd.Timestamp(span[1]),
        horizon=horizon,
        embargo=int(preset.get("embargo", horizon)),
        symbols=tuple(training.get("symbols") or ()),
        data=str(training.get("data", "")),
        holdout_bars=int(training.get("holdout_bars", 0) or 0),
        shuffled_labels=bool(training.get("shuffled_labels", False)),
    )


def oos_mask(index: pd.DatetimeIndex, span: TrainingSpan, period: str) -> np.ndarray:
    """Boolean mask (n,) of the bars of one symbol that are out of sample on ``period`` side."""
    if period not in PERIODS:
        raise ConfigError(f"period {period!r}; choose one of {', '.join(PERIODS)}")
    pos = np.arange(len(index))
    ts = index.values
    if period == "after":
        e = int(np.searchsorted(ts, span.end.to_datetime64(), side="right")) - 1
        return pos >= e + span.horizon + span.embargo
    s = int(np.searchsorted(ts, span.start.to_datetime64(), side="left"))
    return pos + span.horizon < s - span.embargo


def in_sample_mask(index: pd.DatetimeIndex, span: TrainingSpan) -> np.ndarray:
    """Bars that are neither after nor before the training period (purge included)."""
    return ~(oos_mask(index, span, "after") | oos_mask(index, span, "before"))
