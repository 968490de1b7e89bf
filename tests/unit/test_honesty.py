"""Neutral fusion and Kelly, non-negative stacking, block nulls, verdicts and timeframes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsignal.data import timeframe
from mlsignal.errors import ConfigError, TimeframeError
from mlsignal.models.fusion import FusionConfig, fuse, fuse_batch
from mlsignal.models.kelly import KellyConfig, KellyParams, kelly_fraction, kelly_fraction_batch
from mlsignal.models.stack import apply_calibration, fit_stack, flat_knots
from mlsignal.pipeline import Prepared
from mlsignal.training.skill import block_permutation, default_block, skill_nulls, verdict

NEUTRAL = FusionConfig(base_rate=0.58)
PAYOFF = KellyParams(payoff_long=0.9, payoff_short=1 / 0.9)


def test_bull_prob_at_the_base_rate_leaves_scores_unchanged_and_kelly_flat():
    assert fuse(40.0, 70.0, 0.58, NEUTRAL) == (40.0, 70.0)
    assert kelly_fraction(0.58, "normal", PAYOFF, KellyConfig(), 0.58) == (0.0, "flat")
    # The old centre at 0.5 turned the same base rate into a long tilt on every bar.
    old = FusionConfig(base_rate=0.58, drift_prior=True)
    ess, ebs = fuse(40.0, 70.0, 0.58, old)
    assert ebs > 70.0 and ess < 40.0


def test_departures_from_the_base_rate_move_scores_both_ways():
    ess, ebs = fuse(40.0, 70.0, 0.58 + 0.6 * 0.42, NEUTRAL)  # c = 0.6 above the centre
    assert (ess, ebs) == pytest.approx((28.0, 91.0))
    ess, ebs = fuse(40.0, 70.0, 0.58 - 0.6 * 0.58, NEUTRAL)  # c = -0.6 below it
    assert (ess, ebs) == pytest.approx((52.0, 49.0))
    e_ss, e_bs = fuse_batch(np.array([40.0, 40.0]), np.array([70.0, 70.0]),
                            np.array([0.58, 0.9]), NEUTRAL)  # fmt: skip
    assert e_ss[0] == 40.0 and e_bs[0] == 70.0 and e_bs[1] > 70.0


def test_neutral_kelly_sizes_only_the_departure():
    k, side = kelly_fraction(0.68, "normal", PAYOFF, KellyConfig(), 0.58)
    assert side == "long" and k == pytest.approx(0.5 * 0.10 * (1 + 1 / 0.9))
    k, side = kelly_fraction(0.48, "normal", PAYOFF, KellyConfig(), 0.58)
    assert side == "short" and k == pytest.approx(0.5 * 0.10 * (1 + 0.9))
    # The drift prior (base_rate=None) is the plain Kelly bet: long at the base rate.
    k, side = kelly_fraction(0.58, "normal", KellyParams(1.0, 1.0), KellyConfig())
    assert side == "long" and k == pytest.approx(0.5 * (0.58 - 0.42))
    ks, sides = kelly_fraction_batch(np.full(100, 0.58), ["normal"] * 100, PAYOFF,
                                     KellyConfig(), 0.58)  # fmt: skip
    assert (ks == 0).all() and set(sides) == {"flat"}


def test_fusion_config_checks_its_base_rate():
    with pytest.raises(ConfigError, match="base_rate"):
        FusionConfig(base_rate=1.0)
    assert FusionConfig().centre == 0.5 and NEUTRAL.centre == 0.58
    assert FusionConfig(base_rate=0.58, drift_prior=True).centre == 0.5


def test_stack_weights_are_never_negative():
    """Unconstrained logistic regression bets against the second model here; ours cannot."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    z = rng.standard_normal((4000, 2))
    y = (rng.random(4000) < 1 / (1 + np.exp(-(0.6 * z[:, 0] - 0.4 * z[:, 1])))).astype(float)
    assert LogisticRegression(C=10.0).fit(z, y).coef_[0, 1] < -0.2
    w, _ = fit_stack(z, y)
    assert w[1] == 0.0 and w[0] > 0.3


def test_a_flat_calibration_says_the_base_rate_everywhere():
    x, y = flat_knots(0.5731)
    out = apply_calibration(np.linspace(0, 1, 11), x, y)
    assert np.all(out == float(np.float32(0.5731)))


def _overlapping_labels(n: int, horizon: int, rng: np.random.Generator) -> np.ndarray:
    steps = rng.standard_normal(n + horizon)
    fwd = np.convolve(steps, np.ones(horizon), "valid")[1 : n + 1]  # sum of the next h steps
    return (fwd > 0).astype(float)


def test_block_null_is_wider_than_the_iid_one_on_overlapping_labels():
    """5-bar labels overlap, and a slowly moving p (as a model's output is) ranks runs of them
    by chance: the i.i.d. shuffle cannot see that, the block shuffle can."""
    rng = np.random.default_rng(1)
    n, h = 3000, 5
    y = _overlapping_labels(n, h, rng)
    p = pd.Series(rng.standard_normal(n)).rolling(20, min_periods=1).mean().to_numpy()
    p = (p - p.min()) / np.ptp(p)
    groups = np.zeros(n)
    iid = skill_nulls(y, p, None, groups, block=1, n_permutations=300, seed=0)["auc"]
    blk = skill_nulls(y, p, None, groups, block=default_block(h), n_permutations=300, seed=0)
    width = lambda d: d["null_q95"] - d["null_q05"]  # noqa: E731
    assert width(blk["auc"]) > 1.4 * width(iid)
    assert blk["method"].startswith("block permutation") and blk["block"] == 20


def test_block_permutation_moves_whole_blocks_within_each_symbol():
    groups = np.array(["a"] * 10 + ["b"] * 7)
    idx = block_permutation(groups, 3, np.random.default_rng(0))
    assert sorted(idx.tolist()) == list(range(17))
    assert set(idx[:10]) == set(range(10)) and set(idx[10:]) == set(range(10, 17))
    starts = [idx[i] for i in range(0, 10, 3)]
    assert all(s % 3 == 0 for s in starts)  # each block begins where a block began


def _nulls(p_auc: float, p_ic: float) -> dict:
    cell = lambda p: {"observed": 0.55, "null_q95": 0.53, "p_value": p}  # noqa: E731
    return {"auc": cell(p_auc), "ic": cell(p_ic)}


def test_verdicts_in_words():
    assert verdict(_nulls(0.01, 0.5), 0.240, 0.245)["verdict"] == "skill"
    assert verdict(_nulls(0.30, 0.4), 0.245, 0.245)["verdict"] == "no skill detected"
    assert verdict(_nulls(0.30, 0.4), 0.260, 0.245)["verdict"] == "worse than base rate"
    # Ranking beyond the null but probabilities worse than the base rate: not skill.
    v = verdict(_nulls(0.01, 0.4), 0.260, 0.245)
    assert v["verdict"] == "no skill detected" and "worse than the base rate" in v["why"]


def _prepared(freq: str, n: int = 300) -> Prepared:
    from mlsignal.features import DEFAULT_SCHEMA

    t = pd.date_range("2024-01-01", periods=n, freq=freq).as_unit("ns").asi8
    return Prepared("BTC", 50.0, 50.0, t, np.ones((n, 5)), DEFAULT_SCHEMA)


def test_timeframe_is_learnt_named_and_checked():
    assert timeframe.learn({"a": 86400.0, "b": 86400.0}) == {"bar_seconds": 86400.0, "name": "1d"}
    with pytest.raises(ConfigError, match="a 1d, b 1h"):
        timeframe.learn({"a": 86400.0, "b": 3600.0})
    assert timeframe.name(4 * 3600) == "4h" and timeframe.name(90) == "90s"
    timeframe.check(86400.0, [_prepared("D"), _prepared("B")])  # weekends are not a timeframe
    with pytest.raises(TimeframeError, match=r"BTC: bars are 1h apart .* trained on 1d"):
        timeframe.check(86400.0, [_prepared("D"), _prepared("h")])
    timeframe.check(None, [_prepared("h")])  # a bundle from before timeframes: no check


def test_the_shuffled_control_sizes_kelly_as_a_live_call_does():
    """A control that shuffles a constant base-rate bull_prob must stay flat, as live is."""
    from types import SimpleNamespace

    from mlsignal.evaluate.controls import rescore

    bundle = SimpleNamespace(fusion=NEUTRAL, kelly_params=PAYOFF, kelly_config=KellyConfig())
    frame = pd.DataFrame({"ss": [40.0] * 5, "bs": [70.0] * 5, "regime": ["normal"] * 5})
    out = rescore(bundle, frame, np.full(5, 0.58))
    assert (out["kelly"] == 0).all() and set(out["kelly_side"]) == {"flat"}
    assert (out["enhanced_bs"] == 70.0).all() and (out["enhanced_ss"] == 40.0).all()
