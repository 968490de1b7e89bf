"""Reading (CSV, Parquet, freqtrade's Feather), normalising and validating OHLCV bars;
built-in real sample data sets."""

from __future__ import annotations

from mlsignal.data.io import normalize_bars, normalize_rows, read_bars, symbol_of
from mlsignal.data.samples import SAMPLES, load_dataset, load_sample
from mlsignal.data.validate import (
    BAR_COLUMNS,
    check_bar,
    clean_arrays,
    clean_arrays_many,
    validate_bars,
)

__all__ = [
    "BAR_COLUMNS",
    "SAMPLES",
    "check_bar",
    "clean_arrays",
    "clean_arrays_many",
    "load_dataset",
    "load_sample",
    "normalize_bars",
    "normalize_rows",
    "read_bars",
    "symbol_of",
    "validate_bars",
]
