"""Metric, backtest and period-selection functions of `mlsignal evaluate` on hand-made inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from mlsignal.errors import ConfigError, DataError
from mlsignal.evaluate.backtest import (
    backtest_stats,
    bars_per_year,
    kelly_positions,
    max_drawdown,
    positions_from_scores,
    run_backtest,
    sharpe,
)
from mlsignal.evaluate.controls import shuffle_blocks
from mlsignal.evaluate.metrics import (
    block_metrics,
    expected_calibration_error,
    probability_metrics,
    reliability_bins,
)
from mlsignal.evaluate.periods import TrainingSpan, in_sample_mask, oos_mask
from mlsignal.evaluate.report import jsonable
from mlsignal.evaluate.run import EvalOptions, select_ends
from mlsignal.evaluate.scoring import label_bars
from mlsignal.training.labels import LabelConfig


# --- positions and the backtest ---------------------------------------------------------------
def test_positions_follow_the_threshold_rule() -> None:
    ss = np.array([10.0, 40.0, 20.0, 30.0, 0.0])
    bs = np.array([30.0, 10.0, 25.0, 20.0, 10.0])
    # bs - ss = 20, -30, 5, -10, 10: long, short, flat, flat (not > 10), flat (not > 10)
    assert positions_from_scores(ss, bs, 10.0).tolist() == [1.0, -1.0, 0.0, 0.0, 0.0]
    assert positions_from_scores(ss, bs, 0.0).tolist() == [1.0, -1.0, 1.0, -1.0, 1.0]
    with pytest.raises(DataError, match="threshold"):
        positions_from_scores(ss, bs, -1.0)


def test_backtest_by_hand_with_costs() -> None:
    pos = np.array([1.0, 1.0, -1.0, 0.0])
    r = np.array([0.01, -0.02, 0.03, 0.05])  # r[t]: close t -> close t+1
    bt = run_backtest(pos, r, cost_bps=10.0)
    assert bt.turnover.tolist() == [1.0, 0.0, 2.0, 1.0]  # starts flat, flip costs 2 units
    np.testing.assert_allclose(bt.gross, [0.01, -0.02, -0.03, 0.0])
    np.testing.assert_allclose(bt.net, [0.009, -0.02, -0.032, -0.001])
    np.testing.assert_allclose(bt.equity, np.cumprod([1.009, 0.98, 0.968, 0.999]))
    stats = backtest_stats(bt, per_year=252.0)
    assert stats["hit_rate"] == pytest.approx(1 / 3)  # held bars with a move: +, -, -
    assert stats["exposure"] == pytest.approx(0.75)
    assert stats["turnover_per_year"] == pytest.approx(1.0 * 252)  # 4 units over 4 bars
    assert stats["total_turnover"] == pytest.approx(4.0)
    assert stats["cost_paid"] == pytest.approx(0.004)
    assert stats["total_return"] == pytest.approx(1.009 * 0.98 * 0.968 * 0.999 - 1)
    assert stats["bars_in_market"] == 3


def test_next_bar_execution_has_no_look_ahead() -> None:
    idx = pd.date_range("2020-01-01", periods=4, freq="D")
    close = [100.0, 110.0, 99.0, 99.0]
    bars = pd.DataFrame({"close": close}, index=idx)
    r = label_bars(bars, LabelConfig(horizon=1, vol_window=2))["next_ret"].to_numpy()
    np.testing.assert_allclose(r[:3], [0.1, -0.1, 0.0])
    assert np.isnan(r[3])  # the last bar has no next bar to earn
    # Long only at bar 0's close: earns exactly the move 100 -> 110, nothing of bar 0's own.
    bt = run_backtest(np.array([1.0, 0.0, 0.0]), r[:3], cost_bps=0.0)
    np.testing.assert_allclose(bt.net, [0.1, 0.0, 0.0])
    # A position known at t (the sign of the move into t) earns the next move, not its own.
    into = np.array([0.0, 1.0, -1.0])  # sign of close[t] - close[t-1]
    np.testing.assert_allclose(run_backtest(into, r[:3], 0.0).gross, [0.0, -0.1, -0.0])


def test_backtest_rejects_bad_input() -> None:
    with pytest.raises(DataError, match="same size"):
        run_backtest(np.ones(3), np.ones(2), 5.0)
    with pytest.raises(DataError, match="finite"):
        run_backtest(np.ones(2), np.array([0.01, np.nan]), 5.0)
    with pytest.raises(DataError, match="cost_bps"):
        run_backtest(np.ones(2), np.zeros(2), -1.0)


def test_max_drawdown_and_sharpe_by_hand() -> None:
    assert max_drawdown(np.array([1.1, 0.99, 1.2, 0.9])) == pytest.approx(0.25)
    assert max_drawdown(np.array([0.8, 0.9])) == pytest.approx(0.2)  # from the start at 1.0
    assert max_drawdown(np.array([1.0, 1.1, 1.2])) == 0.0
    net = np.array([0.01, -0.01, 0.02, 0.0])
    sd = math.sqrt((0.005**2 + 0.015**2 + 0.015**2 + 0.005**2) / 3)
    assert sharpe(net, 252.0) == pytest.approx(0.005 / sd * math.sqrt(252))
    assert math.isnan(sharpe(np.zeros(5), 252.0))


def test_kelly_positions_only_where_the_sides_agree() -> None:
    direction = np.array([1.0, 1.0, -1.0, 0.0, -1.0])
    kelly = np.array([0.2, 0.1, 0.05, 0.25, 0.0])
    side = np.array(["long", "short", "short", "long", "flat"])
    assert kelly_positions(direction, kelly, side).tolist() == [0.2, 0.0, -0.05, 0.0, 0.0]


def test_bars_per_year_from_the_calendar() -> None:
    hourly = pd.date_range("2021-01-01", periods=1000, freq="h")
    assert bars_per_year(hourly) == pytest.approx(365.2425 * 24)
    daily = pd.date_range("2021-01-01", periods=101, freq="D")
    assert bars_per_year(daily) == pytest.approx(365.2425)
    with pytest.raises(DataError):
        bars_per_year(hourly[:1])


# --- probability metrics ----------------------------------------------------------------------
def test_probability_metrics_by_hand() -> None:
    y = np.array([0.0, 0.0, 1.0, 1.0])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    m = probability_metrics(y, p)
    assert m["auc"] == pytest.approx(0.75)  # 3 of the 4 (bull, bear) pairs ordered right
    assert m["brier"] == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4)
    assert m["brier_base"] == pytest.approx(0.25)
    assert m["brier_skill"] == pytest.approx(1 - 0.158125 / 0.25)
    expected_ll = -np.mean(np.log([0.9, 0.6, 0.35, 0.8]))
    assert m["log_loss"] == pytest.approx(expected_ll)
    assert m["n"] == 4
    with pytest.raises(DataError, match="0 or 1"):
        probability_metrics(np.array([0.0, 2.0]), np.array([0.5, 0.5]))
    with pytest.raises(DataError, match=r"within 0\.\.1"):
        probability_metrics(np.array([0.0, 1.0]), np.array([0.5, 1.5]))


def test_reliability_bins_and_ece_by_hand() -> None:
    p = np.array([0.9, 0.1, 0.8, 0.2])
    y = np.array([1.0, 0.0, 1.0, 1.0])
    bins = reliability_bins(y, p, n_bins=2)
    assert [b["count"] for b in bins] == [2, 2]
    assert bins[0]["mean_pred"] == pytest.approx(0.15) and bins[0]["observed"] == 0.5
    assert bins[1]["mean_pred"] == pytest.approx(0.85) and bins[1]["observed"] == 1.0
    assert (bins[0]["lo"], bins[0]["hi"]) == (0.1, 0.2)
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx((2 * 0.35 + 2 * 0.15) / 4)
    # equal probabilities (a plateau of the calibration map) share one bin
    ties = reliability_bins(np.array([0, 1, 0, 1, 1.0]), np.array([0.3, 0.5, 0.5, 0.5, 0.7]), 2)
    assert [b["count"] for b in ties] == [1, 4]
    assert ties[1]["lo"] == 0.5 and ties[1]["observed"] == 0.75


def test_block_metrics_cut_time_into_equal_blocks() -> None:
    ts = pd.date_range("2020-01-01", periods=8, freq="D").to_numpy()[::-1]  # any order
    y = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    p = np.linspace(0.2, 0.9, 8)
    blocks = block_metrics(ts, y, p, 2)
    assert [b["n"] for b in blocks] == [4, 4]
    assert blocks[0]["first"] == "2020-01-01" and blocks[1]["last"] == "2020-01-08"


def test_shuffle_blocks_keeps_each_group_and_its_runs() -> None:
    groups = np.array(["a"] * 6 + ["b"] * 3)
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 10.0, 20.0, 30.0])
    for seed in range(5):
        out = shuffle_blocks(groups, values, 2, np.random.default_rng(seed))
        assert sorted(out[:6]) == [1, 2, 3, 4, 5, 6] and sorted(out[6:]) == [10, 20, 30]
        # whole blocks move: (1,2), (3,4), (5,6) stay pairs; b's blocks are (10,20), (30,)
        pairs = {tuple(out[i : i + 2]) for i in (0, 2, 4)}
        assert pairs == {(1.0, 2.0), (3.0, 4.0), (5.0, 6.0)}
        assert out[6:].tolist() in ([10.0, 20.0, 30.0], [30.0, 10.0, 20.0])


# --- out-of-sample selection ------------------------------------------------------------------
def _span(index: pd.DatetimeIndex, first: int, last: int) -> TrainingSpan:
    return TrainingSpan(index[first], index[last], 2, 1, ("x",), "x", 0, False)


def test_oos_masks_purge_horizon_and_embargo() -> None:
    idx = pd.date_range("2020-01-01", periods=30, freq="D")
    span = _span(idx, 10, 19)  # samples at bars 10..19, horizon 2, embargo 1
    after = oos_mask(idx, span, "after")
    before = oos_mask(idx, span, "before")
    # after: t >= 19 + 2 + 1 = 22; before: t + 2 < 10 - 1, so t <= 6
    assert np.flatnonzero(after).tolist() == list(range(22, 30))
    assert np.flatnonzero(before).tolist() == list(range(0, 7))
    assert np.flatnonzero(in_sample_mask(idx, span)).tolist() == list(range(7, 22))
    with pytest.raises(ConfigError, match="period"):
        oos_mask(idx, span, "sideways")


def test_select_ends_applies_warmup_period_dates_and_last() -> None:
    idx = pd.date_range("2020-01-01", periods=30, freq="D")
    bars = pd.DataFrame({"close": np.arange(30.0) + 1}, index=idx)
    span = _span(idx, 10, 19)
    assert select_ends(bars, 5, span, EvalOptions()).tolist() == list(range(22, 30))
    assert select_ends(bars, 5, span, EvalOptions(last=3)).tolist() == [27, 28, 29]
    opts = EvalOptions(period="before")
    assert select_ends(bars, 5, span, opts).tolist() == [4, 5, 6]  # warm-up needs 5 bars
    opts = EvalOptions(allow_in_sample=True, start="2020-01-15", end="2020-01-17")
    assert select_ends(bars, 5, span, opts).tolist() == [14, 15, 16]
    with pytest.raises(ConfigError, match="not a date"):
        select_ends(bars, 5, span, EvalOptions(start="soon"))
    with pytest.raises(ConfigError):
        EvalOptions(last=0).check()


def test_jsonable_writes_strict_json() -> None:
    obj = {"a": float("nan"), "b": [np.float64(1.5), np.int64(2), float("inf")], 3: (True,)}
    assert json.loads(json.dumps(jsonable(obj), allow_nan=False)) == {
        "a": None,
        "b": [1.5, 2, None],
        "3": [True],
    }


# --- the report's sections on a hand-made table -----------------------------------------------
def _bundle() -> object:
    from pathlib import Path

    from mlsignal.bundle import Bundle
    from mlsignal.features import DEFAULT_SCHEMA
    from mlsignal.models.fusion import FusionConfig
    from mlsignal.models.garch import GarchParams
    from mlsignal.models.kelly import KellyConfig, KellyParams

    garch = GarchParams(mu=0.0, omega=0.01, alpha=0.1, beta=0.8)
    return Bundle(
        Path("."), {}, {}, DEFAULT_SCHEMA, garch, KellyParams(), KellyConfig(), FusionConfig()
    )


def _table(bull_prob: float) -> pd.DataFrame:
    ts = pd.date_range("2020-01-01", periods=4, freq="D")
    rows = []
    for sym, rets in (("a", [0.01, -0.02, 0.03, 0.01]), ("b", [0.02, 0.0, -0.01, 0.01])):
        for i, t in enumerate(ts):
            bs, ss = (40.0, 10.0) if i % 2 == 0 else (10.0, 40.0)  # long, short, long, short
            rows.append(
                {
                    "timestamp": t, "symbol": sym, "ss": ss, "bs": bs,
                    "enhanced_ss": ss, "enhanced_bs": bs, "bull_prob": bull_prob,
                    "p_lstm": bull_prob, "p_tft": bull_prob, "kelly": 0.0,
                    "kelly_side": "flat", "regime": "normal", "label": float(i % 2 == 0),
                    "fwd": rets[i], "next_ret": rets[i],
                }
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_trading_section_pools_symbols_and_neutral_model_changes_nothing() -> None:
    from mlsignal.evaluate.study import trading_section

    opts = EvalOptions(cost_bps=0.0, permutations=3)
    section, curves = trading_section(_bundle(), _table(0.5), opts, per_year=252.0, block=2)
    pooled = section["pooled"]
    # a: +1,-1,+1,-1 on 0.01,-0.02,0.03,0.01 -> 0.01,0.02,0.03,-0.01; b: 0.02,0,-0.01,-0.01
    expected = np.array([0.015, 0.01, 0.01, -0.01])
    assert pooled["raw"]["total_return"] == pytest.approx(np.prod(1 + expected) - 1)
    for name in ("enhanced", "control_enhanced"):  # bull_prob 0.5 leaves the scores alone
        assert pooled[name]["total_return"] == pytest.approx(pooled["raw"]["total_return"])
    assert pooled["enhanced_kelly"]["exposure"] == 0.0  # no edge at 0.5: Kelly bets nothing
    assert section["per_symbol"]["a"]["raw"]["hit_rate"] == pytest.approx(0.75)
    ts, equity = curves["pooled"]["raw"]
    assert len(ts) == 4  # the two symbols' bars share their timestamps
    np.testing.assert_allclose(equity, np.cumprod(1 + expected))
    assert section["sharpe_null"]["n_permutations"] == 3


def test_classification_section_needs_labels() -> None:
    from mlsignal.evaluate.study import classification_section

    table = _table(0.6)
    section, _ = classification_section(table, EvalOptions(permutations=5), block=2)
    assert section["pooled"]["bull_prob"]["n"] == 8
    assert section["pooled"]["bull_prob"]["auc"] == 0.5  # a constant p ranks nothing
    table["label"] = np.nan
    with pytest.raises(DataError, match="have a label"):
        classification_section(table, EvalOptions(), block=2)
