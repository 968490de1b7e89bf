from __future__ import annotations

import numpy as np
import pytest

from mlsignal.training.labels import LabelConfig, ex_ante_vol, triple_barrier_labels
from mlsignal.training.splits import holdout_tail, purged_walk_forward


def test_labels_up_first_is_bull_down_first_is_bear():
    rng = np.random.default_rng(0)
    base = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 40)))
    cfg = LabelConfig(horizon=5, k=1.0, vol_window=20)
    up = np.concatenate([base, base[-1] * np.array([1.05, 1.06, 0.90, 0.90, 0.90])])
    down = np.concatenate([base, base[-1] * np.array([0.95, 0.94, 1.10, 1.10, 1.10])])
    y_up, fwd_up = triple_barrier_labels(up, cfg)
    y_down, _ = triple_barrier_labels(down, cfg)
    t = len(base) - 1
    assert y_up[t] == 1.0 and y_down[t] == 0.0
    assert fwd_up[t] == pytest.approx(np.log(0.90))  # vertical barrier return is still r_h


def test_labels_vertical_barrier_uses_sign_and_tail_is_nan():
    close = np.linspace(100, 100.5, 60)  # tiny drift: barriers are never touched
    close[1::2] += 0.3  # some noise so the volatility is positive
    y, fwd = triple_barrier_labels(close, LabelConfig(horizon=5, k=50.0))
    valid = np.isfinite(y)
    assert np.array_equal(y[valid], (fwd[valid] > 0).astype(float))
    assert np.isnan(y[-5:]).all() and np.isnan(fwd[-5:]).all()
    assert np.isnan(y[:20]).all()  # volatility warm-up


def test_labels_use_only_future_h_bars():
    rng = np.random.default_rng(1)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 300)))
    y, _ = triple_barrier_labels(close, LabelConfig(horizon=5))
    changed = close.copy()
    changed[200:] *= 0.5  # a crash at bar 200 may only alter labels of bars 195..
    y2, _ = triple_barrier_labels(changed, LabelConfig(horizon=5))
    assert y2[199] == 0.0
    same = (y == y2) | (np.isnan(y) & np.isnan(y2))
    assert same[:195].all()


def test_ex_ante_vol_is_causal():
    rng = np.random.default_rng(2)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 100)))
    v = ex_ante_vol(close, 20)
    r = np.diff(np.log(close))
    assert v[50] == pytest.approx(np.std(r[30:50], ddof=1))


def test_purged_walk_forward_never_leaks():
    n, h, embargo = 2000, 5, 7
    start = np.arange(n)
    end = start + h
    folds = purged_walk_forward(start, end, n_folds=4, embargo=embargo)
    assert len(folds) == 4
    tested = np.concatenate([f.test for f in folds])
    assert len(np.unique(tested)) == len(tested)  # test blocks do not overlap
    for f in folds:
        assert end[f.train].max() < f.test_start - embargo  # purged + embargoed
        assert start[f.test].min() >= f.test_start
        assert start[f.train].max() < start[f.test].min()  # walk-forward: train before test


def test_purged_walk_forward_multi_symbol_timeline():
    # two symbols on the same timeline: samples interleave, positions repeat
    start = np.repeat(np.arange(1000), 2)
    end = start + 5
    for f in purged_walk_forward(start, end, n_folds=3, embargo=5):
        assert end[f.train].max() < f.test_start - 5


def test_holdout_tail_is_latest_and_purged():
    start = np.arange(1000)
    end = start + 5
    fit, val = holdout_tail(np.arange(1000), start, end, frac=0.2, gap=5)
    assert start[val].min() > end[fit].max() + 5
    assert 180 <= len(val) <= 220
