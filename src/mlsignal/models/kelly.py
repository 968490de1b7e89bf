"""Fractional Kelly position size from bull_prob, the volatility regime and training payoffs.

For p = bull_prob and payoff b = mean win / mean loss, the full Kelly bet is

- long:  f_long(p)  = p - (1 - p) / b_long
- short: f_short(p) = (1 - p) - p / b_short

**Neutral (the default)**: only the model's information is sized, i.e. the bet beyond the
unconditional one a no-skill model would make at the base rate m (stored in the bundle):

- p > m, long:  f* = f_long(p) - f_long(m)   = (p - m) (1 + 1 / b_long)
- p < m, short: f* = f_short(p) - f_short(m) = (m - p) (1 + 1 / b_short)

so bull_prob = m is flat, whatever the drift in the training data. **Drift prior** (opt-in,
``base_rate=None`` here): the plain Kelly bet, long for p >= 0.5 (f_long), short below
(f_short), which bets the base rate's drift on every bar.

f* <= 0 gives 0 and side "flat"; otherwise kelly = min(cap, f* * fraction * regime_scale[regime])
(half Kelly, halved again in the high-volatility regime, by default).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlsignal.errors import ConfigError, DataError

SIDES = ("flat", "long", "short")


def _default_regime_scale() -> dict[str, float]:
    return {"low": 1.0, "normal": 1.0, "high": 0.5}


@dataclass(frozen=True)
class KellyConfig:
    """How much of the full Kelly bet to take."""

    fraction: float = 0.5  # of full Kelly (0.5 = half Kelly)
    cap: float = 0.25  # largest fraction of capital
    regime_scale: dict[str, float] = field(default_factory=_default_regime_scale)

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction}")
        if not 0 < self.cap <= 1:
            raise ConfigError(f"cap must be in (0, 1], got {self.cap}")
        if set(self.regime_scale) != {"low", "normal", "high"}:
            raise ConfigError(f"regime_scale needs keys low, normal, high, got {self.regime_scale}")
        if not all(np.isfinite(v) and v >= 0 for v in self.regime_scale.values()):
            raise ConfigError(f"regime_scale values must be finite and >= 0: {self.regime_scale}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KellyConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**d)


@dataclass(frozen=True)
class KellyParams:
    """Payoff ratios measured on training forward returns (mean win / mean loss)."""

    payoff_long: float = 1.0  # mean up-move / mean |down-move|
    payoff_short: float = 1.0  # mean |down-move| / mean up-move

    def __post_init__(self) -> None:
        for name in ("payoff_long", "payoff_short"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ConfigError(f"{name} must be finite and > 0, got {v}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KellyParams:
        """Inverse of :meth:`to_dict`."""
        return cls(**d)


def fit_kelly_params(forward_returns: np.ndarray) -> KellyParams:
    """Payoffs from training forward returns (N,) over the label horizon (log or simple).

    A long wins the up-moves and loses the down-moves, a short the reverse, so
    payoff_short = 1 / payoff_long. Zero returns count as neither.
    """
    r = np.asarray(forward_returns, np.float64).reshape(-1)
    if r.size == 0 or not np.isfinite(r).all():
        raise DataError("forward_returns must be a non-empty array of finite numbers")
    up, down = r[r > 0], -r[r < 0]
    if up.size == 0 or down.size == 0:
        raise DataError(
            f"forward_returns need both up and down moves, got {up.size} up, {down.size} down"
        )
    b = float(up.mean() / down.mean())
    return KellyParams(payoff_long=b, payoff_short=1.0 / b)


def kelly_fraction(
    bull_prob: float,
    regime: str,
    params: KellyParams,
    config: KellyConfig,
    base_rate: float | None = None,
) -> tuple[float, str]:
    """bull_prob in [0, 1], regime in low/normal/high -> (kelly in [0, cap], side).

    ``base_rate`` m: size only the departure from it (neutral, see the module docstring);
    ``None``: the drift prior. side is "long" (p > m; p >= 0.5 with the drift prior),
    "short" (below) or "flat" when the sized bet is 0.
    """
    k, side = kelly_fraction_batch(
        np.array([bull_prob], np.float64), [regime], params, config, base_rate
    )
    return float(k[0]), str(side[0])


def kelly_fraction_batch(
    bull_prob: np.ndarray,
    regimes: Sequence[str],
    params: KellyParams,
    config: KellyConfig,
    base_rate: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """bull_prob (N,), regimes (N,) -> kelly (N,) float64 in [0, cap], sides (N,) str array.
    ``base_rate``: as in :func:`kelly_fraction`."""
    p = np.asarray(bull_prob, np.float64).reshape(-1)
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        bad = p[~(np.isfinite(p) & (p >= 0) & (p <= 1))][0]
        raise DataError(f"bull_prob must be within 0..1, got {bad}")
    if len(regimes) != p.size:
        raise DataError(f"{p.size} bull_prob values but {len(regimes)} regimes")
    unknown = sorted(set(regimes) - set(config.regime_scale))
    if unknown:
        raise DataError(f"unknown regime {unknown[0]!r}; expected low, normal or high")
    f, long = _full_kelly(p, params, base_rate)
    scale = np.array([config.regime_scale[r] for r in regimes], np.float64)
    kelly = np.minimum(np.maximum(f, 0.0) * config.fraction * scale, config.cap)
    side = np.where(kelly > 0, np.where(long, 1, 2), 0)
    return kelly, np.asarray(SIDES)[side]


def _full_kelly(
    p: np.ndarray, params: KellyParams, base_rate: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Full Kelly f* (N,) and whether each bet is long (N,) bool."""
    if base_rate is None:  # drift prior: the plain Kelly bet
        long = p >= 0.5
        f_long = p - (1 - p) / params.payoff_long
        f_short = (1 - p) - p / params.payoff_short
        return np.where(long, f_long, f_short), long
    if not 0 < base_rate < 1:
        raise DataError(f"base_rate must be within (0, 1), got {base_rate}")
    long = p > base_rate
    f_long = (p - base_rate) * (1 + 1 / params.payoff_long)
    f_short = (base_rate - p) * (1 + 1 / params.payoff_short)
    return np.where(long, f_long, f_short), long
