"""``MLSignalEnhancer.score_frame``: every bar at once, the numbers of bar-by-bar calls."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsignal.enhancer import MLSignalEnhancer
from mlsignal.errors import ConfigError, DataError, TimeframeError
from mlsignal.frames import FRAME_COLUMNS

NUMBERS = ("bull_prob", "base_rate", "p_lstm", "p_tft", "regime_vol", "kelly", "rule_ss", "rule_bs")
TEXT = ("regime", "kelly_side", "source")
SCORED = 50  # bars compared one by one


@pytest.fixture(scope="module")
def enhancer(tiny_bundle):
    # ONNX Runtime on CPU (the default there): a batch's rows are bit for bit the rows of
    # one-window calls, so the comparison below is exact.
    return MLSignalEnhancer(tiny_bundle, device="cpu", backend="onnx")


@pytest.fixture(scope="module")
def bars(enhancer, sp500_bars):
    """The bars the model needs for its first score, then SCORED - 1 more."""
    return sp500_bars.iloc[-(enhancer.min_bars - 1 + SCORED) :]


def _expected(enhancer, bars, t, ss=None, bs=None):
    ess, ebs, info = enhancer.enhance_signal(bars.iloc[: t + 1], ss, bs)
    return {**info, "enhanced_ss": ess, "enhanced_bs": ebs}


def _assert_row_is(row, want, atol=0.0):
    for key in (*NUMBERS, "enhanced_ss", "enhanced_bs"):
        assert row[key] == pytest.approx(want[key], abs=atol, rel=0), key
    for key in TEXT:
        assert row[key] == want[key], key


def test_every_row_equals_the_bar_by_bar_call(enhancer, bars):
    out = enhancer.score_frame(bars, batch_size=16)  # several chunks, the last one short
    first = enhancer.min_bars - 1
    assert tuple(out.columns) == FRAME_COLUMNS
    assert out.index.equals(bars.index) and len(out) == len(bars)
    assert out.iloc[:first][list(NUMBERS)].isna().all().all()
    assert out.iloc[:first]["regime"].isna().all()
    for t in range(first, len(bars)):
        _assert_row_is(out.iloc[t], _expected(enhancer, bars, t))
    assert (out.iloc[first:]["source"] == "local").all()


def test_per_row_scores_are_used_row_by_row(enhancer, bars):
    rng = np.random.default_rng(0)
    ss, bs = rng.uniform(0, 100, len(bars)), rng.uniform(0, 100, len(bars))
    ss[0] = np.nan  # rows the model does not score may hold anything (indicator warm-up)
    out = enhancer.score_frame(bars, pd.Series(ss, index=bars.index), bs)
    for t in range(len(bars) - 10, len(bars)):
        _assert_row_is(out.iloc[t], _expected(enhancer, bars, t, ss[t], bs[t]))
    assert out["rule_ss"].iloc[-1] == ss[-1]
    # one side given, the other from the rules, and one number for every row
    half = enhancer.score_frame(bars, 40.0, None)
    _assert_row_is(half.iloc[-1], _expected(enhancer, bars, len(bars) - 1, 40.0, None))


def test_streamed_bars_give_the_same_rows(enhancer, bars, tiny_bundle):
    live = MLSignalEnhancer(tiny_bundle, device="cpu", backend="onnx")
    first = enhancer.min_bars - 1
    live.seed("X", bars.iloc[: first + 1])
    out = enhancer.score_frame(bars)
    for t in range(first + 1, len(bars)):
        ess, ebs, info = live.enhance_bar("X", bars.iloc[t])
        _assert_row_is(out.iloc[t], {**info, "enhanced_ss": ess, "enhanced_bs": ebs})


def test_freqtrade_shaped_and_newest_first_frames_keep_their_rows(enhancer, bars):
    ft = bars.reset_index().rename(columns={"timestamp": "date"})
    ft["date"] = ft["date"].dt.tz_localize("UTC")
    ft["my_indicator"] = 1.0
    want = enhancer.score_frame(bars)
    got = enhancer.score_frame(ft)
    assert got.index.equals(ft.index)
    np.testing.assert_array_equal(got["bull_prob"].to_numpy(), want["bull_prob"].to_numpy())
    flipped = ft.iloc[::-1]  # newest first: scores per row in that order too
    ss = np.linspace(90.0, 10.0, len(ft))
    back = enhancer.score_frame(flipped, ss, 20.0)
    assert back.index.equals(flipped.index)
    newest = _expected(enhancer, bars, len(bars) - 1, 90.0, 20.0)
    _assert_row_is(back.loc[len(ft) - 1], newest)
    _assert_row_is(back.iloc[1], _expected(enhancer, bars, len(bars) - 2, ss[1], 20.0))


def test_too_few_bars_give_only_empty_rows(enhancer, bars):
    out = enhancer.score_frame(bars.iloc[: enhancer.min_bars - 1])
    assert len(out) == enhancer.min_bars - 1 and out["bull_prob"].isna().all()


def test_bad_scores_and_bad_bars_are_named(enhancer, bars):
    ss = np.full(len(bars), 50.0)
    ss[-3] = np.nan
    with pytest.raises(DataError, match=rf"^ss of the bar at {bars.index[-3]} .*got nan"):
        enhancer.score_frame(bars, ss)
    with pytest.raises(DataError, match=r"bs is a Series whose index is not the bars frame's"):
        enhancer.score_frame(bars, None, pd.Series(50.0, index=range(len(bars))))
    with pytest.raises(DataError, match=r"need one score per row"):
        enhancer.score_frame(bars, [50.0, 50.0])
    bad = bars.copy()
    bad.iloc[5, bad.columns.get_loc("high")] = -1.0
    with pytest.raises(DataError, match=r"^SPX: row 6 .*high"):
        enhancer.score_frame(bad, symbol="SPX")


def test_another_timeframe_is_refused_unless_allowed(enhancer, bars, tiny_bundle):
    hourly = bars.set_axis(pd.date_range("2024-01-01", periods=len(bars), freq="h"))
    with pytest.raises(TimeframeError, match=r"bars are 1h apart .* trained on 1d bars"):
        enhancer.score_frame(hourly)
    allowed = MLSignalEnhancer(tiny_bundle, device="cpu", allow_timeframe_mismatch=True)
    assert allowed.score_frame(hourly)["bull_prob"].notna().sum() == SCORED


def test_remote_mode_scores_on_the_local_runtime(enhancer, bars, tiny_bundle):
    # nothing listens on the discard port: a request would fail (and fall back), not hang
    remote = MLSignalEnhancer(tiny_bundle, remote_urls=["http://127.0.0.1:9"], backend="onnx")
    out = remote.score_frame(bars)
    assert (out["source"].iloc[-SCORED:] == "local").all()
    np.testing.assert_array_equal(out["kelly"], enhancer.score_frame(bars)["kelly"])
    off = MLSignalEnhancer(tiny_bundle, remote_urls=["http://127.0.0.1:9"], local_fallback="off")
    with pytest.raises(ConfigError, match=r"score_frame runs the local runtime"):
        off.score_frame(bars)
