"""The feature schema: ordered feature names, window length, warm-up and a stable hash.

A model is trained against one schema; the bundle stores it and the runtime refuses windows
built under another (a different hash). The order of ``names`` is the column order of every
feature window ``(T, F)``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from mlsignal.errors import ConfigError

#: The features :func:`mlsignal.features.compute_features` computes, in column order.
#: Units: ``*_atr`` are in units of ATR(14); ``ret_*`` are log returns; ``rvol_*`` are the
#: standard deviation of 1-bar log returns; oscillators are rescaled to about -1..1.
#: Every value is clipped to +-``FEATURE_CLIP``.
FEATURE_NAMES: tuple[str, ...] = (
    "macd_atr",  # MACD(12, 26) line / ATR14
    "macd_signal_atr",  # MACD signal line (9) / ATR14
    "macd_hist_atr",  # MACD histogram / ATR14
    "macd_hist_chg_atr",  # 1-bar change of the MACD histogram / ATR14
    "rsi14",  # (RSI14 - 50) / 50, in -1..1
    "rsi6",  # (RSI6 - 50) / 50, in -1..1
    "natr14",  # ATR14 / close (fraction of price)
    "bb_pctb",  # Bollinger(20, 2) %B rescaled: -1 at the lower band, +1 at the upper
    "bb_width",  # (upper - lower) / middle band (fraction of price)
    "kdj_k",  # (stochastic slow K(9, 3, 3) - 50) / 50
    "kdj_d",  # (slow D - 50) / 50
    "kdj_j",  # (J - 50) / 50 with J = 3K - 2D (about -2..2)
    "adx14",  # (ADX14 - 50) / 50
    "di_diff14",  # (+DI14 - -DI14) / 100, in -1..1
    "ret_1",  # log(close / close 1 bar back)
    "ret_2",
    "ret_5",
    "ret_10",
    "ret_20",
    "rvol_10",  # std of 1-bar log returns over 10 bars
    "rvol_20",  # std of 1-bar log returns over 20 bars
    "vol_z20",  # z-score of log1p(volume / mean volume) over 20 bars; 0 when constant
    "range_pos20",  # close in the 20-bar low..high range, rescaled to -1..1
    "bar_clv",  # close location in the bar: -1 at the low, +1 at the high
    "body_atr",  # (close - open) / ATR14
    "upper_shadow_atr",  # (high - max(open, close)) / ATR14
    "lower_shadow_atr",  # (min(open, close) - low) / ATR14
    "close_sma20_atr",  # (close - SMA20) / ATR14
    "close_sma50_atr",  # (close - SMA50) / ATR14
)

#: Every feature is clipped to [-FEATURE_CLIP, FEATURE_CLIP] so one bad bar cannot explode
#: a model; ordinary values are far inside (oscillators within about +-2).
FEATURE_CLIP: float = 10.0

FEATURE_VERSION: int = 1


@dataclass(frozen=True)
class FeatureSchema:
    """What a feature window is: ordered names, window length and warm-up, in bars.

    A window of ``window`` rows is computed from exactly the last ``lookback = window +
    warmup`` bars; the first ``warmup`` bars let the recursive indicators (EMA, Wilder)
    converge and are then dropped.
    """

    names: tuple[str, ...] = FEATURE_NAMES
    window: int = 64
    warmup: int = 192
    version: int = FEATURE_VERSION

    def __post_init__(self) -> None:
        # Accept a list (e.g. from JSON) but store a tuple so the schema stays hashable.
        object.__setattr__(self, "names", tuple(self.names))
        if not self.names:
            raise ConfigError("feature schema has no names")
        dupes = sorted({n for n in self.names if self.names.count(n) > 1})
        if dupes:
            raise ConfigError(f"feature schema has duplicate names: {dupes}")
        if not all(isinstance(n, str) and n for n in self.names):
            raise ConfigError("feature names must be non-empty strings")
        for field in ("window", "warmup", "version"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"feature schema {field} must be a positive int, got {value!r}")

    @property
    def n_features(self) -> int:
        """Number of features F (columns of a window)."""
        return len(self.names)

    @property
    def lookback(self) -> int:
        """Bars needed for one window: ``window + warmup``."""
        return self.window + self.warmup

    @property
    def hash(self) -> str:
        """sha256 hex digest of the canonical JSON of names, window, warmup and version."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` inverts it."""
        return {
            "names": list(self.names),
            "window": self.window,
            "warmup": self.warmup,
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSchema:
        """Build a schema from :meth:`to_dict` output (extra keys, e.g. ``hash``, ignored)."""
        try:
            return cls(
                names=tuple(data["names"]),
                window=data["window"],
                warmup=data["warmup"],
                version=data["version"],
            )
        except KeyError as exc:
            raise ConfigError(f"feature schema dict lacks key {exc.args[0]!r}") from exc


#: The schema the shipped models use: 29 features, 64-bar windows, 192-bar warm-up.
DEFAULT_SCHEMA: FeatureSchema = FeatureSchema()
