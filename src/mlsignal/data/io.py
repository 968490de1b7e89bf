"""Reading OHLCV files and normalising what people actually have into canonical bars.

Canonical bars: a ``DatetimeIndex`` named ``timestamp`` (tz-naive, UTC, nanoseconds) and
float64 columns ``open, high, low, close, volume`` in that order. Rows in error messages are
0-based positions in the input frame.

Files: CSV (``.csv``, ``.csv.gz``), Parquet (``.parquet``, ``.pq``) and Feather (``.feather``:
the files freqtrade keeps in ``user_data/data/<exchange>/<PAIR>-<timeframe>.feather``, with a
UTC ``date`` column; read with pyarrow, which the ``train`` and ``freqtrade`` extras bring).
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from mlsignal.data.validate import BAR_COLUMNS, T_MAX_NS, T_MIN_NS, TIME_RANGE, validate_bars
from mlsignal.errors import (
    ConfigError,
    DataError,
    MissingColumnError,
    PriceError,
    TimestampError,
)

logger = logging.getLogger(__name__)

# Searched in this order; the first present wins.
TIMESTAMP_NAMES: tuple[str, ...] = ("timestamp", "datetime", "date", "time")
ALIASES: dict[str, tuple[str, ...]] = {"volume": ("volume", "vol")}
CSV_SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz")
PARQUET_SUFFIXES: tuple[str, ...] = (".parquet", ".pq")
FEATHER_SUFFIXES: tuple[str, ...] = (".feather",)
#: Every bars file suffix :func:`read_bars` reads.
BAR_FILE_SUFFIXES: tuple[str, ...] = CSV_SUFFIXES + PARQUET_SUFFIXES + FEATHER_SUFFIXES
Reader = Callable[[Path], pd.DataFrame]

# Epoch magnitude -> unit. 1e11 s is the year 5138 while 1e11 ms is 1973, so the largest
# |value| tells the unit of any date between 1973 and 5138.
_EPOCH_UNITS: tuple[tuple[float, str], ...] = ((1e11, "s"), (1e14, "ms"), (1e17, "us"))
# Integers in this range read as YYYYMMDD (20200105), not as epoch seconds in 1970.
_YYYYMMDD = (1800_01_01, 2200_12_31)
_T_MIN, _T_MAX = pd.Timestamp(T_MIN_NS), pd.Timestamp(T_MAX_NS)


def read_bars(path: str | Path) -> pd.DataFrame:
    """Read a ``.csv``, ``.csv.gz``, ``.parquet``, ``.pq`` or ``.feather`` file into canonical
    bars.

    A freqtrade data file (``BTC_USDT-1h.feather``: columns ``date`` (UTC), ``open``,
    ``high``, ``low``, ``close``, ``volume``) reads as any other; its symbol, as for every
    file, is the file name without the extension (:func:`symbol_of`: ``BTC_USDT-1h``).

    Raises:
        DataError: the file is missing, has an unknown extension or cannot be parsed;
            or any error of :func:`normalize_bars`, its message prefixed with the path.
        ConfigError: a Parquet or Feather file and no pyarrow installed.
    """
    path = Path(path)
    reader = _reader(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        raw = reader(path)
    except ConfigError:
        raise
    except Exception as exc:  # the readers raise many unrelated types for a bad file
        raise DataError(f"{path}: cannot read bars file: {exc}") from exc
    try:
        return normalize_bars(raw)
    except DataError as exc:
        raise type(exc)(f"{path}: {exc}") from exc


def symbol_of(path: str | Path) -> str:
    """``data/btc.csv.gz`` -> ``btc``, ``BTC_USDT-1h.feather`` -> ``BTC_USDT-1h``: the file
    name without its bars extension (the name without its last suffix for other files)."""
    name = Path(path).name
    for suffix in sorted(BAR_FILE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def _reader(path: Path) -> Reader:
    name = path.name.lower()
    if name.endswith(CSV_SUFFIXES):
        return pd.read_csv
    if name.endswith(PARQUET_SUFFIXES):
        return _with_pyarrow(pd.read_parquet, "Parquet")
    if name.endswith(FEATHER_SUFFIXES):
        return _with_pyarrow(pd.read_feather, "Feather")
    known = ", ".join(BAR_FILE_SUFFIXES)
    raise DataError(f"{path}: unknown bars file type; expected one of {known}")


def _with_pyarrow(read: Reader, kind: str) -> Reader:
    """``read``, after checking that pyarrow (pandas' Parquet and Feather engine) imports."""

    def reader(path: Path) -> pd.DataFrame:
        if importlib.util.find_spec("pyarrow") is None:
            raise ConfigError(
                f"{path}: reading {kind} files needs pyarrow, which is not installed; "
                "pip install pyarrow (or mlsignal[train] / mlsignal[freqtrade])"
            )
        return read(path)

    return reader


def normalize_bars(raw: pd.DataFrame) -> pd.DataFrame:
    """Turn OHLCV as people have it into the canonical bars frame, validated.

    Columns match in any case and surrounding whitespace (``Open``, `` Close ``); ``vol`` is
    accepted for ``volume``; other columns (``Adj Close`` included) are dropped. The
    timestamp comes from a column named timestamp, datetime, date or time, else the first
    unnamed column (``Unnamed: 0``), else the index if it is a DatetimeIndex or is named like
    a timestamp column. Values may be ISO strings, dates, datetimes (tz-aware ones are
    converted to UTC), YYYYMMDD integers, or epoch s/ms/us/ns told apart by magnitude.
    Input in strictly descending time order (newest first) is reversed.

    Raises:
        MissingColumnError: a price, volume or timestamp column is absent.
        TimestampError: a timestamp cannot be parsed or is outside 1970-01-01..2262-04-10
            (the message names the row), or timestamps are unsorted or duplicated.
        PriceError: a value is not a number, or fails :func:`validate_bars`.
        DataError: the frame is empty or a column is ambiguous.
    """
    return normalize_rows(raw)[0]


def normalize_rows(raw: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """:func:`normalize_bars`, and whether it reversed the rows (newest-first input): then
    row ``i`` of the bars is row ``len(raw) - 1 - i`` of ``raw``, else row ``i``. For callers
    that give one result per input row, in the input's order."""
    raw = _flatten_columns(raw)
    columns = _canonical_columns(raw)
    stamps = _parse_timestamps(_timestamp_source(raw, columns))
    data = {name: _to_float(raw[columns[name]], name, stamps) for name in BAR_COLUMNS}
    bars = pd.DataFrame(data, index=stamps, columns=list(BAR_COLUMNS))
    bars, reversed_ = _newest_last(bars)
    return validate_bars(bars), reversed_


def _canon(label: object) -> str:
    """``' <Close> '`` -> ``'close'``."""
    return str(label).strip().strip("<>").strip().lower()


def _flatten_columns(raw: pd.DataFrame) -> pd.DataFrame:
    """Drop constant extra column levels, e.g. yfinance's ``(Price, Ticker)`` columns."""
    if raw.columns.nlevels == 1:
        return raw
    for level in range(raw.columns.nlevels):
        names = {_canon(x) for x in raw.columns.get_level_values(level)}
        if names & {"open", "close"}:
            keep = raw.columns.get_level_values(level)
            others = [lv for lv in range(raw.columns.nlevels) if lv != level]
            if all(raw.columns.get_level_values(lv).nunique() == 1 for lv in others):
                return raw.set_axis(keep, axis=1)
    raise DataError(
        f"bars frame has multi-level columns {list(raw.columns)[:6]}...; select one symbol first"
    )


def _canonical_columns(raw: pd.DataFrame) -> dict[str, object]:
    """Map canonical name -> original column label; raise on missing or ambiguous ones."""
    wanted = {a for names in ALIASES.values() for a in names} | set(BAR_COLUMNS)
    wanted |= set(TIMESTAMP_NAMES)
    found: dict[str, object] = {}
    for label in raw.columns:
        key = _canon(label)
        if key in found and key in wanted:
            raise DataError(f"columns {found[key]!r} and {label!r} both read as {key!r}")
        found.setdefault(key, label)
    columns: dict[str, object] = {}
    for name in BAR_COLUMNS:
        for alias in ALIASES.get(name, (name,)):
            if alias in found:
                columns[name] = found[alias]
                break
    for name in TIMESTAMP_NAMES:
        if name in found:
            columns.setdefault("timestamp", found[name])
    missing = [name for name in BAR_COLUMNS if name not in columns]
    if missing:
        raise MissingColumnError(
            f"missing column(s) {', '.join(missing)}; found {[str(c) for c in raw.columns]}"
        )
    return columns


def _timestamp_source(raw: pd.DataFrame, columns: dict[str, object]) -> pd.Series:
    if "timestamp" in columns:
        return raw[columns["timestamp"]]
    for label in raw.columns:
        key = _canon(label)
        if key in ("", "none", "nan") or key.startswith("unnamed"):
            return raw[label]
    index = raw.index
    if isinstance(index, pd.DatetimeIndex) or _canon(index.name) in TIMESTAMP_NAMES:
        return pd.Series(index, index=index)
    raise MissingColumnError(
        "missing timestamp: no column named "
        f"{' / '.join(TIMESTAMP_NAMES)}, no unnamed first column and no DatetimeIndex; "
        f"found {[str(c) for c in raw.columns]}"
    )


def _parse_timestamps(values: pd.Series) -> pd.DatetimeIndex:
    """Parse a timestamp column into a tz-naive UTC nanosecond DatetimeIndex."""
    values = values.reset_index(drop=True)
    numeric = _as_numbers(values)
    parsed = _parse_numbers(numeric) if numeric is not None else _parse_labels(values)
    bad = parsed.isna().to_numpy()
    if bad.any():
        pos = int(np.argmax(bad))
        raw = values.iloc[pos]
        what = "is missing" if pd.isna(raw) else f"{raw!r} cannot be parsed"
        raise TimestampError(f"row {pos + 1}: timestamp {what} (column {values.name!r})")
    index = pd.DatetimeIndex(parsed).tz_convert(None)
    outside = np.asarray((index < _T_MIN) | (index > _T_MAX))  # before as_unit: no overflow
    if outside.any():
        pos = int(np.argmax(outside))
        raw = values.iloc[pos]
        raw = raw.item() if isinstance(raw, np.generic) else raw
        shown = str(index[pos]) if isinstance(raw, datetime) else f"{raw!r} ({index[pos]})"
        raise TimestampError(
            f"row {pos + 1}: timestamp {shown} is outside {TIME_RANGE} (column {values.name!r})"
        )
    return index.as_unit("ns").rename("timestamp")


def _as_numbers(values: pd.Series) -> pd.Series | None:
    """The column as numbers if it holds numbers (or numeric strings), else None."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_datetime64_any_dtype(values):
        return None
    if pd.api.types.is_numeric_dtype(values):
        return values.astype("float64")
    numbers = pd.to_numeric(values, errors="coerce")  # dates and date strings become NaN
    return numbers.astype("float64") if numbers.notna().all() else None


def _parse_numbers(numbers: pd.Series) -> pd.Series:
    finite = numbers[np.isfinite(numbers)]
    if finite.empty:
        return pd.Series(pd.NaT, index=numbers.index, dtype="datetime64[ns, UTC]")
    lo, hi = finite.min(), finite.max()
    is_whole = bool((finite == finite.round()).all())
    if is_whole and _YYYYMMDD[0] <= lo and hi <= _YYYYMMDD[1]:
        text = numbers.map(lambda v: f"{v:.0f}" if np.isfinite(v) else "")
        return pd.to_datetime(text, format="%Y%m%d", utc=True, errors="coerce")
    biggest = float(finite.abs().max())
    unit = next((u for limit, u in _EPOCH_UNITS if biggest < limit), "ns")
    return pd.to_datetime(numbers, unit=unit, utc=True, errors="coerce")


def _parse_labels(values: pd.Series) -> pd.Series:
    """Strings, dates and datetimes; naive values are taken as UTC."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "could not infer format"
        parsed = pd.to_datetime(values, utc=True, errors="coerce")
        if parsed.isna().any() and not pd.api.types.is_datetime64_any_dtype(values):
            # Mixed formats (2020-01-02 beside 2020-01-02 10:00) fail the inferred format.
            parsed = pd.to_datetime(values, utc=True, errors="coerce", format="mixed")
    return parsed


def _to_float(column: pd.Series, name: str, stamps: pd.DatetimeIndex) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        return column.to_numpy(dtype=np.float64, na_value=np.nan)
    numbers = pd.to_numeric(column, errors="coerce")
    bad = (numbers.isna() & column.notna()).to_numpy()
    if bad.any():
        pos = int(np.argmax(bad))
        shown = column.iloc[pos]
        raise PriceError(f"row {pos + 1} ({stamps[pos]}): {name} {shown!r} is not a number")
    return numbers.to_numpy(dtype=np.float64, na_value=np.nan)


def _newest_last(bars: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """Reverse a strictly newest-first frame (common in exchange and broker exports); say
    whether it was reversed."""
    if len(bars) > 1 and bars.index.is_monotonic_decreasing and bars.index.is_unique:
        logger.info("bars are newest-first; reversing %d rows to oldest-first", len(bars))
        return bars.iloc[::-1], True
    return bars, False
