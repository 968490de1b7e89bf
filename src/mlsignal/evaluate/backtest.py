"""A simple cost-aware backtest of score-driven positions, with next-bar execution.

Rule (the same for raw and enhanced scores): at the close of bar ``t``,

    position_t = +1 if bs_t - ss_t >  threshold    (long)
                 -1 if ss_t - bs_t >  threshold    (short)
                  0 otherwise                      (flat)

The position decided at bar ``t``'s close is held from ``t`` to ``t+1`` and earns the simple
return ``r_{t+1} = C_{t+1} / C_t - 1`` (no look-ahead: nothing after bar ``t`` decides it).
Changing the position costs ``cost_bps / 1e4`` per unit of turnover ``|position_t -
position_{t-1}|`` (the book starts flat), charged to that bar:

    net_{t+1} = position_t * r_{t+1} - cost_bps / 1e4 * |position_t - position_{t-1}|

The Kelly-sized variant holds ``direction_t * kelly_t`` (a fraction of capital) where the
enhanced direction and the Kelly side agree, else 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlsignal.errors import DataError

#: Seconds in a mean Gregorian year (365.2425 days).
SECONDS_PER_YEAR = 365.2425 * 86400.0


def positions_from_scores(ss: np.ndarray, bs: np.ndarray, threshold: float) -> np.ndarray:
    """+1 / -1 / 0 per bar from ``bs - ss`` against ``threshold`` (see the module docstring)."""
    ss, bs = np.asarray(ss, np.float64), np.asarray(bs, np.float64)
    if ss.shape != bs.shape:
        raise DataError(f"ss {ss.shape} and bs {bs.shape} differ in shape")
    if threshold < 0:
        raise DataError(f"threshold must be >= 0, got {threshold}")
    d = bs - ss
    return np.where(d > threshold, 1.0, np.where(d < -threshold, -1.0, 0.0))


def kelly_positions(direction: np.ndarray, kelly: np.ndarray, side: np.ndarray) -> np.ndarray:
    """``direction * kelly`` where the Kelly side (``long``/``short``) agrees with the
    direction, 0 elsewhere (flat, or the model bets against the rules)."""
    direction = np.asarray(direction, np.float64)
    side_sign = np.select([np.asarray(side) == "long", np.asarray(side) == "short"], [1.0, -1.0])
    agree = (direction != 0) & (side_sign == direction)
    return np.where(agree, direction * np.asarray(kelly, np.float64), 0.0)


def bars_per_year(index: pd.DatetimeIndex) -> float:
    """Bars per year of a series, from its count and calendar span (daily stocks: ~252)."""
    if len(index) < 2:
        raise DataError("need at least 2 bars to measure the bar frequency")
    seconds = (index[-1] - index[0]).total_seconds()
    if seconds <= 0:
        raise DataError("bar timestamps span no time")
    return float((len(index) - 1) / (seconds / SECONDS_PER_YEAR))


@dataclass(frozen=True)
class Backtest:
    """Per-bar positions, turnover, gross and net returns, and the net equity curve."""

    position: np.ndarray
    turnover: np.ndarray
    gross: np.ndarray
    net: np.ndarray
    equity: np.ndarray


def run_backtest(position: np.ndarray, next_ret: np.ndarray, cost_bps: float) -> Backtest:
    """Positions ``(n,)`` decided at each bar's close, ``next_ret`` ``(n,)`` the return from
    that close to the next -> per-bar results (see the module docstring).

    ``next_ret`` must be finite: drop bars without a next bar before calling.
    """
    pos = np.asarray(position, np.float64)
    r = np.asarray(next_ret, np.float64)
    if pos.shape != r.shape or pos.ndim != 1:
        raise DataError(f"position {pos.shape} and next_ret {r.shape} must be 1-d, same size")
    if not (np.isfinite(pos).all() and np.isfinite(r).all()):
        raise DataError("positions and next-bar returns must be finite")
    if cost_bps < 0:
        raise DataError(f"cost_bps must be >= 0, got {cost_bps}")
    turnover = np.abs(np.diff(pos, prepend=0.0))
    gross = pos * r
    net = gross - cost_bps / 1e4 * turnover
    return Backtest(pos, turnover, gross, net, np.cumprod(1.0 + net))


def max_drawdown(equity: np.ndarray) -> float:
    """Largest fall from a running peak, as a fraction (0.2 = 20 %); the curve starts at 1."""
    eq = np.concatenate([[1.0], np.asarray(equity, np.float64)])
    peak = np.maximum.accumulate(eq)
    return float(np.max(1.0 - eq / peak))


def sharpe(net: np.ndarray, per_year: float) -> float:
    """Annualised Sharpe ratio of per-bar returns (zero risk-free rate): mean / std * sqrt."""
    net = np.asarray(net, np.float64)
    if len(net) < 2:
        return float("nan")
    sd = net.std(ddof=1)
    return float(net.mean() / sd * np.sqrt(per_year)) if sd > 0 else float("nan")


def backtest_stats(bt: Backtest, per_year: float) -> dict[str, Any]:
    """Summary of a :class:`Backtest`: returns, Sharpe, hit rate, drawdown, turnover.

    ``hit_rate``: of the bars held with a position and a non-zero move, the share where the
    position had the sign of the move (before costs). ``turnover_per_year``: mean
    ``|Δposition|`` per bar times bars per year (1 = one full position change a year).
    """
    n = len(bt.net)
    held = (bt.position != 0) & (bt.gross != 0)
    years = n / per_year
    total = float(bt.equity[-1] - 1.0) if n else 0.0
    return {
        "bars": n,
        "total_return": total,
        "cagr": float((1.0 + total) ** (1.0 / years) - 1.0) if n and total > -1 else float("nan"),
        "sharpe": sharpe(bt.net, per_year),
        "hit_rate": float((bt.gross[held] > 0).mean()) if held.any() else float("nan"),
        "max_drawdown": max_drawdown(bt.equity) if n else 0.0,
        "turnover_per_year": float(bt.turnover.mean() * per_year) if n else 0.0,
        "exposure": float(np.abs(bt.position).mean()) if n else 0.0,
        "total_turnover": float(bt.turnover.sum()),
        "cost_paid": float((bt.gross - bt.net).sum()),
        "bars_in_market": int((bt.position != 0).sum()),
    }
