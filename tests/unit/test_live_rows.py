"""Bar files with bad rows: quarantined with file, line and reason, or (strict) one error."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from mlsignal.errors import MissingColumnError, PriceError, TimestampError
from mlsignal.live.feeds import load_bars_files

HEADER = "timestamp,open,high,low,close,volume\n"
GARBAGE = "2012-12-19,abc,1,1,1,1\n"


def _load(path, **kw):
    rejected: list = []
    data = load_bars_files([str(path)], quarantine=rejected, **kw)
    return data, rejected


def test_a_bad_row_is_left_out_and_the_good_rows_keep_their_exact_numbers(sp500_bars, tmp_path):
    bars = sp500_bars.iloc[-300:]
    clean, dirty = tmp_path / "clean.csv", tmp_path / "spx.csv"
    bars.to_csv(clean)
    lines = clean.read_text().splitlines(keepends=True)
    dirty.write_text("".join([*lines[:101], GARBAGE, *lines[101:]]))  # line 102
    data, rejected = _load(dirty)
    # The good lines read as one clean chunk: the same float64 values, bit for bit.
    expected = load_bars_files([str(clean)])["clean"]
    assert np.array_equal(data["spx"].to_numpy(), expected.to_numpy())
    assert data["spx"].index.equals(expected.index)
    (r,) = rejected
    assert (r.source, r.line, r.raw) == (str(dirty), 102, GARBAGE.strip())
    assert (r.reason, r.symbol) == ("open 'abc' is not a number", "spx")


def test_strict_raises_naming_the_file_and_line_of_the_first_bad_row(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(HEADER + "2024-01-01,1,2,0.5,1,10\n" + "2024-01-02,1,0.5,0.4,1,10\n" + GARBAGE)
    with pytest.raises(PriceError, match=r"^\S+s\.csv line 3: high 0\.5 is below open 1\.0$"):
        load_bars_files([str(path)])
    _, rejected = _load(path)
    assert [r.line for r in rejected] == [3, 4]


def test_duplicates_and_older_rows_are_quarantined_first_one_wins(tmp_path):
    path = tmp_path / "d.csv"
    rows = ["2024-01-01", "2024-01-02", "2024-01-02", "2023-12-31", "2024-01-03"]
    path.write_text(HEADER + "".join(f"{d},1,1,1,1,1\n" for d in rows))
    data, rejected = _load(path)
    assert list(data["d"].index.day) == [1, 2, 3]
    assert [r.line for r in rejected] == [4, 5]
    assert all(isinstance(r.reason, str) and "is not after" in r.reason for r in rejected)


def test_multi_symbol_files_name_the_symbol_and_keep_other_symbols(tmp_path):
    path = tmp_path / "many.csv.gz"
    text = (
        "symbol," + HEADER
        + "A,2024-01-01,1,1,1,1,1\n" + "B,2024-01-01,1,1,1,1,1\n"
        + ",2024-01-02,1,1,1,1,1\n"  # line 4: no symbol
        + "B,2024-01-02,1,1,1,nan,1\n"  # line 5: close is not finite
        + "A,2024-01-02,1,1,1,1,1\n" + "B,2024-01-03,1,1,1,1,1\n"
    )  # fmt: skip
    path.write_bytes(gzip.compress(text.encode()))
    data, rejected = _load(path)
    assert {s: list(f.index.day) for s, f in data.items()} == {"A": [1, 2], "B": [1, 3]}
    assert [(r.line, r.symbol, r.reason) for r in rejected] == [
        (4, None, "symbol is missing"),
        (5, "B", "close nan is not finite"),
    ]
    data, rejected = _load(path, symbols=["A"])  # B's bad row does not concern A
    assert list(data) == ["A"] and [r.line for r in rejected] == [4]


def test_newest_first_files_and_parquet_rows(tmp_path):
    path = tmp_path / "n.csv"
    path.write_text(HEADER + "2024-01-03,1,1,1,1,1\n2024-01-02,1,1,1,1,1\nzz,1,1,1,1,1\n"
                    "2024-01-01,1,1,1,1,1\n")  # fmt: skip
    data, rejected = _load(path)
    assert list(data["n"].index.day) == [1, 2, 3] and [r.line for r in rejected] == [4]
    frame = pd.DataFrame(
        {"timestamp": pd.date_range("2024-01-01", periods=4), "open": 1.0, "high": 1.0,
         "low": 1.0, "close": [1.0, -1.0, 1.0, 1.0], "volume": 1.0}
    )  # fmt: skip
    frame.to_parquet(tmp_path / "p.parquet")
    data, rejected = _load(tmp_path / "p.parquet")
    assert len(data["p"]) == 3
    assert [(r.line, r.reason) for r in rejected] == [(2, "close -1.0 is not positive")]


def test_a_file_without_a_needed_column_is_an_error_even_when_quarantining(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("timestamp,open,high,low,close\n2024-01-01,1,1,1,1\n" + GARBAGE)
    with pytest.raises(MissingColumnError, match=r"c\.csv: missing column\(s\) volume"):
        _load(path)
    stamp = tmp_path / "t.csv"
    stamp.write_text(HEADER + "2024-01-01,1,1,1,1,1\n2024-01-01,2,2,2,2,2\n")
    with pytest.raises(TimestampError, match=r"t\.csv line 3: bar time 2024-01-01 .*not after"):
        load_bars_files([str(stamp)])
