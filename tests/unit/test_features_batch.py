"""Feature windows of many series at once (``feature_windows_many``): bit for bit the windows
``feature_window`` computes one series at a time, with the same errors."""

from __future__ import annotations

import numpy as np
import pytest

from mlsignal.data import load_sample
from mlsignal.errors import DataError, FeatureSchemaError, InsufficientDataError
from mlsignal.features import DEFAULT_SCHEMA, FeatureSchema, feature_window, feature_windows_many

LOOKBACK = DEFAULT_SCHEMA.lookback


def bits(a: np.ndarray) -> np.ndarray:
    """float32 values as their bit patterns: NaN == NaN, -0.0 != 0.0."""
    return np.ascontiguousarray(a).view(np.uint32)


def one_by_one(stack: np.ndarray, schema: FeatureSchema = DEFAULT_SCHEMA) -> np.ndarray:
    return np.stack([feature_window(s, schema) for s in stack])


def every_end(values: np.ndarray, n: int = LOOKBACK, stride: int = 1) -> np.ndarray:
    """``(N, n, 5)``: the ``n`` bars ending at every ``stride``-th bar of ``values``."""
    return np.stack([values[e - n + 1 : e + 1] for e in range(n - 1, len(values), stride)])


def synthetic(n: int, seed: int, kind: str) -> np.ndarray:
    """``(n, 5)`` bars of a random walk with the edge cases features must survive."""
    rng = np.random.default_rng(seed)
    close = np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    open_ = np.r_[close[0], close[:-1]]
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.003, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.003, n)))
    volume = np.round(rng.lognormal(8.0, 1.0, n))  # integers: the exact-sum shortcut
    if kind == "flat":  # no change for a stretch, and bars with o = h = l = c
        close[100:180] = close[99]
        open_[100:180] = high[100:180] = low[100:180] = close[99]
    elif kind == "zero_volume":  # every volume of the lookback is zero, then runs of zeros
        volume[:] = 0.0
        volume[n // 2 :: 3] = 7.0
    elif kind == "fractional_volume":  # fsum, not the shortcut
        volume = rng.lognormal(2.0, 2.0, n)
    elif kind == "huge_volume":  # integers whose sum passes 2**53: fsum again
        volume = np.round(rng.uniform(1e14, 9e14, n))
    elif kind == "constant_volume":
        volume[:] = 12345.0
    elif kind == "tiny":
        close, open_, high, low = (x * 1e-9 for x in (close, open_, high, low))
    elif kind == "huge":
        close, open_, high, low = (x * 1e12 for x in (close, open_, high, low))
    elif kind == "wild":  # large moves: features clip at +-FEATURE_CLIP
        close = np.exp(np.cumsum(rng.normal(0.0, 0.2, n)))
        open_ = close * np.exp(rng.normal(0.0, 0.1, n))
        high = np.maximum(open_, close) * 1.05
        low = np.minimum(open_, close) / 1.05
    return np.stack([open_, high, low, close, volume], axis=1)


@pytest.mark.parametrize("name", ["sp500", "nasdaq"])
def test_every_window_of_the_real_samples_is_bit_identical(name):
    values = load_sample(name).to_numpy(dtype=np.float64)
    stack = every_end(values)  # every end position with a full lookback
    assert np.array_equal(bits(feature_windows_many(stack)), bits(one_by_one(stack)))


def test_longer_bars_use_their_last_lookback_as_feature_window_does():
    values = load_sample("sp500").to_numpy(dtype=np.float64)
    stack = every_end(values, n=LOOKBACK + 57, stride=11)
    assert np.array_equal(bits(feature_windows_many(stack)), bits(one_by_one(stack)))
    schema = FeatureSchema(window=20, warmup=60)  # another schema: lookback 80
    stack = every_end(values, n=100, stride=37)
    assert np.array_equal(
        bits(feature_windows_many(stack, schema)), bits(one_by_one(stack, schema))
    )


@pytest.mark.parametrize(
    "kind",
    [
        "plain",
        "flat",
        "zero_volume",
        "fractional_volume",
        "huge_volume",
        "constant_volume",
        "tiny",
        "huge",
        "wild",
    ],
)
def test_synthetic_edge_cases_are_bit_identical(kind):
    stack = every_end(synthetic(700, seed=len(kind), kind=kind), stride=3)
    want = one_by_one(stack)
    got = feature_windows_many(stack)
    assert np.array_equal(bits(got), bits(want))
    assert got.dtype == np.float32 and got.shape == (len(stack), 64, 29)


def test_a_mixed_batch_in_any_order_and_chunking_is_bit_identical():
    kinds = ["plain", "flat", "zero_volume", "fractional_volume", "huge_volume", "tiny", "wild"]
    series = [every_end(synthetic(400, seed=i, kind=k), stride=29) for i, k in enumerate(kinds)]
    stack = np.concatenate(series)
    stack = stack[np.random.default_rng(0).permutation(len(stack))]
    want = one_by_one(stack)
    for n in (1, 2, 15, 16, 17, 33, len(stack)):  # around the chunk size
        assert np.array_equal(bits(feature_windows_many(stack[:n])), bits(want[:n]))


def test_series_the_batch_does_not_take_run_the_single_series_code():
    good = every_end(synthetic(400, seed=3, kind="plain"), stride=40)  # (4, 256, 5)
    odd = good.copy()
    odd[0, 10, 0] = 0.0  # a zero open before the window's rows: not used, still finite
    odd[1, 12, 0] = np.nan  # likewise NaN
    odd[2, 20, 4] = -5.0  # a negative volume (finite: the batch path)
    odd[3, 0, 1] = np.inf  # the first bar's high: not used by ATR, nor by the window's MAX
    stack = np.concatenate([good, odd])
    assert np.array_equal(bits(feature_windows_many(stack)), bits(one_by_one(stack)))


def message(fn) -> tuple[type, str]:
    with pytest.raises(DataError) as e:
        fn()
    return type(e.value), str(e.value)


def test_a_non_finite_feature_raises_what_feature_window_raises_for_the_first_bad_series():
    values = load_sample("sp500").to_numpy(dtype=np.float64)
    stack = every_end(values[-400:], stride=20)  # (8, 256, 5)
    index = np.stack([np.arange(256, dtype=np.int64) * 86_400 * 10**9] * len(stack))
    stack[2, 250, 3] = np.nan  # a NaN close in the window
    stack[5, 200, 3] = -1.0  # a negative close
    want = message(lambda: feature_window(stack[2]))
    assert want[0] is FeatureSchemaError and "at bar 250" in want[1]
    assert message(lambda: feature_windows_many(stack)) == want
    dated = message(lambda: feature_window(stack[2], index=index[2]))
    assert message(lambda: feature_windows_many(stack, index=index)) == dated
    assert "1970-09-08" in dated[1]  # bar 250's timestamp, as a DataFrame index would give
    later = message(lambda: feature_window(stack[5]))
    assert message(lambda: feature_windows_many(stack[3:])) == later
    # Without the check the windows come back as they are (NaN where feature_window raises).
    out = feature_windows_many(stack, check=False)
    finite = np.isfinite(out).all(axis=(1, 2))
    assert finite.tolist() == [True, True, False, True, True, False, True, True]
    ok = np.flatnonzero(finite)
    assert np.array_equal(bits(out[ok]), bits(one_by_one(stack[ok])))


def test_too_few_bars_and_bad_shapes():
    values = load_sample("sp500").to_numpy(dtype=np.float64)
    short = values[None, -100:]
    assert message(lambda: feature_windows_many(short)) == message(lambda: feature_window(short[0]))
    assert message(lambda: feature_windows_many(short))[0] is InsufficientDataError
    with pytest.raises(DataError, match=r"shape \(N, n_bars, 5\)"):
        feature_windows_many(values[-300:])
    empty = feature_windows_many(np.empty((0, LOOKBACK, 5)))
    assert empty.shape == (0, 64, 29) and empty.dtype == np.float32
