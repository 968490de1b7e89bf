"""MACD-centred rule scores: a sell score ``ss`` and a buy score ``bs`` per bar, each 0..100.

For users who bring no rule signals of their own, and for the demo. Each component gives a
strength in 0..1 for each side; a side's score is the weighted sum (the weights in
:class:`RuleConfig` add up to at most 100), then damped against the trend:

===================  ======  ===========================================================
component            weight  buy side (the sell side mirrors it)
===================  ======  ===========================================================
MACD cross           30      MACD line crosses above its signal line: 1 on the cross bar,
                             decaying linearly to 0 over ``cross_decay_bars`` bars
histogram momentum   15      rising histogram: 1-bar change / ATR, 1 at
                             ``momentum_atr`` ATR or more
divergence           20      bullish divergence: the close of the last
                             ``divergence_recent`` bars makes a new low below the rest of the
                             ``divergence_lookback`` bars while the histogram's low is higher
                             than its (negative) low there: 1, else 0
RSI confirmation     15      0 at RSI >= 50, rising linearly to 1 at RSI <= ``rsi_oversold``
KDJ cross            10      K crosses above D: 1, decaying over ``kdj_cross_decay_bars``
KDJ J extreme        10      0 at J >= ``j_oversold + j_band``, 1 at J <= ``j_oversold``
===================  ======  ===========================================================

Trend filter: below the ``trend_period`` SMA the buy score is multiplied by
``counter_trend_factor`` (0.6), above it the sell score is. So both scores stay in
0..100. A component adds 0 while its indicator warms up (RSI/KDJ about 15 bars, MACD
``macd_slow + macd_signal - 2`` = 33 bars), so scores are never NaN. Prices are divided by
the first close before the indicators run, so the scores do not depend on the price level.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
import talib

from mlsignal.errors import ConfigError, InsufficientDataError
from mlsignal.features.compute import Bars, ohlcv_arrays

_EPS = 1e-12


@dataclass(frozen=True)
class RuleConfig:
    """Indicator periods (bars), thresholds and component weights (points of 100)."""

    macd_fast: int = 12
    macd_slow: int = 26
    macd_signal: int = 9
    rsi_period: int = 14
    rsi_oversold: float = 30.0
    rsi_overbought: float = 70.0
    kdj_period: int = 9
    kdj_k_smooth: int = 3
    kdj_d_smooth: int = 3
    j_oversold: float = 0.0
    j_overbought: float = 100.0
    j_band: float = 20.0
    trend_period: int = 50
    atr_period: int = 14
    cross_decay_bars: int = 5
    kdj_cross_decay_bars: int = 3
    momentum_atr: float = 0.1
    divergence_lookback: int = 30
    divergence_recent: int = 5
    counter_trend_factor: float = 0.6
    w_cross: float = 30.0
    w_momentum: float = 15.0
    w_divergence: float = 20.0
    w_rsi: float = 15.0
    w_kdj_cross: float = 10.0
    w_kdj_extreme: float = 10.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (not isinstance(value, int) or value <= 0):
                raise ConfigError(f"RuleConfig.{f.name} must be a positive int, got {value!r}")
        if self.macd_fast >= self.macd_slow:
            raise ConfigError("RuleConfig.macd_fast must be shorter than macd_slow")
        if not self.rsi_oversold < 50.0 < self.rsi_overbought:
            raise ConfigError("RuleConfig needs rsi_oversold < 50 < rsi_overbought")
        if self.j_band <= 0 or self.momentum_atr <= 0:
            raise ConfigError("RuleConfig.j_band and momentum_atr must be positive")
        if self.divergence_recent >= self.divergence_lookback:
            raise ConfigError("RuleConfig.divergence_recent must be < divergence_lookback")
        if not 0.0 <= self.counter_trend_factor <= 1.0:
            raise ConfigError("RuleConfig.counter_trend_factor must be within 0..1")
        weights = self.weights
        if min(weights.values()) < 0 or sum(weights.values()) > 100.0 + 1e-9:
            raise ConfigError(f"RuleConfig weights must be >= 0 and sum to <= 100: {weights}")

    @property
    def weights(self) -> dict[str, float]:
        """Component name -> weight (points of 100)."""
        return {f.name[2:]: getattr(self, f.name) for f in fields(self) if f.name[:2] == "w_"}


# --- components: each returns (buy, sell) strengths in 0..1, 0 where undefined -------------
def _pulse(event: np.ndarray, decay: int) -> np.ndarray:
    """1 on an event bar, falling linearly to 0 over ``decay`` bars (the max of overlaps)."""
    out = event.astype(np.float64)
    for k in range(1, decay):
        out[k:] = np.maximum(out[k:], event[:-k] * (1.0 - k / decay))
    return out


def _crosses(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bars where ``a`` crosses above ``b`` and below ``b`` (bool arrays)."""
    d = a - b
    up, down = np.zeros(len(d), bool), np.zeros(len(d), bool)
    up[1:] = (d[1:] > 0) & (d[:-1] <= 0)
    down[1:] = (d[1:] < 0) & (d[:-1] >= 0)
    return up, down


def _ramp(x: np.ndarray, zero: float, one: float) -> np.ndarray:
    """Linear 0 at ``zero`` to 1 at ``one``, clipped; NaN -> 0."""
    return _nan_to_zero(np.clip((x - zero) / (one - zero), 0.0, 1.0))


def _nan_to_zero(x: np.ndarray) -> np.ndarray:
    """``np.nan_to_num`` for arrays with no infinities, in place: a fraction of its cost."""
    x[np.isnan(x)] = 0.0
    return x


def _indicators(h: np.ndarray, low: np.ndarray, c: np.ndarray, cfg: RuleConfig) -> dict:
    """The recursive indicators (TA-Lib), over every bar: they depend on where bars start."""
    if len(c) == 0:
        raise InsufficientDataError("got 0 bars; rule scores need at least one")
    ref = c[0]
    h, low, c = h / ref, low / ref, c / ref  # scale-free; keeps TA-Lib's 1e-8 epsilons away
    line, signal, hist = talib.MACD(c, cfg.macd_fast, cfg.macd_slow, cfg.macd_signal)
    k, d = talib.STOCH(h, low, c, cfg.kdj_period, cfg.kdj_k_smooth, 0, cfg.kdj_d_smooth, 0)
    return {
        "c": c,
        "atr": talib.ATR(h, low, c, cfg.atr_period),
        "line": line,
        "signal": signal,
        "hist": hist,
        "rsi": talib.RSI(c, cfg.rsi_period),
        "k": k,
        "d": d,
        "sma": talib.SMA(c, cfg.trend_period),
    }


def _last_rows(cfg: RuleConfig) -> int:
    """Bars of indicators the components of the last bar look at (crosses need one more)."""
    return max(2, cfg.cross_decay_bars + 1, cfg.kdj_cross_decay_bars + 1, cfg.divergence_lookback)


def _macd_parts(ind: dict, cfg: RuleConfig) -> dict[str, tuple]:
    c, atr, hist = ind["c"], ind["atr"], ind["hist"]
    up, down = _crosses(ind["line"], ind["signal"])
    chg = np.full(len(c), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        chg[1:] = np.where(atr[1:] > _EPS, (hist[1:] - hist[:-1]) / atr[1:], 0.0)
    return {
        "cross": (_pulse(up, cfg.cross_decay_bars), _pulse(down, cfg.cross_decay_bars)),
        "momentum": (_ramp(chg, 0.0, cfg.momentum_atr), _ramp(-chg, 0.0, cfg.momentum_atr)),
        "divergence": _divergence(c, hist, cfg.divergence_lookback, cfg.divergence_recent),
    }


def _divergence(c: np.ndarray, hist: np.ndarray, lookback: int, recent: int) -> tuple:
    """Bullish / bearish MACD-histogram divergence against the close (0 or 1 per bar)."""
    n = len(c)
    bull, bear = np.zeros(n), np.zeros(n)
    if n < lookback:
        return bull, bear
    cw = np.lib.stride_tricks.sliding_window_view(c, lookback)  # (n - lookback + 1, lookback)
    hw = np.lib.stride_tricks.sliding_window_view(hist, lookback)
    cp, cr, hp, hr = cw[:, :-recent], cw[:, -recent:], hw[:, :-recent], hw[:, -recent:]
    hp_min, hp_max = hp.min(axis=1), hp.max(axis=1)  # NaN in warm-up -> comparisons False
    lower_low = cr.min(axis=1) < cp.min(axis=1)
    higher_high = cr.max(axis=1) > cp.max(axis=1)
    bull[lookback - 1 :] = lower_low & (hr.min(axis=1) > hp_min) & (hp_min < 0)
    bear[lookback - 1 :] = higher_high & (hr.max(axis=1) < hp_max) & (hp_max > 0)
    return bull, bear


def _confirm_parts(ind: dict, cfg: RuleConfig) -> dict:
    rsi, k, d = ind["rsi"], ind["k"], ind["d"]
    j = 3.0 * k - 2.0 * d
    up, down = _crosses(k, d)
    decay = cfg.kdj_cross_decay_bars
    return {
        "rsi": (_ramp(rsi, 50.0, cfg.rsi_oversold), _ramp(rsi, 50.0, cfg.rsi_overbought)),
        "kdj_cross": (_pulse(up, decay), _pulse(down, decay)),
        "kdj_extreme": (
            _ramp(j, cfg.j_oversold + cfg.j_band, cfg.j_oversold),
            _ramp(j, cfg.j_overbought - cfg.j_band, cfg.j_overbought),
        ),
    }


def _components(bars: Bars, cfg: RuleConfig) -> tuple[dict[str, tuple], np.ndarray]:
    """Component strengths and the trend sign (+1 above the trend SMA, -1 below, 0 unknown)."""
    _, h, low, c, _ = ohlcv_arrays(bars)
    return _components_hlc(h, low, c, cfg)


def _components_hlc(
    h: np.ndarray, low: np.ndarray, c: np.ndarray, cfg: RuleConfig, tail: int | None = None
) -> tuple[dict[str, tuple], np.ndarray]:
    """:func:`_components` on float64 high, low, close arrays (not modified).

    With ``tail``, the components of the last ``tail`` bars only: the indicators still run
    over every bar; the components, which look back at most :func:`_last_rows` bars, then
    run on the indicators' last ``tail`` bars with the same element-wise code, so their
    last ``tail - _last_rows + 1`` values are the full computation's, bit for bit.
    """
    ind = _indicators(h, low, c, cfg)
    if tail is not None:
        ind = {name: x[-tail:] for name, x in ind.items()}
    parts = {**_macd_parts(ind, cfg), **_confirm_parts(ind, cfg)}
    trend = _nan_to_zero(np.sign(ind["c"] - ind["sma"]))
    return parts, trend


# --- public API ---------------------------------------------------------------------------
def rule_components(bars: Bars, config: RuleConfig = RuleConfig()) -> pd.DataFrame:
    """Each component's points before the trend filter: columns ``buy_<name>``, ``sell_<name>``.

    For explaining a score; ``rule_scores`` is their sum per side times the trend damping.
    """
    parts, _ = _components(bars, config)
    cols = {}
    for name, (buy, sell) in parts.items():
        cols[f"buy_{name}"] = config.weights[name] * buy
        cols[f"sell_{name}"] = config.weights[name] * sell
    return pd.DataFrame(cols, index=_index(bars))


def rule_scores(bars: Bars, config: RuleConfig = RuleConfig()) -> pd.DataFrame:
    """Rule scores per bar: DataFrame with float64 columns ``ss`` and ``bs`` in 0..100.

    ``bars``: canonical OHLCV DataFrame (or ``(n, 5)`` array); the result has its index.
    Components add 0 while their indicators warm up (MACD: the first 33 bars), never NaN.
    """
    _, h, low, c, _ = ohlcv_arrays(bars)
    ss, bs = score_arrays(h, low, c, config)
    return pd.DataFrame({"ss": ss, "bs": bs}, index=_index(bars))


def score_arrays(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, config: RuleConfig = RuleConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rule_scores` without pandas: float64 arrays ``(ss, bs)`` from price arrays.

    The very code :func:`rule_scores` runs, so the values are the same bit for bit. Used by
    the streaming path (:mod:`mlsignal.features.streaming`), which holds bars as arrays.
    """
    return _scores(high, low, close, config)


def _scores(
    h: np.ndarray, low: np.ndarray, c: np.ndarray, config: RuleConfig, tail: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    parts, trend = _components_hlc(h, low, c, config, tail)
    n, weights = len(trend), config.weights
    bs, ss = np.zeros(n), np.zeros(n)
    for name, (buy, sell) in parts.items():
        bs += weights[name] * buy
        ss += weights[name] * sell
    bs[trend < 0] *= config.counter_trend_factor
    ss[trend > 0] *= config.counter_trend_factor
    return np.clip(ss, 0, 100), np.clip(bs, 0, 100)


def last_rule_scores(bars: Bars, config: RuleConfig = RuleConfig()) -> tuple[float, float]:
    """``(ss, bs)`` of the last bar, each in 0..100."""
    _, h, low, c, _ = ohlcv_arrays(bars)
    return last_score(h, low, c, config)


def last_score(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, config: RuleConfig = RuleConfig()
) -> tuple[float, float]:
    """:func:`last_rule_scores` from price arrays, without pandas.

    Computes the components of the last bars only (the indicators over every bar), so the
    cost is the TA-Lib passes plus a constant; equal bit for bit to ``score_arrays(...)[-1]``.
    """
    ss, bs = _scores(high, low, close, config, tail=_last_rows(config))
    return float(ss[-1]), float(bs[-1])


def _index(bars: Bars) -> pd.Index:
    return bars.index if isinstance(bars, pd.DataFrame) else pd.RangeIndex(len(bars))
