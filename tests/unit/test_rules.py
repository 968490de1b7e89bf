from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import talib
from arch.data import sp500

from mlsignal.errors import ConfigError, InsufficientDataError
from mlsignal.rules import RuleConfig, last_rule_scores, rule_components, rule_scores

COLS = ["open", "high", "low", "close", "volume"]


def synthetic_bars(n: int = 1500, seed: int = 0, p0: float = 100.0) -> pd.DataFrame:
    """Geometric random walk OHLCV with hourly timestamps."""
    rng = np.random.default_rng(seed)
    close = p0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    open_ = np.r_[p0, close[:-1]] * np.exp(rng.normal(0.0, 0.002, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.004, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.004, n)))
    index = pd.date_range("2020-01-01", periods=n, freq="h", name="timestamp")
    data = {"open": open_, "high": high, "low": low, "close": close}
    return pd.DataFrame({**data, "volume": rng.lognormal(12.0, 0.5, n)}, index=index)


def v_shape(down_first: bool, seed: int = 1) -> pd.DataFrame:
    """80 quiet bars, 25 bars of a sharp move, then 20 bars of a sharp move back."""
    rng = np.random.default_rng(seed)
    first, second = (-0.015, 0.02) if down_first else (0.015, -0.02)
    drift = np.r_[rng.normal(0.0, 0.003, 80), np.full(25, first), np.full(20, second)]
    close = 100.0 * np.exp(np.cumsum(drift + rng.normal(0.0, 0.002, len(drift))))
    open_ = np.r_[100.0, close[:-1]]
    index = pd.date_range("2021-01-01", periods=len(close), freq="D", name="timestamp")
    data = {"open": open_, "high": np.maximum(open_, close) * 1.002}
    data |= {"low": np.minimum(open_, close) * 0.998, "close": close, "volume": 1e6}
    return pd.DataFrame(data, index=index)


def macd_cross(close: np.ndarray, start: int, up: bool) -> int:
    line, signal, _ = talib.MACD(close, 12, 26, 9)
    d = line - signal
    cross = (d[1:] > 0) & (d[:-1] <= 0) if up else (d[1:] < 0) & (d[:-1] >= 0)
    found = np.flatnonzero(cross) + 1
    found = found[found >= start]
    assert len(found) >= 1
    return int(found[0])


@pytest.fixture(scope="module")
def spx() -> pd.DataFrame:
    bars = sp500.load().rename(columns=str.lower)[COLS].astype("float64")
    bars.index = pd.DatetimeIndex(bars.index, name="timestamp")
    return bars


@pytest.mark.parametrize("bars", ["spx", "synth"])
def test_bounded_finite_and_indexed(bars, spx):
    bars = spx if bars == "spx" else synthetic_bars()
    scores = rule_scores(bars)
    assert list(scores.columns) == ["ss", "bs"]
    assert scores.index.equals(bars.index)
    assert (scores.dtypes == np.float64).all()
    values = scores.to_numpy()
    assert np.isfinite(values).all()
    assert values.min() >= 0.0 and values.max() <= 100.0


def test_scores_vary_on_real_data(spx):
    scores = rule_scores(spx)
    for col in ("ss", "bs"):
        assert scores[col].std() > 5.0
        assert scores[col].nunique() > 100
        assert scores[col].max() > 40.0
        assert scores[col].min() == 0.0


def test_up_cross_favours_buy():
    bars = v_shape(down_first=True)
    cross = macd_cross(bars["close"].to_numpy(), 100, up=True)
    scores = rule_scores(bars).iloc[cross : cross + 4]
    assert (scores["bs"] > scores["ss"]).all()
    assert scores["bs"].iloc[0] >= 30.0 * RuleConfig().counter_trend_factor


def test_down_cross_favours_sell():
    bars = v_shape(down_first=False)
    cross = macd_cross(bars["close"].to_numpy(), 100, up=False)
    scores = rule_scores(bars).iloc[cross : cross + 4]
    assert (scores["ss"] > scores["bs"]).all()
    assert scores["ss"].iloc[0] >= 30.0 * RuleConfig().counter_trend_factor


def test_deterministic_and_scale_free():
    bars = synthetic_bars(600, seed=3)
    first = rule_scores(bars)
    pd.testing.assert_frame_equal(first, rule_scores(bars.copy()))
    scaled = bars.copy()
    scaled[["open", "high", "low", "close"]] *= 1e-4
    np.testing.assert_allclose(rule_scores(scaled).to_numpy(), first.to_numpy(), atol=1e-6)


def test_last_rule_scores_is_last_row(spx):
    ss, bs = last_rule_scores(spx)
    last = rule_scores(spx).iloc[-1]
    assert (ss, bs) == (last["ss"], last["bs"])
    assert isinstance(ss, float) and isinstance(bs, float)


def test_components_add_up(spx):
    parts = rule_components(spx)
    scores = rule_scores(spx)
    buy = parts.filter(like="buy_").sum(axis=1)
    sell = parts.filter(like="sell_").sum(axis=1)
    assert (scores["bs"] <= buy + 1e-9).all() and (scores["ss"] <= sell + 1e-9).all()
    assert ((scores["bs"] - buy).abs() < 1e-9).mean() > 0.3  # undamped bars match exactly


def test_short_input_is_zero_not_nan():
    scores = rule_scores(synthetic_bars(10))
    assert np.isfinite(scores.to_numpy()).all()
    with pytest.raises(InsufficientDataError):
        rule_scores(synthetic_bars(10).iloc[:0])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"w_cross": 50.0},
        {"w_rsi": -1.0},
        {"macd_fast": 30},
        {"rsi_oversold": 60.0},
        {"counter_trend_factor": 1.5},
        {"divergence_recent": 40},
        {"trend_period": 0},
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(ConfigError):
        RuleConfig(**kwargs)


def test_weights_sum_to_100():
    assert sum(RuleConfig().weights.values()) == pytest.approx(100.0)
