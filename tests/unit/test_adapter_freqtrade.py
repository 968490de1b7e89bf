"""The freqtrade adapter without freqtrade: a strategy-shaped object handing over
freqtrade-shaped dataframes (tests/integration/test_freqtrade.py runs freqtrade itself)."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mlsignal.adapters.freqtrade import (
    COLUMNS,
    MLSignalMixin,
    runmode_of,
    scorer_for,
    timeframe_seconds,
)
from mlsignal.errors import ConfigError, TimeframeError

WINDOW = 300  # candles a "bot" hands over each time


def _strategy(bundle, mode, **attrs):
    cls = type("Strat", (MLSignalMixin,), {"timeframe": "1d", "startup_candle_count": 300,
                                          "mlsignal_bundle": str(bundle), **attrs})  # fmt: skip
    s = cls()
    s.dp = SimpleNamespace(runmode=mode)
    return s


@pytest.fixture(scope="module")
def candles(sp500_bars):
    """Freqtrade's shape: a RangeIndex, ``date`` in UTC, OHLCV."""
    df = sp500_bars.iloc[-700:].reset_index().rename(columns={"timestamp": "date"})
    df["date"] = df["date"].dt.tz_localize("UTC").dt.as_unit("ms")
    return df


@pytest.fixture(scope="module")
def backtest(tiny_bundle, candles):
    return _strategy(tiny_bundle, "backtest").mlsignal_indicators(candles.copy(), {"pair": "BT"})


def _same_rows(seen, full):
    merged = seen.merge(full, on="date", suffixes=("", "_bt"))
    rows = merged[merged["bull_prob"].notna()]
    for c in COLUMNS:
        np.testing.assert_array_equal(rows[c].to_numpy(), rows[f"{c}_bt"].to_numpy(), c)
    return len(rows)


def test_backtest_columns_are_score_frame(tiny_bundle, candles, backtest):
    enhancer = scorer_for(tiny_bundle).enhancer
    want = enhancer.score_frame(candles)
    assert set(COLUMNS) <= set(backtest.columns)
    np.testing.assert_array_equal(backtest["kelly"], want["kelly"])
    pd.testing.assert_series_equal(backtest["ml_source"], want["source"], check_names=False)
    assert backtest["bull_prob"].iloc[: enhancer.min_bars - 1].isna().all()


def test_the_strategys_own_scores_are_used(tiny_bundle, candles):
    df = candles.copy()
    df["my_ss"], df["my_bs"] = 20.0, np.linspace(0, 100, len(df))
    s = _strategy(tiny_bundle, "backtest", mlsignal_ss_column="my_ss", mlsignal_bs_column="my_bs")
    out = s.mlsignal_indicators(df, {"pair": "OWN"})
    np.testing.assert_array_equal(out["rule_bs"].iloc[-5:], df["my_bs"].iloc[-5:])
    with pytest.raises(ConfigError, match=r"no column 'nope'"):
        s.mlsignal_indicators(candles.copy(), {"pair": "OWN"}, ss="nope")


def test_dry_run_streams_new_candles_with_the_backtest_numbers(tiny_bundle, candles, backtest):
    live = _strategy(tiny_bundle, "dry_run")
    pair = "LIVE"
    compared = 0
    for end in range(WINDOW, WINDOW + 8):  # a bot's frame: the last WINDOW candles
        frame = candles.iloc[end - WINDOW : end].reset_index(drop=True)
        compared += _same_rows(live.mlsignal_indicators(frame.copy(), {"pair": pair}), backtest)
    assert live.mlsignal_scorer().stats(pair) == (7, 1)  # one frame scored, then streamed
    # the same frame again: nothing new, the columns from what was scored
    again = live.mlsignal_indicators(frame.copy(), {"pair": pair})
    _same_rows(again, backtest)
    assert live.mlsignal_scorer().stats(pair) == (7, 1)
    # a candle changed after the fact: the new candle is scored from the frame, not the stream
    changed = candles.iloc[end + 1 - WINDOW : end + 1].reset_index(drop=True).copy()
    changed.loc[len(changed) - 2, "volume"] += 1.0
    out = live.mlsignal_indicators(changed, {"pair": pair})
    assert live.mlsignal_scorer().stats(pair) == (7, 2)
    want = scorer_for(tiny_bundle).enhancer.score_frame(changed)
    assert out["bull_prob"].iloc[-1] == want["bull_prob"].iloc[-1]
    assert out["rule_ss"].iloc[-1] == want["rule_ss"].iloc[-1]
    # streaming goes on from there; then a jump past the frame rescores the new candles
    nxt = candles.iloc[end + 2 - WINDOW : end + 2].reset_index(drop=True).copy()
    nxt.loc[len(nxt) - 3, "volume"] += 1.0
    live.mlsignal_indicators(nxt, {"pair": pair})
    assert live.mlsignal_scorer().stats(pair) == (8, 2)
    jump = candles.iloc[len(candles) - WINDOW :].reset_index(drop=True)
    compared += _same_rows(live.mlsignal_indicators(jump.copy(), {"pair": pair}), backtest)
    assert live.mlsignal_scorer().stats(pair) == (8, 3)
    assert compared > 8 * (WINDOW - scorer_for(tiny_bundle).enhancer.min_bars)


def test_another_timeframe_is_refused_with_the_way_to_allow_it(tiny_bundle, candles):
    hourly = _strategy(tiny_bundle, "backtest", timeframe="1h")
    with pytest.raises(TimeframeError, match=r"timeframe is 1h but .* trained on 1d bars.*"
                       r"mlsignal_allow_timeframe_mismatch = True"):  # fmt: skip
        hourly.mlsignal_indicators(candles.copy(), {"pair": "TF"})
    # the strategy says 1d but the candles are hourly: the enhancer's check, with the hint
    bars = candles.copy()
    bars["date"] = pd.date_range("2024-01-01", periods=len(bars), freq="h", tz="UTC")
    daily = _strategy(tiny_bundle, "backtest")
    with pytest.raises(TimeframeError, match=r"1h apart.*in a freqtrade strategy: mlsignal_allow"):
        daily.mlsignal_indicators(bars.copy(), {"pair": "TF"})
    allowed = _strategy(tiny_bundle, "backtest", timeframe="1h",
                        mlsignal_allow_timeframe_mismatch=True)  # fmt: skip
    assert allowed.mlsignal_indicators(bars, {"pair": "TF"})["bull_prob"].notna().any()


def test_no_bundle_says_where_to_set_one(monkeypatch):
    monkeypatch.delenv("MLSIGNAL_BUNDLE", raising=False)
    with pytest.raises(
        ConfigError, match=r"set mlsignal_bundle in the strategy or MLSIGNAL_BUNDLE"
    ):
        scorer_for(None)


def test_runmodes_and_timeframes():
    assert runmode_of(SimpleNamespace(dp=SimpleNamespace(runmode="live"))) == "live"
    assert runmode_of(SimpleNamespace(dp=None, config={"runmode": "hyperopt"})) == "hyperopt"
    assert runmode_of(object()) == "other"
    assert [timeframe_seconds(t) for t in ("5m", "1h", "1d", "1w", "x")] == [
        300, 3600, 86400, 604800, None,
    ]  # fmt: skip


def test_importing_the_adapter_imports_no_freqtrade():
    code = "import sys, mlsignal.adapters.freqtrade; print('freqtrade' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"
