"""Bars per year for annualising the backtest: each symbol by its own bar interval.

A daily and an hourly symbol in one report must not share one bars-per-year: Sharpe, CAGR
and turnover of a daily series annualised as hourly come out ``sqrt(24)`` times too large or
small. Each symbol is measured on its whole loaded series (:func:`bars_per_year`); the pooled
backtest, whose timeline is the union of the evaluated bars' timestamps, on that timeline.
``--bars-per-year`` given by the user overrides both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from mlsignal.evaluate.backtest import bars_per_year


def annualisation(
    bars_by_symbol: Mapping[str, pd.DataFrame], table: pd.DataFrame, given: float | None
) -> dict[str, Any]:
    """``{"pooled": float, "per_symbol": {symbol: float}, "how": str}`` for the symbols of
    ``table`` (its ``symbol`` and ``timestamp`` columns); ``given`` overrides every value."""
    symbols = list(dict.fromkeys(table["symbol"].tolist()))
    if given is not None:
        return {
            "pooled": float(given),
            "per_symbol": dict.fromkeys(symbols, float(given)),
            "how": f"given (--bars-per-year {given:g}) for every symbol and the pooled backtest",
        }
    per_symbol = {s: bars_per_year(bars_by_symbol[s].index) for s in symbols}
    timeline = pd.DatetimeIndex(np.unique(table["timestamp"].to_numpy()))
    if len(symbols) == 1:
        pooled = per_symbol[symbols[0]]  # the pooled series is that symbol's own
    elif len(timeline) >= 2:
        pooled = bars_per_year(timeline)
    else:
        pooled = float(np.median(list(per_symbol.values())))
    return {
        "pooled": pooled,
        "per_symbol": per_symbol,
        "how": "each symbol by its own bar interval (bar count over calendar span of its "
        "series); the pooled backtest by its own timeline (the union of the evaluated bars' "
        "timestamps)",
    }
