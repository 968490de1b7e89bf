"""Inputs refused where they enter, naming the row or column: timestamps outside
1970-01-01..2262-04-10, volumes whose sums overflow float64, tensors of non-numbers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mlsignal import wire
from mlsignal.data import clean_arrays, load_sample, normalize_bars, validate_bars
from mlsignal.errors import PriceError, TimestampError, V2Error, WireError
from mlsignal.features import FeatureStream, feature_window, feature_windows_many
from mlsignal.features.streaming import to_ns
from mlsignal.wire import v2

DAY_MS = 86_400_000
SHAPE = (4, 3)


@pytest.fixture(scope="module")
def spx() -> pd.DataFrame:
    return load_sample("sp500").iloc[-300:]


def _bars_doc(t_ms: list[int]) -> dict:
    n = len(t_ms)
    return {
        "t": t_ms,
        **{k: [1.0] * n for k in ("open", "high", "low", "close")},
        "volume": [0.0] * n,
    }


# --- timestamps -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("t_ms", "row"),
    [
        ([9_000_000_000_000_000 + i * DAY_MS for i in range(3)], 0),
        ([-DAY_MS, 0, DAY_MS], 0),
        ([9_214_646_400_000 + i * 50 * DAY_MS for i in range(4)], 2),  # 2262-01-01 + 100 days
    ],
    ids=["year-287k", "1969-12-31", "2262-04-11"],
)
def test_the_wire_refuses_timestamps_outside_the_range_naming_the_row(t_ms, row):
    with pytest.raises(WireError, match=rf"^x\.t\[{row}\]: {t_ms[row]} ms is outside 1970-01-01"):
        wire.decode_bar_arrays(_bars_doc(t_ms), "x", 100)


def test_bar_arrays_never_wrap_a_timestamp_around():
    arrays = wire.BarArrays(np.array([0, 9_000_000_000_000_000]), np.ones((2, 5)))
    with pytest.raises(TimestampError, match=r"row 2: timestamp 9000000000000000 ms is outside"):
        arrays.frame()  # today: 1907-...


def test_the_fast_path_does_not_take_bars_before_1970():
    assert not clean_arrays(np.array([-DAY_MS, 0]), np.ones((2, 5)))
    assert clean_arrays(np.array([0, DAY_MS]), np.ones((2, 5)))


@pytest.mark.parametrize(
    ("dates", "match"),
    [
        (["1969-12-31", "1970-01-02"], r"row 1: timestamp '1969-12-31' \(1969-12-31 00:00:00\)"),
        (["2262-04-09", "2262-04-12"], r"row 2: timestamp '2262-04-12' \(2262-04-12 00:00:00\)"),
    ],
)
def test_normalize_bars_refuses_dates_outside_the_range_naming_the_row(dates, match):
    frame = pd.DataFrame(
        {"date": dates, **{c: [1.0, 1.0] for c in ("open", "high", "low", "close", "volume")}}
    )
    with pytest.raises(TimestampError, match=match + " is outside 1970-01-01..2262-04-10"):
        normalize_bars(frame)


def test_validate_bars_refuses_an_index_before_1970():
    index = pd.DatetimeIndex(["1969-06-01", "1970-06-01"], name="timestamp")
    frame = pd.DataFrame(
        {c: [1.0, 1.0] for c in ("open", "high", "low", "close", "volume")}, index=index
    )
    with pytest.raises(
        TimestampError, match=r"row 1 \(1969-06-01 00:00:00\): timestamp is outside"
    ):
        validate_bars(frame)


@pytest.mark.parametrize("ts", ["1969-12-31", -86_400_000, "2262-04-11T12:00"])
def test_a_live_bar_outside_the_range_is_refused(ts):
    with pytest.raises(TimestampError, match=r"is outside 1970-01-01\.\.2262-04-10"):
        to_ns(ts)


# --- volumes --------------------------------------------------------------------------------
def _huge_volumes(spx: pd.DataFrame) -> pd.DataFrame:
    bars = spx.copy()
    bars.iloc[-5:, bars.columns.get_loc("volume")] = 1e308
    return bars


def test_overflowing_volumes_are_a_price_error_naming_the_column(spx):
    with pytest.raises(
        PriceError, match=r"^volume overflows: the 256 volumes .* \(largest 1e\+308\)"
    ):
        feature_window(_huge_volumes(spx))  # today: OverflowError


def test_the_batched_path_says_the_same(spx):
    x = np.stack([spx.to_numpy(), _huge_volumes(spx).to_numpy()])  # (2, 300, 5)
    with pytest.raises(PriceError, match=r"^volume overflows"):
        feature_windows_many(x)


def test_the_stream_says_the_same(spx):
    stream = FeatureStream()
    stream.extend(_huge_volumes(spx))
    with pytest.raises(PriceError, match=r"^volume overflows"):
        stream.window()


def test_a_lone_huge_volume_still_works(spx):
    bars = spx.copy()
    bars.iloc[-1, bars.columns.get_loc("volume")] = 1e308  # sums stay finite
    assert np.isfinite(feature_window(bars)).all()


# --- tensors --------------------------------------------------------------------------------
def _v2_body(data: list) -> bytes:
    tensor = {"name": "windows", "shape": [1, *SHAPE], "datatype": "FP32", "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


@pytest.mark.parametrize(
    ("value", "shown"), [(True, "bool True"), (False, "bool False"), ("2.5", "str '2.5'")]
)
def test_v2_json_data_takes_numbers_only(value, shown):
    data = [0.5] * 12
    data[7] = value
    with pytest.raises(
        V2Error,
        match=rf"^inputs\[0\]\.data: must hold numbers only; value 7 \(row-major\) is {shown}$",
    ):
        v2.decode_request(_v2_body(data), None, SHAPE, 4)


def test_v2_json_data_may_be_nested_numbers():
    nested = np.arange(12, dtype=np.float32).reshape(1, *SHAPE)
    call = v2.decode_request(_v2_body(nested.tolist()), None, SHAPE, 4)
    assert (call.windows == nested).all()
    with pytest.raises(V2Error, match=r"numbers only; value 11 .* is bool True"):
        v2.decode_request(
            _v2_body([[[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, True]]]), None, SHAPE, 4
        )


@pytest.mark.parametrize("value", [True, "1e3"])
def test_v1_windows_take_numbers_only(value):
    windows = np.zeros((2, *SHAPE)).tolist()
    windows[1][3][2] = value
    with pytest.raises(WireError, match=r"^windows: must"):
        wire.decode_windows(json.loads(json.dumps({"windows": windows})), SHAPE, 4)
