"""Fusing the rule scores (ss, bs) with the model's bull_prob.

The model's information is its departure from the *centre* m, the base rate it was
calibrated to (the share of bullish labels in the training data's calibration segment,
stored in the bundle), not from 0.5: a calibrated model without skill outputs m on every
bar, and centring at 0.5 would turn that base rate into a constant long tilt. Only with
``drift_prior`` (opt-in) is the centre 0.5, so that the drift in the base rate itself tilts
the scores.

Conviction c in -1..1 is the departure scaled by the room on its side:
c = (p - m) / (1 - m) above the centre, (p - m) / m below it (p = bull_prob). With a dead zone
d (0 <= d < 1), |c| <= d gives 0 and the rest is rescaled so c stays continuous:
c' = sign(c) * (|c| - d) / (1 - d). Then, with s = strength,

    enhanced_bs = clip(bs * (1 + s * c), 0, 100)
    enhanced_ss = clip(ss * (1 - s * c), 0, 100)

A confident bullish model raises bs and damps ss, a bearish one the reverse, bull_prob equal
to the base rate leaves both unchanged, the outputs stay within 0..100, and a score of 0
stays 0: the model never creates a signal the rules did not give.

Worked example (strength 0.5, no dead zone, base rate 0.55): ss = 40, bs = 70,
bull_prob = 0.82 gives c = (0.82 - 0.55) / 0.45 = 0.6, enhanced_bs = 70 * (1 + 0.5 * 0.6)
= 70 * 1.3 = 91.0 and enhanced_ss = 40 * (1 - 0.3) = 40 * 0.7 = 28.0; bull_prob = 0.55
gives 40 and 70 back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlsignal.errors import ConfigError, DataError

SCORE_MAX = 100.0


@dataclass(frozen=True)
class FusionConfig:
    """strength in [0, 1]: how far full conviction moves a score (1 = double or zero it);
    dead_zone in [0, 1): convictions |c| up to it are ignored; base_rate in (0, 1): the
    share of bullish labels the model was calibrated to (a bundle from before neutral fusion
    has none: 0.5); drift_prior: centre at 0.5 instead, so the base rate's drift tilts the
    scores (and Kelly sizes the unconditional bet, see :mod:`mlsignal.models.kelly`)."""

    strength: float = 0.5
    dead_zone: float = 0.0
    base_rate: float = 0.5
    drift_prior: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.strength <= 1:
            raise ConfigError(f"strength must be within 0..1, got {self.strength}")
        if not 0 <= self.dead_zone < 1:
            raise ConfigError(f"dead_zone must be within [0, 1), got {self.dead_zone}")
        if not 0 < self.base_rate < 1:
            raise ConfigError(f"base_rate must be within (0, 1), got {self.base_rate}")
        if not isinstance(self.drift_prior, bool):
            raise ConfigError(f"drift_prior must be true or false, got {self.drift_prior!r}")

    @property
    def centre(self) -> float:
        """The bull_prob that leaves the scores unchanged: 0.5 with the drift prior, else
        the base rate."""
        return 0.5 if self.drift_prior else self.base_rate

    @property
    def kelly_base_rate(self) -> float | None:
        """What Kelly sizes departures from (:mod:`mlsignal.models.kelly`): the base rate, or
        ``None`` with the drift prior (the plain Kelly bet)."""
        return None if self.drift_prior else self.base_rate

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FusionConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**d)


def fuse(ss: float, bs: float, bull_prob: float, config: FusionConfig) -> tuple[float, float]:
    """(ss, bs) in 0..100 and bull_prob in 0..1 -> (enhanced_ss, enhanced_bs) in 0..100."""
    _check_scalar("ss", ss, SCORE_MAX)
    _check_scalar("bs", bs, SCORE_MAX)
    _check_scalar("bull_prob", bull_prob, 1.0)
    c = _conviction(np.float64(bull_prob), config.centre, config.dead_zone)
    e_ss, e_bs = _apply(np.float64(ss), np.float64(bs), c, config.strength)
    return float(e_ss), float(e_bs)


def fuse_batch(
    ss: np.ndarray, bs: np.ndarray, bull_prob: np.ndarray, config: FusionConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`fuse`: arrays (N,) -> (enhanced_ss (N,), enhanced_bs (N,)) float64."""
    ss_a = _check_array("ss", ss, SCORE_MAX)
    bs_a = _check_array("bs", bs, SCORE_MAX)
    p = _check_array("bull_prob", bull_prob, 1.0)
    if not ss_a.shape == bs_a.shape == p.shape:
        raise DataError(f"ss {ss_a.shape}, bs {bs_a.shape}, bull_prob {p.shape} differ in shape")
    c = _conviction(p, config.centre, config.dead_zone)
    return _apply(ss_a, bs_a, c, config.strength)


def conviction(bull_prob: float, config: FusionConfig) -> float:
    """c in -1..1 after the dead zone (see the module docstring)."""
    _check_scalar("bull_prob", bull_prob, 1.0)
    return float(_conviction(np.float64(bull_prob), config.centre, config.dead_zone))


def _conviction(p: np.ndarray, centre: float, dead_zone: float) -> np.ndarray:
    c = np.where(p >= centre, (p - centre) / (1.0 - centre), (p - centre) / centre)
    return np.sign(c) * np.maximum(np.abs(c) - dead_zone, 0.0) / (1.0 - dead_zone)


def _apply(
    ss: np.ndarray, bs: np.ndarray, c: np.ndarray, strength: float
) -> tuple[np.ndarray, np.ndarray]:
    e_bs = np.clip(bs * (1.0 + strength * c), 0.0, SCORE_MAX)
    e_ss = np.clip(ss * (1.0 - strength * c), 0.0, SCORE_MAX)
    return e_ss, e_bs


def _check_scalar(name: str, v: float, hi: float) -> None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise DataError(f"{name} must be a number within 0..{hi:g}, got {v!r}") from None
    if not (np.isfinite(x) and 0.0 <= x <= hi):
        raise DataError(f"{name} must be a finite number within 0..{hi:g}, got {v!r}")


def _check_array(name: str, v: np.ndarray, hi: float) -> np.ndarray:
    a = np.asarray(v, np.float64).reshape(-1)
    ok = np.isfinite(a) & (a >= 0.0) & (a <= hi)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise DataError(f"{name}[{i}] must be a finite number within 0..{hi:g}, got {a[i]!r}")
    return a
