"""freqtrade's Feather data files (``<PAIR>-<timeframe>.feather``) read as bars."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest

from mlsignal.data import load_dataset, load_sample, read_bars, symbol_of
from mlsignal.errors import ConfigError, DataError

pytest.importorskip("pyarrow")


def _freqtrade_file(path, bars):
    """What freqtrade writes: columns date (UTC, ms), open, high, low, close, volume."""
    df = bars.reset_index().rename(columns={"timestamp": "date"})
    df["date"] = df["date"].dt.tz_localize("UTC").dt.as_unit("ms")
    df.to_feather(path, compression="lz4")
    return path


def test_a_freqtrade_feather_file_reads_as_bars(tmp_path):
    bars = load_sample("sp500").iloc[:300]
    path = _freqtrade_file(tmp_path / "SP500_USDT-1d.feather", bars)
    pd.testing.assert_frame_equal(read_bars(path), bars)
    assert symbol_of(path) == "SP500_USDT-1d"
    assert list(load_dataset(str(path))) == ["SP500_USDT-1d"]


def test_symbol_names_follow_one_rule():
    assert symbol_of("data/btc.csv.gz") == "btc"
    assert symbol_of("x/ETH_USDT-4h.FEATHER") == "ETH_USDT-4h"
    assert symbol_of("eth.parquet") == "eth"


def test_a_broken_feather_file_is_a_data_error(tmp_path):
    path = tmp_path / "BAD-1d.feather"
    path.write_bytes(b"not arrow")
    with pytest.raises(DataError, match=r"BAD-1d\.feather: cannot read bars file"):
        read_bars(path)


def test_missing_pyarrow_is_said_plainly(tmp_path, monkeypatch):
    path = _freqtrade_file(tmp_path / "A-1d.feather", load_sample("sp500").iloc[:5])
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"reading Feather files needs pyarrow.*pip install"):
        read_bars(path)
