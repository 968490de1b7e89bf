"""Tests of mlsignal.data: normalising, validating, reading bars and the built-in samples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsignal.data import (
    BAR_COLUMNS,
    SAMPLES,
    load_dataset,
    load_sample,
    normalize_bars,
    read_bars,
    validate_bars,
)
from mlsignal.errors import DataError, MissingColumnError, PriceError, TimestampError

DAYS = pd.DatetimeIndex(pd.date_range("2020-01-01", periods=5, freq="D"), freq=None).as_unit("ns")
N = len(DAYS)


def ohlcv(names: tuple[str, ...] = ("Open", "High", "Low", "Close", "Volume")) -> dict:
    """Five consistent bars keyed by the given column names."""
    o, h, lo, c, v = names
    return {
        o: [100.0, 101.0, 102.0, 103.0, 104.0],
        h: [101.5, 102.5, 103.5, 104.5, 105.5],
        lo: [99.0, 100.0, 101.0, 102.0, 103.0],
        c: [101.0, 102.0, 103.0, 104.0, 105.0],
        v: [10, 20, 30, 40, 50],
    }


def epoch(index: pd.DatetimeIndex, unit: str) -> np.ndarray:
    """Integer epoch values of ``index`` in ``unit`` (s, ms, us, ns)."""
    return ((index - pd.Timestamp("1970-01-01")) // pd.Timedelta(1, unit=unit)).to_numpy()


def bars() -> pd.DataFrame:
    """Canonical bars, built directly."""
    frame = pd.DataFrame(ohlcv(BAR_COLUMNS), index=DAYS.rename("timestamp"), dtype="float64")
    return frame


def assert_canonical(result: pd.DataFrame, index: pd.DatetimeIndex = DAYS) -> None:
    assert list(result.columns) == list(BAR_COLUMNS)
    assert (result.dtypes == "float64").all()
    assert isinstance(result.index, pd.DatetimeIndex)
    assert result.index.name == "timestamp"
    assert result.index.tz is None
    assert result.index.dtype == "datetime64[ns]"
    pd.testing.assert_index_equal(result.index, index.rename("timestamp"), check_exact=True)
    assert result["close"].tolist() == [101.0, 102.0, 103.0, 104.0, 105.0]
    assert result["volume"].tolist() == [10.0, 20.0, 30.0, 40.0, 50.0]


# --- normalize_bars: columns -------------------------------------------------------------
@pytest.mark.parametrize(
    "names",
    [
        ("open", "high", "low", "close", "volume"),
        ("Open", "High", "Low", "Close", "Volume"),
        ("OPEN", "HIGH", "LOW", "CLOSE", "VOLUME"),
        (" Open", "High ", " low ", " Close ", "\tVolume"),
        ("<OPEN>", "<HIGH>", "<LOW>", "<CLOSE>", "<VOL>"),
        ("open", "high", "low", "close", "Vol"),
    ],
)
def test_column_names_in_any_case_and_whitespace(names):
    raw = pd.DataFrame({"Date": DAYS.strftime("%Y-%m-%d"), **ohlcv(names)})
    assert_canonical(normalize_bars(raw))


def test_adj_close_is_not_close_and_extra_columns_are_dropped():
    raw = pd.DataFrame({"date": DAYS, **ohlcv(), "Adj Close": [1.0] * N, "symbol": "X"})
    raw = raw[["date", "Adj Close", "Volume", "Close", "Low", "symbol", "High", "Open"]]
    assert_canonical(normalize_bars(raw))


def test_volume_preferred_over_vol():
    raw = pd.DataFrame({"date": DAYS, **ohlcv(), "vol": [999.0] * N})
    assert normalize_bars(raw)["volume"].tolist() == [10.0, 20.0, 30.0, 40.0, 50.0]


def test_numeric_strings_are_numbers():
    raw = pd.DataFrame({"date": DAYS, **ohlcv()})
    raw["Close"] = raw["Close"].astype(str)
    assert_canonical(normalize_bars(raw))


def test_yfinance_style_multilevel_columns():
    raw = pd.DataFrame(ohlcv(), index=DAYS.rename("Date"))
    raw.columns = pd.MultiIndex.from_product([raw.columns, ["AAPL"]], names=["Price", "Ticker"])
    assert_canonical(normalize_bars(raw))


def test_multi_symbol_columns_are_refused():
    raw = pd.DataFrame(np.ones((N, 10)), index=DAYS)
    raw.columns = pd.MultiIndex.from_product(
        [["Open", "High", "Low", "Close", "Volume"], ["A", "B"]]
    )
    with pytest.raises(DataError, match="select one symbol"):
        normalize_bars(raw)


# --- normalize_bars: where the timestamp comes from --------------------------------------
@pytest.mark.parametrize("name", ["date", "Date", "DATETIME", "datetime", " Timestamp ", "time"])
def test_each_timestamp_column_name(name):
    raw = pd.DataFrame({name: DAYS.strftime("%Y-%m-%d"), **ohlcv()})
    assert_canonical(normalize_bars(raw))


def test_timestamp_column_beats_index_and_unnamed():
    raw = pd.DataFrame(
        {"Unnamed: 0": range(N), "Date": DAYS, **ohlcv()}, index=DAYS + pd.DateOffset(years=1)
    )
    assert_canonical(normalize_bars(raw))


def test_unnamed_first_column():
    raw = pd.DataFrame({"Unnamed: 0": DAYS.strftime("%Y-%m-%d"), **ohlcv()})
    assert_canonical(normalize_bars(raw))


def test_datetime_index_as_arch_data_sets_have():
    raw = pd.DataFrame(ohlcv(), index=DAYS.rename("Date"))
    assert_canonical(normalize_bars(raw))


def test_index_named_timestamp_of_strings():
    raw = pd.DataFrame(ohlcv(), index=pd.Index(DAYS.strftime("%Y-%m-%d"), name="Timestamp"))
    assert_canonical(normalize_bars(raw))


# --- normalize_bars: timestamp values ----------------------------------------------------
HOURS = pd.DatetimeIndex(pd.date_range("2024-03-01 09:00", periods=5, freq="h"), freq=None).as_unit(
    "ns"
)


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(list(HOURS.strftime("%Y-%m-%d %H:%M:%S")), id="iso-space"),
        pytest.param(list(HOURS.strftime("%Y-%m-%dT%H:%M:%SZ")), id="iso-T-Z"),
        pytest.param(list(HOURS.strftime("%Y-%m-%dT%H:%M:%S.%f")), id="iso-fraction"),
        pytest.param(list(HOURS.to_pydatetime()), id="python-datetimes"),
        pytest.param(HOURS, id="pandas-datetimes"),
        pytest.param(HOURS.as_unit("s"), id="pandas-datetimes-seconds"),
        pytest.param(epoch(HOURS, "s"), id="epoch-s"),
        pytest.param(epoch(HOURS, "s").astype("float64") + 0.0, id="epoch-s-float"),
        pytest.param(epoch(HOURS, "ms"), id="epoch-ms"),
        pytest.param([str(v) for v in epoch(HOURS, "ms")], id="epoch-ms-strings"),
        pytest.param(epoch(HOURS, "us"), id="epoch-us"),
        pytest.param(epoch(HOURS, "ns"), id="epoch-ns"),
        pytest.param(HOURS.tz_localize("UTC").tz_convert("Asia/Tokyo"), id="tz-aware"),
        pytest.param(
            list(
                HOURS.tz_localize("UTC")
                .tz_convert("America/New_York")
                .strftime("%Y-%m-%dT%H:%M:%S%z")
            ),
            id="iso-offsets",
        ),
    ],
)
def test_timestamp_values(values):
    raw = pd.DataFrame({"timestamp": values, **ohlcv()})
    assert_canonical(normalize_bars(raw), HOURS)


def test_mixed_iso_formats():
    values = ["2020-01-01", "2020-01-02 00:00", "2020-01-03T00:00:00", "2020-01-04", "2020-01-05"]
    assert_canonical(normalize_bars(pd.DataFrame({"date": values, **ohlcv()})))


def test_python_dates():
    raw = pd.DataFrame({"date": [d.date() for d in DAYS], **ohlcv()})
    assert_canonical(normalize_bars(raw))


def test_yyyymmdd_integers():
    raw = pd.DataFrame({"date": [int(d) for d in DAYS.strftime("%Y%m%d")], **ohlcv()})
    assert_canonical(normalize_bars(raw))


def test_tz_aware_datetime_index_is_converted_to_utc():
    local = DAYS.tz_localize("Europe/Berlin")
    result = normalize_bars(pd.DataFrame(ohlcv(), index=local))
    assert_canonical(result, DAYS - pd.Timedelta(hours=1))


def test_newest_first_input_is_reversed():
    raw = pd.DataFrame({"date": DAYS, **ohlcv()}).iloc[::-1]
    assert_canonical(normalize_bars(raw))


# --- normalize_bars: bad input -----------------------------------------------------------
@pytest.mark.parametrize("drop", ["Open", "High", "Low", "Close", "Volume"])
def test_missing_column(drop):
    raw = pd.DataFrame({"date": DAYS, **ohlcv()}).drop(columns=drop)
    with pytest.raises(MissingColumnError, match=rf"missing column\(s\) {drop.lower()};") as err:
        normalize_bars(raw)
    assert "found ['date'," in str(err.value)


def test_adj_close_does_not_stand_in_for_close():
    raw = pd.DataFrame({"date": DAYS, **ohlcv()}).rename(columns={"Close": "Adj Close"})
    with pytest.raises(MissingColumnError, match=r"missing column\(s\) close;.*'Adj Close'"):
        normalize_bars(raw)


def test_several_missing_columns_are_all_named():
    raw = pd.DataFrame({"date": DAYS, "Close": 1.0})
    with pytest.raises(
        MissingColumnError, match=r"open, high, low, volume; found \['date', 'Close'\]"
    ):
        normalize_bars(raw)


def test_missing_timestamp():
    with pytest.raises(MissingColumnError, match=r"missing timestamp.*found \['Open'"):
        normalize_bars(pd.DataFrame(ohlcv()))


def test_ambiguous_columns():
    raw = pd.DataFrame({"date": DAYS, **ohlcv(), "close": 1.0})
    with pytest.raises(DataError, match=r"'Close' and 'close' both read as 'close'"):
        normalize_bars(raw)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not a date", r"row 3: timestamp 'not a date' cannot be parsed \(column 'date'\)"),
        (None, r"row 3: timestamp is missing \(column 'date'\)"),
        ("2020-13-45", r"row 3: timestamp '2020-13-45' cannot be parsed"),
    ],
)
def test_unparseable_timestamp_names_the_row(value, message):
    dates = list(DAYS.strftime("%Y-%m-%d"))
    dates[2] = value
    with pytest.raises(TimestampError, match=message):
        normalize_bars(pd.DataFrame({"date": dates, **ohlcv()}))


def test_timestamp_out_of_range():
    dates = [*DAYS.strftime("%Y-%m-%d")[:4], "2500-01-01"]
    with pytest.raises(
        TimestampError, match=r"row 5: timestamp '2500-01-01' .* is outside 1970-01-01\.\.2262"
    ):
        normalize_bars(pd.DataFrame({"date": dates, **ohlcv()}))


def test_missing_epoch_names_the_row():
    epochs = epoch(DAYS, "ms").astype("float64")
    epochs[3] = np.nan
    with pytest.raises(TimestampError, match=r"row 4: timestamp is missing"):
        normalize_bars(pd.DataFrame({"time": epochs, **ohlcv()}))


def test_price_that_is_not_a_number_names_row_and_column():
    raw = pd.DataFrame({"date": DAYS, **ohlcv()})
    raw["High"] = raw["High"].astype(object)
    raw.loc[3, "High"] = "n/a"
    with pytest.raises(
        PriceError, match=r"row 4 \(2020-01-04 00:00:00\): high 'n/a' is not a number"
    ):
        normalize_bars(raw)


def test_unsorted_input_is_refused_not_sorted():
    raw = pd.DataFrame({"date": DAYS[[0, 2, 1, 3, 4]], **ohlcv()})
    with pytest.raises(
        TimestampError, match=r"row 3 \(2020-01-02 00:00:00\): timestamp is earlier than row 2"
    ):
        normalize_bars(raw)


def test_normalize_validates():
    raw = pd.DataFrame({"date": DAYS, **ohlcv()})
    raw.loc[4, "High"] = 104.9
    with pytest.raises(
        PriceError, match=r"row 5 \(2020-01-05 00:00:00\): high 104.9 is below close 105.0"
    ):
        normalize_bars(raw)


def test_empty_frame():
    with pytest.raises(DataError, match="empty"):
        normalize_bars(pd.DataFrame(columns=["date", "open", "high", "low", "close", "volume"]))


# --- validate_bars -----------------------------------------------------------------------
def test_validate_returns_its_input():
    frame = bars()
    assert validate_bars(frame) is frame


def test_validate_accepts_flat_bars_and_zero_volume():
    frame = bars()
    frame.iloc[2] = [100.0, 100.0, 100.0, 100.0, 0.0]
    validate_bars(frame)


def test_validate_empty():
    with pytest.raises(DataError, match="empty"):
        validate_bars(bars().iloc[:0])


def test_validate_duplicate_timestamp():
    frame = bars().set_axis(DAYS[[0, 1, 2, 2, 3]].rename("timestamp"))
    with pytest.raises(
        TimestampError,
        match=r"row 4 \(2020-01-03 00:00:00\): timestamp duplicates row 3 \(2020-01-03 00:00:00\)",
    ):
        validate_bars(frame)


def test_validate_unsorted():
    frame = bars().set_axis(DAYS[[0, 1, 3, 2, 4]].rename("timestamp"))
    with pytest.raises(
        TimestampError,
        match=r"row 4 \(2020-01-03 00:00:00\): timestamp is earlier than row 3 \(2020-01-04",
    ):
        validate_bars(frame)


def test_validate_nat():
    frame = bars().set_axis(pd.DatetimeIndex([*DAYS[:4], pd.NaT], name="timestamp"))
    with pytest.raises(TimestampError, match=r"row 5: timestamp is missing"):
        validate_bars(frame)


def test_validate_needs_datetime_index():
    with pytest.raises(TimestampError, match="DatetimeIndex, got RangeIndex"):
        validate_bars(bars().reset_index(drop=True))


def test_validate_needs_tz_naive_index():
    frame = bars().tz_localize("UTC")
    with pytest.raises(TimestampError, match="tz-naive UTC, got tz=UTC"):
        validate_bars(frame)


def test_validate_missing_column():
    with pytest.raises(MissingColumnError, match=r"lacks column\(s\) volume; found \['open'"):
        validate_bars(bars().drop(columns="volume"))


def test_validate_non_numeric_column():
    frame = bars()
    frame["close"] = ["a", "b", "c", "d", "e"]
    with pytest.raises(PriceError, match="column close is not numeric"):
        validate_bars(frame)


@pytest.mark.parametrize("column", ["open", "high", "low", "close"])
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (np.nan, "nan is not finite"),
        (np.inf, "inf is not finite"),
        (-np.inf, "-inf is not finite"),
        (0.0, "0.0 is not positive"),
        (-1.5, "-1.5 is not positive"),
    ],
)
def test_validate_bad_price(column, value, problem):
    frame = bars()
    frame.iloc[3, frame.columns.get_loc(column)] = value
    frame.iloc[4, frame.columns.get_loc(column)] = value  # only the first bad row is named
    with pytest.raises(PriceError, match=rf"^row 4 \(2020-01-04 00:00:00\): {column} {problem}$"):
        validate_bars(frame)


def test_validate_earliest_bad_price_wins_across_columns():
    frame = bars()
    frame.loc[DAYS[3], "open"] = np.nan
    frame.loc[DAYS[1], "close"] = -1.0
    with pytest.raises(
        PriceError, match=r"^row 2 \(2020-01-02 00:00:00\): close -1.0 is not positive$"
    ):
        validate_bars(frame)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([100.0, 100.5, 99.0, 101.0, 1.0], "high 100.5 is below close 101.0"),
        ([102.0, 101.5, 99.0, 101.0, 1.0], "high 101.5 is below open 102.0"),
        ([100.0, 102.0, 100.5, 101.0, 1.0], "low 100.5 is above open 100.0"),
        ([101.0, 102.0, 100.5, 100.0, 1.0], "low 100.5 is above close 100.0"),
        ([100.0, 102.0, 101.0 + 1e-9, 101.0, 1.0], "low 101.000000001 is above open 100.0"),
    ],
)
def test_validate_inconsistent_high_low(row, message):
    frame = bars()
    frame.iloc[2] = row
    with pytest.raises(PriceError, match=rf"^row 3 \(2020-01-03 00:00:00\): {message}$"):
        validate_bars(frame)


@pytest.mark.parametrize(
    ("value", "problem"),
    [(-1.0, "-1.0 is negative"), (np.nan, "nan is not finite"), (np.inf, "inf is not finite")],
)
def test_validate_bad_volume(value, problem):
    frame = bars()
    frame.loc[DAYS[1], "volume"] = value
    with pytest.raises(PriceError, match=rf"^row 2 \(2020-01-02 00:00:00\): volume {problem}$"):
        validate_bars(frame)


# --- read_bars ---------------------------------------------------------------------------
def test_read_csv_written_with_index(tmp_path):
    path = tmp_path / "x.csv"
    pd.DataFrame(ohlcv(), index=DAYS).to_csv(path)  # header: ",Open,High,..."
    assert pd.read_csv(path).columns[0] == "Unnamed: 0"
    assert_canonical(read_bars(path))


def test_read_csv_with_epoch_ms_column(tmp_path):
    path = tmp_path / "btc.csv"
    pd.DataFrame({"timestamp": epoch(DAYS, "ms"), **ohlcv()}).to_csv(path, index=False)
    assert_canonical(read_bars(str(path)))


def test_read_csv_gz(tmp_path):
    path = tmp_path / "x.csv.gz"
    pd.DataFrame({"Date": DAYS, **ohlcv()}).to_csv(path, index=False, compression="gzip")
    assert_canonical(read_bars(path))


@pytest.mark.parametrize("suffix", [".parquet", ".pq", ".PARQUET"])
def test_parquet_round_trip(tmp_path, suffix):
    path = tmp_path / f"x{suffix}"
    bars().to_parquet(path)
    result = read_bars(path)
    assert_canonical(result)
    pd.testing.assert_frame_equal(result, bars())


def test_read_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError, match=rf"{path}: no such file"):
        read_bars(path)


@pytest.mark.parametrize("name", ["x.txt", "x.json", "x", "x.csv.zip"])
def test_read_unknown_extension(tmp_path, name):
    path = tmp_path / name
    path.write_text("a,b\n1,2\n")
    with pytest.raises(
        DataError,
        match=r"unknown bars file type; expected one of \.csv, \.csv\.gz, \.parquet, \.pq",
    ):
        read_bars(path)


def test_read_corrupt_parquet(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=rf"{path}: cannot read bars file"):
        read_bars(path)


def test_read_empty_csv(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("")
    with pytest.raises(DataError, match=rf"{path}: cannot read bars file"):
        read_bars(path)


def test_read_errors_name_the_file_and_keep_their_type(tmp_path):
    path = tmp_path / "x.csv"
    pd.DataFrame({"Date": DAYS, **ohlcv()}).drop(columns="Low").to_csv(path, index=False)
    with pytest.raises(MissingColumnError, match=rf"^{path}: missing column\(s\) low;"):
        read_bars(path)


# --- samples and data sets ---------------------------------------------------------------
@pytest.mark.parametrize("name", SAMPLES)
def test_samples_load_and_validate(name):
    sample = load_sample(name)
    assert validate_bars(sample) is sample
    assert list(sample.columns) == list(BAR_COLUMNS)
    assert len(sample) > 5000
    assert sample.index[0].year == 1999 and sample.index[-1].year == 2018
    assert sample.index.dtype == "datetime64[ns]"


def test_sample_uses_close_not_adj_close():
    from arch.data import sp500

    raw = sp500.load()
    sample = load_sample("sp500")
    np.testing.assert_array_equal(sample["close"].to_numpy(), raw["Close"].to_numpy())


def test_sample_round_trips_through_csv(tmp_path):
    from arch.data import nasdaq

    path = tmp_path / "nasdaq.csv"
    nasdaq.load().to_csv(path)  # Date,Open,High,Low,Close,Adj Close,Volume
    pd.testing.assert_frame_equal(read_bars(path), load_sample("nasdaq"))


def test_sample_is_a_copy():
    sample = load_sample("nasdaq")
    sample["close"] = 0.0
    assert (load_sample("nasdaq")["close"] > 0).all()


def test_unknown_sample():
    with pytest.raises(DataError, match=r"unknown sample 'dax'; samples: sp500, nasdaq"):
        load_sample("dax")


def test_load_dataset_samples():
    dataset = load_dataset("sp500, nasdaq")
    assert list(dataset) == ["sp500", "nasdaq"]
    assert all(len(b) > 5000 for b in dataset.values())


def test_load_dataset_files_and_samples(tmp_path):
    pd.DataFrame({"Date": DAYS, **ohlcv()}).to_csv(tmp_path / "btc.csv.gz", index=False)
    bars().to_parquet(tmp_path / "eth.parquet")
    dataset = load_dataset(f"{tmp_path / 'btc.csv.gz'},{tmp_path / 'eth.parquet'},sp500")
    assert list(dataset) == ["btc", "eth", "sp500"]
    assert_canonical(dataset["btc"])


@pytest.mark.parametrize("spec", ["sp500,sp500", "{d}/a/btc.csv,{d}/b/btc.parquet"])
def test_load_dataset_duplicate_symbols(tmp_path, spec):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    pd.DataFrame({"Date": DAYS, **ohlcv()}).to_csv(tmp_path / "a" / "btc.csv", index=False)
    bars().to_parquet(tmp_path / "b" / "btc.parquet")
    with pytest.raises(DataError, match=r"duplicate symbol '(sp500|btc)'"):
        load_dataset(spec.format(d=tmp_path))


@pytest.mark.parametrize("spec", ["", " , ,"])
def test_load_dataset_empty_spec(spec):
    with pytest.raises(DataError, match="empty data set spec"):
        load_dataset(spec)


def test_load_dataset_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(f"sp500,{tmp_path / 'gone.csv'}")


def test_data_error_is_a_value_error():
    with pytest.raises(ValueError):
        load_sample("dax")
