"""``prepare_many`` (the server's batch prepare) equals ``prepare_arrays`` one item at a time
followed by ``with_regime_vols``: the same windows, scores, GARCH numbers, errors and messages."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest

from mlsignal import wire
from mlsignal.data import clean_arrays, clean_arrays_many
from mlsignal.errors import DataError, FeatureSchemaError
from mlsignal.features import DEFAULT_SCHEMA, FeatureSchema
from mlsignal.models.garch import GarchParams
from mlsignal.pipeline import (
    ArrayItem,
    Prepared,
    prepare_arrays,
    prepare_many,
    with_regime_vols,
)


@dataclass(frozen=True)
class StubBundle:
    """What prepare reads of a :class:`~mlsignal.bundle.Bundle`: the feature schema, the
    GARCH parameters and ``min_bars`` (computed as Bundle computes it). No model needed."""

    schema: FeatureSchema = DEFAULT_SCHEMA
    garch: GarchParams = field(
        default_factory=lambda: GarchParams(mu=0.05, omega=0.02, alpha=0.08, beta=0.9)
    )

    @property
    def min_bars(self) -> int:
        return max(self.schema.lookback, self.garch.lookback + 1)


BUNDLE = StubBundle()
prepare_module = importlib.import_module("mlsignal.pipeline.prepare")  # not the function


def item(bars: pd.DataFrame, symbol: str, ss=35.0, bs=55.0, pandas: bool = True) -> ArrayItem:
    """One wire item, as the server decodes it; ``pandas=False``: its frame must not be used."""
    arrays = wire.decode_bar_arrays(wire.encode_bars(bars), "bars", 5000)
    frame = arrays.frame if pandas else _no_frame
    return (symbol, arrays.t_ms, arrays.ohlcv, ss, bs, frame)


def _no_frame() -> pd.DataFrame:
    pytest.fail("clean bars took the pandas path")


def changed(it: ArrayItem, edit=None, **fields) -> ArrayItem:
    """A copy of ``it`` with ``edit(t_ms, ohlcv)`` applied to copies of its arrays, and
    ``fields`` (symbol, ss, bs) replaced; its frame is the new bars'."""
    symbol, t_ms, ohlcv, ss, bs, _ = it
    t_ms, ohlcv = t_ms.copy(), ohlcv.copy()
    if edit is not None:
        t_ms, ohlcv = edit(t_ms, ohlcv) or (t_ms, ohlcv)
    f = {"symbol": symbol, "ss": ss, "bs": bs, **fields}
    arrays = wire.BarArrays(t_ms, ohlcv)
    return (f["symbol"], t_ms, ohlcv, f["ss"], f["bs"], arrays.frame)


def _set(row: int, col: int, value: float):
    def edit(t_ms, ohlcv):
        ohlcv[row, col] = value

    return edit


def one_by_one(bundle, items: list[ArrayItem]) -> list[Prepared] | DataError:
    try:
        return with_regime_vols(bundle, [prepare_arrays(bundle, *i) for i in items])
    except DataError as e:
        return e


def batch(bundle, items: list[ArrayItem]) -> list[Prepared] | DataError:
    try:
        return prepare_many(bundle, items)
    except DataError as e:
        return e


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint8)


def assert_same(got: list[Prepared] | DataError, want: list[Prepared] | DataError) -> None:
    if isinstance(want, DataError):
        assert isinstance(got, DataError), "prepare_many did not raise"
        assert (type(got), str(got)) == (type(want), str(want))
        return
    assert not isinstance(got, DataError), got
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert (a.symbol, a.ss, a.bs, a.bar_ts) == (b.symbol, b.ss, b.bs, b.bar_ts)
        assert a.regime_vol is not None and a.regime_vol == b.regime_vol, a.symbol
        assert a.schema == b.schema and a.window.dtype == b.window.dtype == np.float32
        assert np.array_equal(bits(a.window), bits(b.window)), a.symbol
        assert np.array_equal(a.t_ns, b.t_ns) and a.t_ns.dtype == b.t_ns.dtype
        assert np.array_equal(bits(a.ohlcv), bits(b.ohlcv)) and a.ohlcv.shape == b.ohlcv.shape


@pytest.fixture(scope="module")
def clean(sp500_bars) -> list[ArrayItem]:
    """70 clean items of several lengths (>= min_bars), with and without rule scores."""
    out = []
    lengths = (256, 257, 300, 256, 400)
    scores = ((35.0, 55.0), (None, None), (12.5, None), (None, 99.0), (0.0, 100.0))
    for k in range(70):
        end = len(sp500_bars) - 13 * k
        n = lengths[k % len(lengths)]
        ss, bs = scores[k % len(scores)]
        out.append(item(sp500_bars.iloc[end - n : end], f"S{k}", ss, bs, pandas=False))
    return out


def test_clean_items_equal_the_one_by_one_path_without_pandas(clean):
    assert_same(batch(BUNDLE, clean), one_by_one(BUNDLE, clean))  # one GARCH pass


@pytest.mark.parametrize("n", [1, 2, 4, 5, 16, 17])
def test_small_and_chunk_sized_batches(clean, n):
    assert_same(batch(BUNDLE, clean[:n]), one_by_one(BUNDLE, clean[:n]))  # <= 4: scalar GARCH


def test_a_garch_lookback_longer_than_the_feature_lookback(sp500_bars):
    bundle = StubBundle(garch=GarchParams(mu=0.01, omega=0.05, alpha=0.3, beta=0.75, lookback=320))
    assert bundle.min_bars == 321 > bundle.schema.lookback  # not stationary either
    items = [item(sp500_bars.iloc[-330 - k : len(sp500_bars) - k], f"L{k}") for k in range(9)]
    assert_same(batch(bundle, items), one_by_one(bundle, items))
    short = item(sp500_bars.iloc[-256:], "SHORT")  # enough for the default bundle, not this one
    items.insert(4, short)
    assert_same(batch(bundle, items), one_by_one(bundle, items))
    assert "SHORT: 256 bars given; the model needs at least 321" in str(batch(bundle, items))


def test_another_feature_schema(sp500_bars):
    bundle = StubBundle(schema=FeatureSchema(window=20, warmup=60))
    items = [item(sp500_bars.iloc[-300 - k : len(sp500_bars) - k], f"F{k}") for k in range(6)]
    assert_same(batch(bundle, items), one_by_one(bundle, items))


def _reverse(t_ms, ohlcv):
    return t_ms[::-1].copy(), ohlcv[::-1].copy()


def test_bars_the_batch_does_not_take_get_the_pandas_answer(clean):
    newest_first = changed(clean[0], _reverse)
    mixed = [*clean[1:30], newest_first, *clean[30:40]]
    got, want = batch(BUNDLE, mixed), one_by_one(BUNDLE, mixed)
    assert_same(got, want)  # normalised (sorted) by the pandas path, not refused
    assert not isinstance(got, DataError) and got[29].symbol == "S0"


def _duplicate_time(t_ms, ohlcv):
    t_ms[50] = t_ms[49]


def _too_few(t_ms, ohlcv):
    return t_ms[-100:], ohlcv[-100:]


def _overflowing_feature(t_ms, ohlcv):
    """Clean bars whose features are not finite: a high of 1e308 times the first close."""
    ohlcv[:, :4] *= 1e-7
    ohlcv[-5, 1] = 1e308


BAD = {  # kind -> (edit, fields)
    "too few bars": (_too_few, {}),
    "bad price": (_set(100, 3, -1.0), {}),
    "high below low": (_set(-3, 1, 0.001), {}),
    "NaN volume": (_set(-1, 4, np.nan), {}),
    "duplicate time": (_duplicate_time, {}),
    "ss out of range": (None, {"ss": 150.0}),
    "bs NaN": (None, {"bs": float("nan")}),
    "bs not a number": (None, {"bs": "x"}),
    "non-finite feature": (_overflowing_feature, {}),
}


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("at", [0, 7, 12])
@pytest.mark.filterwarnings("ignore:overflow encountered in divide")  # the 1e308 high
def test_the_first_bad_item_raises_what_the_one_by_one_path_raises(sp500_bars, kind, at):
    goods = [item(sp500_bars.iloc[-256 - k : len(sp500_bars) - k], f"G{k}") for k in range(12)]
    edit, fields = BAD[kind]
    bad = changed(item(sp500_bars.iloc[-300:], "X"), edit, symbol="BAD", **fields)
    later = changed(goods[3], _set(100, 3, -1.0), symbol="LATER")
    items = [*goods[:at], bad, *goods[at:], later]
    got, want = batch(BUNDLE, items), one_by_one(BUNDLE, items)
    assert isinstance(want, DataError)
    assert str(want).startswith("BAD: ")
    assert_same(got, want)
    if kind == "non-finite feature":
        assert isinstance(want, FeatureSchemaError)


def test_rule_scores_only_for_items_without_scores(clean, monkeypatch):
    calls = []
    real = prepare_module.last_score

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "last_score", counting)
    prepared = prepare_many(BUNDLE, clean)
    assert len(calls) == sum(1 for it in clean if it[3] is None or it[4] is None) == 42
    for p, (_, _, _, ss, bs, _) in zip(prepared, clean, strict=True):
        assert (ss is None or p.ss == ss) and (bs is None or p.bs == bs)


def test_nothing_in_nothing_out():
    assert prepare_many(BUNDLE, []) == []


def test_clean_arrays_many_is_clean_arrays_row_by_row(sp500_bars):
    bars = sp500_bars.iloc[-300:]
    t_ms = bars.index.asi8 // 1_000_000
    x = bars.to_numpy(dtype=np.float64)
    rng = np.random.default_rng(1)
    ts, xs = [], []
    for k in range(60):
        t, v = t_ms.copy(), x.copy()
        i = int(rng.integers(1, len(t)))
        case = k % 10
        if case == 1:
            t[i] = t[i - 1]  # duplicate timestamp
        elif case == 2:
            v[i, 3] = np.nan
        elif case == 3:
            v[i, 1] = v[i, 2] * 0.5  # high below low
        elif case == 4:
            v[i, 4] = -1.0
        elif case == 5:
            v[i, 4] = np.inf
        elif case == 6:
            v[i, 0] = 0.0
        elif case == 7:
            t[-1] = 2**62  # beyond pandas' range
        elif case == 8:
            v[i, 2] = v[i, 0] * 1.01  # low above open
        ts.append(t)
        xs.append(v)
    t_all, x_all = np.stack(ts), np.stack(xs)
    want = [clean_arrays(t, v) for t, v in zip(ts, xs, strict=True)]
    assert clean_arrays_many(t_all, x_all).tolist() == want
    assert sum(want) == 6 * 2  # cases 0 and 9 are clean
    assert clean_arrays_many(t_all[:, :0], x_all[:, :0]).tolist() == [False] * 60
