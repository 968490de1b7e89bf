"""SignalModel: raw feature windows in, (p_lstm, p_tft, bull_prob) out, in one forward.

Everything inference needs lives in the module as parameters or buffers, so one torch forward,
one ONNX graph or one CUDA graph gives ``bull_prob``:

    x (B, T, F) raw float32 features
      -> z = (x - feat_mean) / feat_std                         standardise
      -> logit_lstm, logit_tft (B,)                             base models
      -> stacked = sigmoid(meta_w . [logit_lstm, logit_tft] + meta_b)   meta-learner
      -> bull_prob = clamp(calibrate(stacked), 1e-4, 1 - 1e-4)  piecewise-linear monotone map

The forward has no data-dependent Python control flow and no search or indexing by value,
so it traces, exports and graph-captures. Call ``.eval()`` before inference (dropout).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from mlsignal.errors import ConfigError, DataError
from mlsignal.models.lstm import LSTMClassifier, LSTMConfig
from mlsignal.models.stack import PROB_EPS, check_knots, identity_knots, pad_knots
from mlsignal.models.tft import TemporalFusionTransformer, TFTConfig

MIN_STD = 1e-8  # a feature with std below this is treated as constant: scale 1, not 1/std


@dataclass(frozen=True)
class SignalModelConfig:
    """Shapes of the whole model. ``n_features``/``window`` must match the sub-configs."""

    n_features: int = 29  # F (DEFAULT_SCHEMA)
    window: int = 64  # T
    lstm: LSTMConfig = field(default_factory=LSTMConfig)
    tft: TFTConfig = field(default_factory=TFTConfig)
    n_calib_knots: int = 32  # K, size of the calibration buffers

    def __post_init__(self) -> None:
        if self.lstm.n_features != self.n_features or self.tft.n_features != self.n_features:
            raise ConfigError(
                f"n_features={self.n_features} but lstm has {self.lstm.n_features}"
                f" and tft has {self.tft.n_features}"
            )
        if self.tft.window != self.window:
            raise ConfigError(f"window={self.window} but tft.window={self.tft.window}")
        if self.n_calib_knots < 2:
            raise ConfigError(f"n_calib_knots must be at least 2, got {self.n_calib_knots}")

    @classmethod
    def for_shape(cls, n_features: int, window: int) -> SignalModelConfig:
        """The default model for F = n_features, T = window."""
        return cls(
            n_features=n_features,
            window=window,
            lstm=LSTMConfig(n_features=n_features),
            tft=TFTConfig(n_features=n_features, window=window),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able nested dict; :meth:`from_dict` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SignalModelConfig:
        """Build from :meth:`to_dict` output; unknown keys are a ConfigError."""
        d = dict(d)
        lstm = _build(LSTMConfig, d.pop("lstm", {}))
        tft = _build(TFTConfig, d.pop("tft", {}))
        return _build(cls, {**d, "lstm": lstm, "tft": tft})


def _build(cls: type, d: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
    return cls(**d)


class SignalModel(nn.Module):
    """Scaler + LSTM + TFT + stacking meta-learner + calibration, as one module."""

    def __init__(self, config: SignalModelConfig) -> None:
        super().__init__()
        self.config = config
        f, k = config.n_features, config.n_calib_knots
        self.lstm = LSTMClassifier(config.lstm)
        self.tft = TemporalFusionTransformer(config.tft)
        self.register_buffer("feat_mean", torch.zeros(f))  # (F,)
        self.register_buffer("feat_std", torch.ones(f))  # (F,)
        self.register_buffer("meta_w", torch.tensor([0.5, 0.5]))  # (2,) mean of the logits
        self.register_buffer("meta_b", torch.zeros(1))  # (1,)
        self.register_buffer("calib_x", torch.zeros(k))  # (K,)
        self.register_buffer("calib_y", torch.zeros(k))  # (K,)
        self.set_calibration(*identity_knots())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, F) raw float32 features -> (B, 3) float32: p_lstm, p_tft, bull_prob."""
        logits = self.base_logits(x)  # (B, 2)
        stacked = torch.sigmoid(logits @ self.meta_w + self.meta_b)  # (B,)
        bull = self.calibrate(stacked).clamp(PROB_EPS, 1.0 - PROB_EPS)  # (B,)
        return torch.cat([torch.sigmoid(logits), bull.unsqueeze(1)], dim=1)  # (B, 3)

    def base_logits(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, F) raw features -> (B, 2) base logits (logit_lstm, logit_tft)."""
        cfg = self.config
        assert x.ndim == 3 and x.shape[1:] == (cfg.window, cfg.n_features), (
            f"expected (B, {cfg.window}, {cfg.n_features}), got {tuple(x.shape)}"
        )
        z = (x - self.feat_mean) / self.feat_std  # (B, T, F)
        return torch.stack([self.lstm(z), self.tft(z)], dim=1)

    def interpret(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, T, F) raw features -> the TFT's logit, variable_weights (B, T, F) and
        attention (B, T, T); see :meth:`TemporalFusionTransformer.interpret`."""
        return self.tft.interpret((x - self.feat_mean) / self.feat_std)

    def calibrate(self, s: torch.Tensor) -> torch.Tensor:
        """s: (B,) stacked probabilities -> (B,) calibrated, without the final clamp.

        f(s) = y0 + sum_i slope_i * (clamp(s, x_i, x_{i+1}) - x_i): elementwise min/max against
        the knot buffers, no search or indexing by value.
        """
        x_lo, x_hi = self.calib_x[:-1], self.calib_x[1:]  # (K-1,)
        slope = (self.calib_y[1:] - self.calib_y[:-1]) / (x_hi - x_lo)  # (K-1,)
        seg = torch.minimum(torch.maximum(s.unsqueeze(1), x_lo), x_hi) - x_lo  # (B, K-1)
        return self.calib_y[0] + seg @ slope  # (B,)

    @torch.no_grad()
    def set_scaler(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Set the feature standardisation: mean, std (F,) of the training features.

        A std below MIN_STD (a constant feature) becomes 1, so that feature standardises to 0
        on training-like data and stays finite otherwise.
        """
        n = self.config.n_features
        mean, std = _vector(mean, "mean", n), _vector(std, "std", n)
        if (std < 0).any():
            raise DataError(f"std must be non-negative, got min {std.min()}")
        std = np.where(std < MIN_STD, 1.0, std)
        self.feat_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.feat_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    @torch.no_grad()
    def set_stack(self, w: np.ndarray, b: float) -> None:
        """Set the meta-learner: stacked = sigmoid(w[0] * logit_lstm + w[1] * logit_tft + b)."""
        w = _vector(w, "w", 2)
        b = float(np.asarray(b, np.float64).reshape(-1)[0])
        if not np.isfinite(b):
            raise DataError(f"b must be finite, got {b}")
        self.meta_w.copy_(torch.as_tensor(w, dtype=torch.float32))
        self.meta_b.fill_(b)

    @torch.no_grad()
    def set_calibration(self, x: np.ndarray, y: np.ndarray) -> None:
        """Set the calibration knots (see :func:`mlsignal.models.stack.fit_calibration`).

        x strictly increasing from 0 to 1, y non-decreasing in [0, 1], at most K knots; fewer
        are padded with extra knots on the same line segments, so the map is unchanged.
        """
        check_knots(x, y)
        x, y = pad_knots(x, y, self.config.n_calib_knots)
        self.calib_x.copy_(torch.as_tensor(x, dtype=torch.float32))
        self.calib_y.copy_(torch.as_tensor(y, dtype=torch.float32))


def _vector(a: np.ndarray, name: str, n: int) -> np.ndarray:
    """a as a finite float64 vector of length n, else DataError."""
    a = np.asarray(a, np.float64).reshape(-1)
    if a.shape != (n,):
        raise DataError(f"{name} must have shape ({n},), got {a.shape}")
    if not np.isfinite(a).all():
        raise DataError(f"{name} must be finite")
    return a
