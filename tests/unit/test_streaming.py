"""The streaming feature engine: bit-for-bit parity with the batch pipeline, validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsignal.data import normalize_bars
from mlsignal.errors import (
    FeatureSchemaError,
    InsufficientDataError,
    MissingColumnError,
    PriceError,
    TimestampError,
)
from mlsignal.features import DEFAULT_SCHEMA, FeatureSchema, feature_window
from mlsignal.features.streaming import FeatureStream, FeatureStreams, to_ns
from mlsignal.rules import RuleConfig, last_rule_scores, last_score, rule_scores

LOOKBACK = DEFAULT_SCHEMA.lookback


def rows(bars: pd.DataFrame) -> list[tuple]:
    """Each bar as (timestamp ns, open, high, low, close, volume)."""
    return [(int(t), *v) for t, v in zip(bars.index.asi8, bars.to_numpy().tolist(), strict=True)]


def flat_zero_volume_bars(n: int = 1500, seed: int = 5) -> pd.DataFrame:
    """A random walk with runs of zero volume, of flat bars (o = h = l = c) and of no change."""
    rng = np.random.default_rng(seed)
    close = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    close[400:430] = close[399]  # a market that does not move for 30 bars
    open_ = np.r_[close[0], close[:-1]]
    open_[400:430] = close[399]
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.003, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.003, n)))
    flat = np.r_[400:430, 900:905]
    high[flat], low[flat], open_[flat] = close[flat], close[flat], close[flat]
    volume = rng.lognormal(8.0, 1.0, n)
    volume[::5] = 0.0
    volume[600:900] = 0.0  # longer than a lookback: every volume in the window is zero
    index = pd.date_range("2021-03-01", periods=n, freq="15min", name="timestamp")
    data = {"open": open_, "high": high, "low": low, "close": close, "volume": volume}
    return normalize_bars(pd.DataFrame(data, index=index))


def check_every_step(bars: pd.DataFrame, capacity: int, rule_every: int) -> int:
    """Append every bar; at each step compare the stream with the batch functions."""
    stream = FeatureStream(capacity=capacity)
    values, cfg = bars.to_numpy(), RuleConfig()
    compared = 0
    for t, bar in enumerate(rows(bars)):
        stream.append_values(*bar)
        assert len(stream) == min(t + 1, stream.capacity)
        held = bars.iloc[max(0, t + 1 - stream.capacity) : t + 1]
        assert stream.last_timestamp == bars.index[t]
        close = held["close"].to_numpy()
        assert np.array_equal(stream.log_returns(), np.diff(np.log(close)))  # the GARCH input
        if t % rule_every == 0:
            expected = last_rule_scores(held)
            assert last_score(*stream.arrays()[1:4]) == expected, t  # as prepare_stream does
            assert last_score(*(values[t + 1 - len(held) : t + 1, i] for i in (1, 2, 3))) == (
                tuple(rule_scores(values[t + 1 - len(held) : t + 1], cfg).to_numpy()[-1])
            )
        if t + 1 < LOOKBACK:
            assert not stream.ready
            continue
        assert np.array_equal(stream.window(), feature_window(bars.iloc[: t + 1])), t
        compared += 1
    return compared


def test_every_step_of_the_sp500_sample_matches_the_batch_pipeline(sp500_bars):
    # capacity > lookback, as the enhancer uses it (min_bars): the ring wraps ~17 times.
    assert check_every_step(sp500_bars, capacity=300, rule_every=7) == len(sp500_bars) - 255


def test_zero_volumes_and_flat_bars_match_the_batch_pipeline():
    bars = flat_zero_volume_bars()
    assert check_every_step(bars, capacity=LOOKBACK, rule_every=1) == len(bars) - 255
    # the all-zero-volume stretch really reached the model input: vol_z20 is exactly 0 there
    s = FeatureStream()
    s.extend(bars.iloc[:900])
    assert (s.window()[:, DEFAULT_SCHEMA.names.index("vol_z20")] == 0.0).all()


def test_another_schema_matches_too(sp500_bars):
    schema = FeatureSchema(window=16, warmup=60)
    s = FeatureStream(schema)
    bars = sp500_bars.iloc[:400]
    for t, bar in enumerate(rows(bars)):
        s.append_values(*bar)
        if t + 1 >= schema.lookback:
            assert np.array_equal(s.window(), feature_window(bars.iloc[: t + 1], schema))


def test_seeding_with_history_then_appending_equals_batch(sp500_bars):
    s = FeatureStream(capacity=280)
    s.extend(sp500_bars.iloc[:1000])  # only the last 280 are kept
    assert len(s) == 280 and s.last_timestamp == sp500_bars.index[999]
    for t in range(1000, 1010):
        s.append(sp500_bars.iloc[t])  # a pd.Series named by its timestamp
        assert np.array_equal(s.window(), feature_window(sp500_bars.iloc[: t + 1]))
    pd.testing.assert_frame_equal(s.frame(), sp500_bars.iloc[1010 - 280 : 1010], check_freq=False)
    with pytest.raises(TimestampError, match="first new bar is not later"):
        s.extend(sp500_bars.iloc[1005:1020])


def test_window_is_cached_until_the_next_bar_and_read_only(sp500_bars):
    s = FeatureStream()
    s.extend(sp500_bars.iloc[:300])
    w = s.window()
    assert s.window() is w and not w.flags.writeable
    s.append(dict(timestamp=sp500_bars.index[300], **sp500_bars.iloc[300].to_dict()))
    assert s.window() is not w


def test_too_few_bars(sp500_bars):
    s = FeatureStream(symbol="SPX")
    s.extend(sp500_bars.iloc[:255])
    with pytest.raises(
        InsufficientDataError, match=r"SPX: stream holds 255 bars, need at least 256"
    ):
        s.window()


@pytest.fixture
def stream(sp500_bars) -> FeatureStream:
    s = FeatureStream(symbol="SPX")
    s.extend(sp500_bars.iloc[:300])
    return s


def _next(stream: FeatureStream, **change: float) -> dict:
    bar = {"timestamp": stream.last_timestamp + pd.Timedelta(days=1)}
    bar.update(open=100.0, high=101.0, low=99.0, close=100.5, volume=1e6)
    bar.update(change)
    return bar


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"close": float("nan")}, r"SPX: bar .*: close nan is not finite"),
        ({"open": -1.0}, r"open -1.0 is not positive"),
        ({"low": 0.0}, r"low 0.0 is not positive"),
        ({"high": float("inf")}, r"high inf is not finite"),
        ({"high": 100.2}, r"high 100.2 is below close 100.5"),
        ({"low": 100.2}, r"low 100.2 is above open 100.0"),
        ({"volume": -5.0}, r"volume -5.0 is negative"),
        ({"volume": float("nan")}, r"volume nan is not finite"),
    ],
)
def test_a_bad_bar_is_refused_and_leaves_the_stream_unchanged(stream, change, message):
    before, n = stream.window(), len(stream)
    with pytest.raises(PriceError, match=message):
        stream.append(_next(stream, **change))
    assert len(stream) == n and stream.window() is before


def test_bar_forms_and_their_errors(stream):
    bar = _next(stream)
    as_tuple = (bar["timestamp"], 100.0, 101.0, 99.0, 100.5, 1e6)
    stream.check(as_tuple)
    with pytest.raises(PriceError, match="close 'x' is not a number"):
        stream.append({**bar, "close": "x"})
    with pytest.raises(MissingColumnError, match="bar lacks volume"):
        stream.append({k: v for k, v in bar.items() if k != "volume"})
    with pytest.raises(MissingColumnError, match="a bar must be"):
        stream.append(42)  # type: ignore[arg-type]
    with pytest.raises(TimestampError, match="cannot be parsed"):
        stream.append({**bar, "timestamp": "not a time"})


def test_repeated_and_older_timestamps(stream, sp500_bars):
    last = stream.last_timestamp
    same = _next(stream)
    same["timestamp"] = last
    with pytest.raises(TimestampError, match=r"duplicates the last bar .*use replace_last"):
        stream.append(same)
    older = {**same, "timestamp": last - pd.Timedelta(days=3)}
    with pytest.raises(TimestampError, match="is earlier than the last bar"):
        stream.append(older)
    # replace_last: an explicit correction of the last bar, validated, then equal to batch
    corrected = sp500_bars.iloc[:300].copy()
    corrected.iloc[-1] = [100.0, 101.0, 99.0, 100.5, 1e6]
    stream.replace_last(same)
    assert np.array_equal(stream.window(), feature_window(corrected))
    with pytest.raises(TimestampError, match="replace_last needs the last bar's timestamp"):
        stream.replace_last(_next(stream))
    with pytest.raises(PriceError, match=r"high 1\.0 is below"):
        stream.replace_last({**same, "high": 1.0})


def test_timestamps_are_read_as_normalize_bars_reads_them():
    stamps = ["2024-01-02 09:30", "2024-01-02T09:30:00+01:00", 1704187800, 1704187800000]
    frame = pd.DataFrame({"timestamp": [20240102]})
    expected = normalize_bars(
        frame.assign(open=1.0, high=1.0, low=1.0, close=1.0, volume=0.0)
    ).index.asi8[0]
    assert to_ns(20240102) == expected
    assert to_ns(stamps[0]) == pd.Timestamp("2024-01-02 09:30").value
    assert to_ns(stamps[1]) == pd.Timestamp("2024-01-02 08:30").value  # to UTC, tz dropped
    assert to_ns(stamps[2]) == to_ns(stamps[3]) == pd.Timestamp("2024-01-02 09:30").value
    with pytest.raises(TimestampError, match="missing"):
        to_ns(pd.NaT)


def test_many_symbols(sp500_bars):
    streams = FeatureStreams(capacity=300)
    streams.seed("A", sp500_bars.iloc[:400])
    streams.seed("B", sp500_bars.iloc[:900])
    streams.append("A", sp500_bars.iloc[400])
    assert set(streams) == {"A", "B"} and len(streams["A"]) == 300
    w = streams.windows(["B", "A"])
    assert w.shape == (2, 64, len(DEFAULT_SCHEMA.names)) and w.dtype == np.float32
    assert np.array_equal(w[0], feature_window(sp500_bars.iloc[:900]))
    assert np.array_equal(w[1], feature_window(sp500_bars.iloc[:401]))
    streams.drop("A")
    assert "A" not in streams and streams.get("A") is None


def test_a_schema_this_code_cannot_compute_is_refused():
    other = FeatureSchema(names=(*DEFAULT_SCHEMA.names[:-1], "something_else"))
    with pytest.raises(FeatureSchemaError, match="differ"):
        FeatureStream(other)
