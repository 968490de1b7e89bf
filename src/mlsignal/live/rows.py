"""Bars from the lines of a bar file, with every bad line quarantined instead of fatal.

A file a feed reads may hold a line that is not a bar: ``2012-12-19,abc,1,1,1,1``, a line
with a field too many, a row without its symbol, high below low, a timestamp not after the
previous bar's. By default such a line is **quarantined**: it becomes a :class:`Rejection`
(the file, the line number, the line itself, the reason) and the other lines are read as if
it were not there. With ``strict`` the first bad line (in file order) raises its
:class:`~mlsignal.errors.DataError` instead, naming the file and the line.

Lines are numbered as an editor numbers them: the header is line 1, the first bar line 2.
Parquet and Feather files have no lines: there ``line`` is the 1-based row number.

A clean file costs what it did before this module: one ``read_csv`` and one
:func:`~mlsignal.data.normalize_bars` per symbol. Only a chunk that fails takes the slow
path: lines with the wrong number of fields or that are not UTF-8; a bisection that isolates
the rows that are not bars on their own (a few ``normalize_bars`` calls per bad row); an
order pass per symbol (a bar not after the symbol's previous bar is bad: the first one wins,
as in a live stream); then the good lines are read again as one clean chunk, so that their
numbers are exactly what the same lines give in a clean file.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd

from mlsignal.data import normalize_bars
from mlsignal.data.io import FEATHER_SUFFIXES
from mlsignal.errors import DataError, MissingColumnError, PriceError, TimestampError

#: Column names (any case) that mark a multi-symbol file.
SYMBOL_COLUMNS: tuple[str, ...] = ("symbol", "ticker")
#: Errors that a single row can cause (anything else is the file's fault: a missing column).
ROW_ERRORS: tuple[type[DataError], ...] = (PriceError, TimestampError)
_ROW_PREFIX = re.compile(r"^row \d+(?: \([^)]*\))?: ")


@dataclass(frozen=True)
class Rejection:
    """A line (or bar) refused as a bar: where it came from, what it was, and why.

    ``source`` is the file's absolute path, or the symbol for a bar that did not come from a
    file line (an exchange candle, a frame given in memory); ``line`` is then ``None``.
    """

    source: str
    line: int | None
    raw: str
    reason: str
    symbol: str | None = None

    @property
    def where(self) -> str:
        """``/data/btc.csv line 263`` (or the source alone)."""
        return self.source if self.line is None else f"{self.source} line {self.line}"

    def key(self) -> tuple[str, int | None, str]:
        """What makes two rejections the same one (a restart reads the same line again)."""
        return (self.source, self.line, self.raw)


@dataclass(frozen=True)
class _Bad:
    pos: int
    reason: str
    kind: type[DataError]
    symbol: str | None = None


@dataclass(frozen=True)
class _BadLine:
    """A line refused before it became a row (wrong field count, not UTF-8, unreadable)."""

    line: int
    text: str
    reason: str
    kind: type[DataError] = DataError


@dataclass
class _Rows:
    """The rows of a file or chunk with, per row position, its line number and text."""

    raw: pd.DataFrame
    lines: list[int]
    texts: list[str]
    reread: Callable[[list[int]], pd.DataFrame]  # the rows at these positions, read cleanly


@dataclass(frozen=True)
class Reading:
    """How to read: the file (``source`` for rejections, ``where`` for messages), the
    symbol of a file without a symbol column, the last bar already delivered per symbol
    and what to do with a bar not after it (``"reject"`` it, or ``"skip"`` it silently
    when a rotated file is read again from its start), and whether to stop on a bad line."""

    source: str
    where: str
    default_symbol: str
    last: Mapping[str, pd.Timestamp] | None = None
    old: str = "reject"
    strict: bool = False


# --- reading files ----------------------------------------------------------------------------
def read_file_rows(
    path: str | Path, default_symbol: str, *, strict: bool
) -> tuple[dict[str, pd.DataFrame], list[Rejection]]:
    """``({symbol: bars}, rejections)`` of a CSV (``.csv``, ``.csv.gz``), Parquet or Feather
    (freqtrade's data files) file; a file without a single row is a DataError."""
    path = Path(path)
    how = Reading(os.path.abspath(path), str(path), default_symbol, strict=strict)
    if path.name.lower().endswith((".csv", ".csv.gz")):
        data = path.read_bytes()
        if path.name.lower().endswith(".gz"):
            data = gzip.decompress(data)
        frames, rejections = parse_csv(*split_header(data), how)
    else:
        read = pd.read_feather if path.name.lower().endswith(FEATHER_SUFFIXES) else pd.read_parquet
        raw = read(path)
        texts = [",".join(map(str, row)) for row in raw.itertuples(index=True, name=None)]
        rows = _Rows(raw, list(range(1, len(raw) + 1)), texts, lambda kept: raw.iloc[kept])
        frames, rejections = parse_rows(rows, how, [])
    if not frames and not rejections:
        raise DataError(f"{path}: no bars in the file")
    return frames, rejections


def split_header(data: bytes) -> tuple[bytes, bytes, int]:
    """``(header line, the lines after it, the number of the first of them)``; blank lines
    before the header are skipped as ``read_csv`` skips them."""
    start, number = 0, 1
    while True:
        end = data.find(b"\n", start)
        line = data[start:] if end < 0 else data[start : end + 1]
        if line.strip() or end < 0:
            return line, data[start + len(line) :], number + 1
        start, number = end + 1, number + 1


# --- CSV lines --------------------------------------------------------------------------------
def parse_csv(
    header: bytes, body: bytes, first_line: int, how: Reading
) -> tuple[dict[str, pd.DataFrame], list[Rejection]]:
    """Bars from CSV ``body`` (complete lines after ``header``; its first line is number
    ``first_line``): ``({symbol: bars}, rejections)``. See the module docstring."""
    if not header.strip():
        raise DataError(f"{how.where}: no header line")
    fast = _fast_csv(header, body, how)
    if fast is not None:
        return fast, []
    numbered = [
        (first_line + i, line.rstrip(b"\r"))
        for i, line in enumerate(body.split(b"\n"))
        if line.strip()
    ]
    kept, bad_lines = _well_formed(header, numbered)
    try:
        raw, kept, unreadable = _read_lines(header, kept)
    except DataError as e:
        raise DataError(f"{how.where}: {e}") from e
    texts = [text.decode("utf-8", "replace") for _, text in kept]

    def reread(positions: list[int]) -> pd.DataFrame:
        return _read_csv(header + b"\n".join(kept[p][1] for p in positions) + b"\n")

    rows = _Rows(raw, [n for n, _ in kept], texts, reread)
    return parse_rows(rows, how, bad_lines + unreadable, fast=False)


def _fast_csv(header: bytes, body: bytes, how: Reading) -> dict[str, pd.DataFrame] | None:
    if not body.strip():
        return {}
    try:
        raw = _read_csv(header + body)
    except Exception:  # the slow path says which line
        return None
    return _fast(raw, how)


def _read_csv(data: bytes) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(data))


def _well_formed(
    header: bytes, numbered: list[tuple[int, bytes]]
) -> tuple[list[tuple[int, bytes]], list[_BadLine]]:
    """Lines that are UTF-8 with as many fields as the header, and the others."""
    width = len(_fields(header.decode("utf-8", "replace")))
    kept, bad = [], []
    for number, line in numbered:
        try:
            n = len(_fields(line.decode("utf-8")))
        except UnicodeDecodeError:
            bad.append(_bad_line(number, line, "the line is not UTF-8 text"))
            continue
        if n != width:
            bad.append(_bad_line(number, line, f"{n} fields where the header has {width}"))
            continue
        kept.append((number, line))
    return kept, bad


def _bad_line(number: int, line: bytes, reason: str) -> _BadLine:
    return _BadLine(number, line.decode("utf-8", "replace"), reason)


def _fields(text: str) -> list[str]:
    return next(csv.reader([text.rstrip("\r\n")]), [])


def _read_lines(
    header: bytes, kept: list[tuple[int, bytes]]
) -> tuple[pd.DataFrame, list[tuple[int, bytes]], list[_BadLine]]:
    """Read ``kept`` as one frame; a line pandas cannot read (rare after the field count)
    is found alone and refused."""
    bad = []
    try:
        raw = _read_csv(header + b"".join(t + b"\n" for _, t in kept))
    except Exception:  # each line alone says which one
        good = []
        for number, text in kept:
            try:
                _read_csv(header + text + b"\n")
                good.append((number, text))
            except Exception as exc:  # pandas raises several types for a malformed line
                bad.append(_bad_line(number, text, f"cannot be read as CSV: {exc}"))
        kept = good
        raw = _read_csv(header + b"".join(t + b"\n" for _, t in kept))
    if len(raw) != len(kept):
        raise DataError(f"{len(kept)} lines read as {len(raw)} rows")
    return raw, kept, bad


# --- rows -> bars -----------------------------------------------------------------------------
def _fast(raw: pd.DataFrame, how: Reading) -> dict[str, pd.DataFrame] | None:
    """Every symbol's bars when all rows are good and in order; None otherwise."""
    try:
        frames = split_symbols(raw, how.default_symbol, how.where)
    except MissingColumnError:
        raise
    except DataError:
        return None
    last = how.last or {}
    for symbol, bars in list(frames.items()):
        before = last.get(symbol)
        if before is None or bars.index[0] > before:
            continue
        if how.old != "skip":
            return None  # the slow path names the line
        frames[symbol] = bars[bars.index > before]
        if frames[symbol].empty:
            del frames[symbol]
    return frames


def parse_rows(
    rows: _Rows, how: Reading, bad_lines: list[_BadLine], *, fast: bool = True
) -> tuple[dict[str, pd.DataFrame], list[Rejection]]:
    """The bars of ``rows`` and the rejections (``bad_lines``: lines refused before they
    became rows). ``fast``: try the whole frame at once first."""
    if fast and not bad_lines:
        frames = _fast(rows.raw, how)
        if frames is not None:
            return frames, []
    bad: dict[int, _Bad] = {}
    stamps: dict[int, pd.Timestamp] = {}
    groups = _by_symbol(rows.raw, how, bad)
    kept_by_symbol: dict[str, list[int]] = {}
    for symbol, (frame, positions) in groups.items():
        _isolate(frame, positions, how, bad, stamps, symbol)
        good = [p for p in positions if p not in bad]
        kept_by_symbol[symbol] = _in_order(good, stamps, symbol, how, bad)
    one = None if _symbol_column(rows.raw) is not None else how.default_symbol
    rejections = sorted(
        [Rejection(how.source, b.line, b.text, b.reason, one) for b in bad_lines]
        + [Rejection(how.source, rows.lines[b.pos], rows.texts[b.pos], b.reason, b.symbol)
           for b in bad.values()],
        key=lambda r: r.line or 0,
    )  # fmt: skip
    if how.strict and rejections:
        _raise_first(rejections, bad_lines, bad, rows, how)
    return _reread(rows, kept_by_symbol, stamps, how), rejections


def _by_symbol(
    raw: pd.DataFrame, how: Reading, bad: dict[int, _Bad]
) -> dict[str, tuple[pd.DataFrame, list[int]]]:
    """``{symbol: (frame without the symbol column, its row positions in file order)}``."""
    col = _symbol_column(raw)
    if col is None:
        return {how.default_symbol: (raw, list(range(len(raw))))} if len(raw) else {}
    names = raw[col]
    for pos in np.flatnonzero(names.isna().to_numpy()):
        bad[int(pos)] = _Bad(int(pos), f"{col} is missing", DataError)
    frame = raw.drop(columns=[col])
    out: dict[str, tuple[pd.DataFrame, list[int]]] = {}
    for pos, name in enumerate(names.astype(str).str.strip()):
        if pos not in bad:
            out.setdefault(name, (frame, []))[1].append(pos)
    return out


def _isolate(
    frame: pd.DataFrame,
    positions: list[int],
    how: Reading,
    bad: dict[int, _Bad],
    stamps: dict[int, pd.Timestamp],
    symbol: str,
) -> None:
    """Find the rows that are not bars on their own (by bisection) and the bar time of
    every other row."""
    stack = [(0, len(positions))]
    while stack:
        lo, hi = stack.pop()
        block = frame.iloc[positions[lo:hi]]
        try:
            bars = normalize_bars(block)
            if hi - lo > 1 and bars.index[0] != normalize_bars(block.iloc[:1]).index[0]:
                raise TimestampError("newest-first block")  # reversed: look closer
        except ROW_ERRORS as e:
            if hi - lo == 1:
                bad[positions[lo]] = _Bad(positions[lo], reason_of(e), type(e), symbol)
            else:
                mid = (lo + hi) // 2
                stack += [(mid, hi), (lo, mid)]
            continue
        except DataError as e:  # a missing or ambiguous column: the whole file is unusable
            raise type(e)(f"{how.where}: {e}") from e
        stamps.update(zip(positions[lo:hi], bars.index, strict=True))


def _in_order(
    good: list[int], stamps: dict[int, pd.Timestamp], symbol: str, how: Reading, bad: dict
) -> list[int]:
    """The rows kept, in time order: a bar not after the previous kept one is bad (first
    wins). A file strictly newest-first is taken oldest-first, as ``normalize_bars`` does."""
    before = (how.last or {}).get(symbol)
    seq = [(p, stamps[p]) for p in good]
    if before is None and len(seq) > 1 and all(b < a for (_, a), (_, b) in pairwise(seq)):
        seq.reverse()
    kept: list[int] = []
    prev = before
    for pos, ts in seq:
        if how.old == "skip" and before is not None and ts <= before:
            continue  # a rotated file read again: bars already delivered
        if prev is not None and ts <= prev:
            why = f"bar time {ts} is not after the previous bar {prev}; bars must be newer"
            bad[pos] = _Bad(pos, why, TimestampError, symbol)
            continue
        kept.append(pos)
        prev = ts
    return kept


def _reread(
    rows: _Rows,
    kept_by_symbol: dict[str, list[int]],
    stamps: dict[int, pd.Timestamp],
    how: Reading,
) -> dict[str, pd.DataFrame]:
    """The kept rows read again as one clean chunk (the numbers a clean file gives)."""
    kept = sorted(p for positions in kept_by_symbol.values() for p in positions)
    if not kept:
        return {}
    frames = split_symbols(rows.reread(kept), how.default_symbol, how.where)
    for symbol, positions in kept_by_symbol.items():
        want = [stamps[p] for p in positions]
        got = list(frames[symbol].index) if symbol in frames else []
        if got != want:  # cannot happen unless pandas reads the same lines differently
            raise DataError(f"{how.where}: its good lines read differently together")
    return frames


def _raise_first(
    rejections: list[Rejection],
    bad_lines: list[_BadLine],
    bad: dict[int, _Bad],
    rows: _Rows,
    how: Reading,
) -> None:
    first = rejections[0]
    kinds = {b.line: b.kind for b in bad_lines}
    kinds.update({rows.lines[b.pos]: b.kind for b in bad.values()})
    kind = kinds.get(first.line, DataError)
    raise kind(f"{how.where} line {first.line}: {first.reason}")


def reason_of(error: Exception) -> str:
    """An error's message without the ``row 1 (...)`` of a one-row frame."""
    return _ROW_PREFIX.sub("", str(error))


# --- symbols ----------------------------------------------------------------------------------
def _symbol_column(raw: pd.DataFrame) -> object | None:
    return next((c for c in raw.columns if str(c).strip().lower() in SYMBOL_COLUMNS), None)


def split_symbols(raw: pd.DataFrame, default_symbol: str, where: str) -> dict[str, pd.DataFrame]:
    """Normalise ``raw`` into ``{symbol: bars}``: by its symbol column, else one symbol.

    Errors are prefixed with ``where`` (the path) and, for multi-symbol files, ``[symbol]``;
    row numbers then count that symbol's rows (from 1).
    """
    col = _symbol_column(raw)
    if col is None:
        return {default_symbol: _normalized(raw, where)}
    if raw[col].isna().any():
        pos = int(np.flatnonzero(raw[col].isna().to_numpy())[0])
        raise DataError(f"{where}: row {pos + 1}: {col} is missing")
    out = {}
    for symbol, rows in raw.groupby(raw[col].astype(str).str.strip(), sort=False):
        out[str(symbol)] = _normalized(rows.drop(columns=[col]), f"{where} [{symbol}]")
    return out


def _normalized(raw: pd.DataFrame, where: str) -> pd.DataFrame:
    try:
        return normalize_bars(raw)
    except DataError as e:
        raise type(e)(f"{where}: {e}") from e


def bars_of(rejections: Sequence[Rejection], wanted: set[str] | None) -> list[Rejection]:
    """The rejections that concern ``wanted`` symbols (all when ``None``; a line whose
    symbol is unknown always concerns them)."""
    if wanted is None:
        return list(rejections)
    return [r for r in rejections if r.symbol is None or r.symbol in wanted]
