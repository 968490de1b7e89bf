from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from arch.data import sp500

from mlsignal.errors import (
    ConfigError,
    FeatureSchemaError,
    InsufficientDataError,
    MissingColumnError,
)
from mlsignal.features import (
    DEFAULT_SCHEMA,
    FEATURE_CLIP,
    FEATURE_NAMES,
    INDICATOR_LOOKBACK,
    FeatureSchema,
    compute_features,
    feature_window,
    feature_windows,
    valid_ends,
)

COLS = ["open", "high", "low", "close", "volume"]
LOOKBACK = DEFAULT_SCHEMA.lookback


def synthetic_bars(n: int = 1200, seed: int = 0, p0: float = 100.0) -> pd.DataFrame:
    """Geometric random walk OHLCV with hourly timestamps."""
    rng = np.random.default_rng(seed)
    close = p0 * np.exp(np.cumsum(rng.normal(0.0002, 0.01, n)))
    open_ = np.r_[p0, close[:-1]] * np.exp(rng.normal(0.0, 0.002, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.004, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.004, n)))
    volume = rng.lognormal(12.0, 0.5, n)
    index = pd.date_range("2020-01-01", periods=n, freq="h", name="timestamp")
    data = {"open": open_, "high": high, "low": low, "close": close, "volume": volume}
    return pd.DataFrame(data, index=index)


@pytest.fixture(scope="module")
def spx() -> pd.DataFrame:
    raw = sp500.load().rename(columns=str.lower)
    bars = raw[COLS].astype("float64")
    bars.index = pd.DatetimeIndex(bars.index, name="timestamp")
    return bars


@pytest.fixture(scope="module")
def synth() -> pd.DataFrame:
    return synthetic_bars()


# --- schema -------------------------------------------------------------------------------
def test_names_unique_and_count():
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert 24 <= len(FEATURE_NAMES) <= 32
    assert DEFAULT_SCHEMA.names == FEATURE_NAMES
    assert DEFAULT_SCHEMA.n_features == len(FEATURE_NAMES)
    assert (DEFAULT_SCHEMA.window, DEFAULT_SCHEMA.warmup, DEFAULT_SCHEMA.lookback) == (64, 192, 256)


def test_schema_hash_stable_and_sensitive():
    h = DEFAULT_SCHEMA.hash
    assert len(h) == 64 and int(h, 16) >= 0
    assert FeatureSchema().hash == h
    assert FeatureSchema.from_dict(json.loads(json.dumps(DEFAULT_SCHEMA.to_dict()))).hash == h
    changed = [
        FeatureSchema(names=FEATURE_NAMES[::-1]),
        FeatureSchema(names=FEATURE_NAMES[:-1]),
        FeatureSchema(window=32),
        FeatureSchema(warmup=128),
        FeatureSchema(version=DEFAULT_SCHEMA.version + 1),
    ]
    assert len({s.hash for s in changed} | {h}) == len(changed) + 1


def test_schema_round_trip():
    d = DEFAULT_SCHEMA.to_dict()
    assert set(d) == {"names", "window", "warmup", "version"}
    assert FeatureSchema.from_dict(d) == DEFAULT_SCHEMA
    assert FeatureSchema.from_dict(json.loads(json.dumps(d))) == DEFAULT_SCHEMA
    with pytest.raises(ConfigError, match="window"):
        FeatureSchema.from_dict({"names": ["a"], "warmup": 1, "version": 1})


@pytest.mark.parametrize(
    "kwargs",
    [{"names": ("a", "a")}, {"names": ()}, {"window": 0}, {"warmup": -1}, {"version": 1.5}],
)
def test_schema_validation(kwargs):
    with pytest.raises(ConfigError):
        FeatureSchema(**kwargs)


# --- compute_features ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["spx", "synth"])
def test_finite_after_warmup(name, request):
    bars = request.getfixturevalue(name)
    m = compute_features(bars)
    assert m.shape == (len(bars), len(FEATURE_NAMES)) and m.dtype == np.float64
    assert np.isnan(m[:INDICATOR_LOOKBACK]).all()
    assert np.isfinite(m[INDICATOR_LOOKBACK:]).all()
    assert np.abs(m[INDICATOR_LOOKBACK:]).max() <= FEATURE_CLIP
    # Not degenerate: every feature varies.
    assert (m[INDICATOR_LOOKBACK:].std(axis=0) > 0).all()


def test_numpy_input_matches_dataframe(synth):
    np.testing.assert_array_equal(compute_features(synth.to_numpy()), compute_features(synth))


@pytest.mark.parametrize("name", ["spx", "synth"])
def test_scale_free(name, request):
    bars = request.getfixturevalue(name).iloc[-800:]
    scaled = bars.copy()
    scaled[["open", "high", "low", "close"]] *= 1000.0
    scaled["volume"] *= 37.5
    np.testing.assert_allclose(
        compute_features(scaled), compute_features(bars), rtol=1e-6, atol=1e-9
    )
    np.testing.assert_allclose(feature_window(scaled), feature_window(bars), rtol=1e-6, atol=1e-6)


def test_tiny_and_huge_prices(synth):
    base = compute_features(synth)
    for factor in (1e-8, 1e8):
        scaled = synth.copy()
        scaled[["open", "high", "low", "close"]] *= factor
        np.testing.assert_allclose(compute_features(scaled), base, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("volume", [0.0, 1.0, 5e6])
def test_constant_volume_gives_zero_z(synth, volume):
    bars = synth.assign(volume=volume)
    w = feature_window(bars)
    assert np.isfinite(w).all()
    assert (w[:, FEATURE_NAMES.index("vol_z20")] == 0.0).all()


def test_missing_column():
    with pytest.raises(MissingColumnError, match="volume"):
        compute_features(synthetic_bars(300).drop(columns="volume"))


# --- windows ------------------------------------------------------------------------------
def test_feature_window_shape(spx):
    w = feature_window(spx)
    assert w.shape == (64, len(FEATURE_NAMES)) and w.dtype == np.float32
    assert np.isfinite(w).all()
    custom = FeatureSchema(window=32, warmup=100)
    assert feature_window(spx, custom).shape == (32, len(FEATURE_NAMES))


@pytest.mark.parametrize("name", ["spx", "synth"])
def test_windows_equal_window_on_truncated_frames(name, request):
    bars = request.getfixturevalue(name)
    ends = valid_ends(len(bars))
    sample = np.r_[ends[:3], np.random.default_rng(1).choice(ends, 30), ends[-1]]
    batch = feature_windows(bars, sample)
    assert batch.shape == (len(sample), 64, len(FEATURE_NAMES)) and batch.dtype == np.float32
    for i, end in enumerate(sample):
        assert np.array_equal(batch[i], feature_window(bars.iloc[: end + 1])), end


def test_window_depends_only_on_lookback_bars(synth):
    tail = synth.iloc[-LOOKBACK:]
    expected = feature_window(tail)
    assert np.array_equal(feature_window(synth), expected)
    # Prepend unrelated history at another price level: no effect.
    other = synthetic_bars(500, seed=7, p0=3.0)
    other.index = other.index - (other.index[-1] - tail.index[0]) - pd.Timedelta(hours=1)
    assert np.array_equal(feature_window(pd.concat([other, tail])), expected)


def test_valid_ends():
    ends = valid_ends(1000)
    assert ends[0] == LOOKBACK - 1 and ends[-1] == 999 and len(ends) == 1000 - LOOKBACK + 1
    assert len(valid_ends(LOOKBACK - 1)) == 0


def test_too_few_bars(synth):
    with pytest.raises(InsufficientDataError, match=r"got 255 bars, need at least 256"):
        feature_window(synth.iloc[:255])
    with pytest.raises(InsufficientDataError, match="need at least 256"):
        feature_windows(synth, [100])


def test_end_beyond_bars(synth):
    with pytest.raises(ValueError, match="beyond"):
        feature_windows(synth, [len(synth)])


def test_non_finite_names_feature_and_bar(synth):
    bars = synth.iloc[-LOOKBACK:].copy()
    bars.iloc[-3, bars.columns.get_loc("close")] = np.nan
    with pytest.raises(FeatureSchemaError, match=r"feature '\w+' .* bar 253 \(2020-"):
        feature_window(bars)


def test_schema_with_other_names_is_refused(synth):
    other = FeatureSchema(names=(*FEATURE_NAMES[:-1], "something_else"))
    with pytest.raises(FeatureSchemaError, match="differ"):
        feature_window(synth, other)
