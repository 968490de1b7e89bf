"""Fusing the rule scores (ss, bs) with the model's bull_prob.

Conviction c = (bull_prob - 0.5) / 0.5 in -1..1. With a dead zone d (0 <= d < 1), |c| <= d
gives 0 and the rest is rescaled so c stays continuous: c' = sign(c) * (|c| - d) / (1 - d).
Then, with s = strength,

    enhanced_bs = clip(bs * (1 + s * c), 0, 100)
    enhanced_ss = clip(ss * (1 - s * c), 0, 100)

A confident bullish model raises bs and damps ss, a bearish one the reverse, bull_prob = 0.5
leaves both unchanged, the outputs stay within 0..100, and a score of 0 stays 0: the model
never creates a signal the rules did not give.

Worked example (strength 0.5, no dead zone): ss = 40, bs = 70, bull_prob = 0.80 gives
c = 0.6, enhanced_bs = 70 * (1 + 0.5 * 0.6) = 70 * 1.3 = 91.0 and
enhanced_ss = 40 * (1 - 0.3) = 40 * 0.7 = 28.0.
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
    dead_zone in [0, 1): convictions |c| up to it are ignored."""

    strength: float = 0.5
    dead_zone: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.strength <= 1:
            raise ConfigError(f"strength must be within 0..1, got {self.strength}")
        if not 0 <= self.dead_zone < 1:
            raise ConfigError(f"dead_zone must be within [0, 1), got {self.dead_zone}")

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
    c = _conviction(np.float64(bull_prob), config.dead_zone)
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
    c = _conviction(p, config.dead_zone)
    return _apply(ss_a, bs_a, c, config.strength)


def conviction(bull_prob: float, config: FusionConfig) -> float:
    """c in -1..1 after the dead zone (see the module docstring)."""
    _check_scalar("bull_prob", bull_prob, 1.0)
    return float(_conviction(np.float64(bull_prob), config.dead_zone))


def _conviction(p: np.ndarray, dead_zone: float) -> np.ndarray:
    c = (p - 0.5) / 0.5
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
