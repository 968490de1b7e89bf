"""What flows through the pipeline: a request in, a prepared window, a result out."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlsignal.errors import DataError
from mlsignal.features import FeatureSchema, feature_window


@dataclass(frozen=True)
class SignalRequest:
    """One symbol's input: its recent bars and its rule scores.

    ``ss``/``bs`` of ``None`` means: use the built-in MACD rule scores for the last bar.
    """

    symbol: str
    bars: pd.DataFrame
    ss: float | None = None
    bs: float | None = None


@dataclass(frozen=True)
class SignalResult:
    """One symbol's output: the enhanced scores and the ``ml_info`` dict."""

    symbol: str
    enhanced_ss: float
    enhanced_bs: float
    ml_info: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class Prepared:
    """One symbol made ready for the model, whatever it came from (a DataFrame, wire
    arrays, a feature stream).

    ``t_ns`` (int64 ns, ``(n,)``) and ``ohlcv`` (float64 ``(n, 5)``) are the validated last
    ``bundle.min_bars`` bars; ``ss``/``bs`` the resolved scores. :attr:`window` is the model
    input, computed on first use (a remote ``/v1`` call never needs it here).
    ``regime_vol`` may be computed ahead, for many symbols at once (``None``: by finish).
    """

    symbol: str
    ss: float
    bs: float
    t_ns: np.ndarray
    ohlcv: np.ndarray
    schema: FeatureSchema
    regime_vol: float | None = None
    _window: np.ndarray | None = field(default=None, repr=False)

    @property
    def window(self) -> np.ndarray:
        """The model window of the last bar: float32 ``(schema.window, F)``."""
        if self._window is None:
            with naming(self.symbol):
                self._window = feature_window(self.ohlcv, self.schema, index=self.t_ns)
        return self._window

    @property
    def close(self) -> np.ndarray:
        """Closes of the bars, float64 ``(n,)`` (GARCH's input)."""
        return self.ohlcv[:, 3]

    @property
    def bar_ts(self) -> str:
        """The last bar's timestamp, ISO 8601 (``ml_info["bar_ts"]``)."""
        return pd.Timestamp(int(self.t_ns[-1])).isoformat()


@contextmanager
def naming(symbol: str) -> Iterator[None]:
    """Re-raise a :class:`DataError` with the symbol in front (batch calls)."""
    try:
        yield
    except DataError as e:
        if not symbol:
            raise
        raise type(e)(f"{symbol}: {e}") from e
