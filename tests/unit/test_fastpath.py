"""The server's array path (wire arrays -> Prepared, no pandas) equals the pandas path exactly:
the same windows, scores, GARCH numbers and error messages."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mlsignal import wire
from mlsignal.bundle import load_bundle
from mlsignal.errors import DataError, WireError
from mlsignal.models.garch import garch_forecast_batch
from mlsignal.pipeline import (
    SignalRequest,
    finish,
    prepare,
    prepare_arrays,
    regime_vol,
    with_regime_vols,
)


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


def _doc(bars) -> dict:
    return wire.encode_bars(bars)


def _both(bundle, doc, ss=35.0, bs=55.0, symbol="SPX"):
    """(array path, pandas path) for one wire bars doc; each a Prepared or the DataError."""
    arrays = wire.decode_bar_arrays(doc, "bars", 5000)
    out = []
    for fn in (
        lambda: prepare_arrays(bundle, symbol, arrays.t_ms, arrays.ohlcv, ss, bs, arrays.frame),
        lambda: prepare(bundle, SignalRequest(symbol, wire.decode_bars(doc, "b", 5000), ss, bs)),
    ):
        try:
            out.append(fn())
        except DataError as e:
            out.append(e)
    return out


def _same(a, b) -> None:
    if isinstance(b, Exception):
        assert type(a) is type(b) and str(a) == str(b)
        return
    assert a.symbol == b.symbol and (a.ss, a.bs) == (b.ss, b.bs) and a.bar_ts == b.bar_ts
    assert np.array_equal(a.window, b.window) and np.array_equal(a.close, b.close)


def test_clean_bars_take_the_array_path_with_identical_numbers(bundle, sp500_bars):
    for end in range(len(sp500_bars) - 30, len(sp500_bars), 7):
        doc = _doc(sp500_bars.iloc[end - 300 : end])
        fast, slow = _both(bundle, doc)
        _same(fast, slow)
        arrays = wire.decode_bar_arrays(doc, "bars", 5000)
        no_frame = lambda: pytest.fail("clean bars took the pandas path")  # noqa: E731
        prepare_arrays(bundle, "SPX", arrays.t_ms, arrays.ohlcv, 35.0, 55.0, no_frame)
        fast_none, slow_none = _both(bundle, doc, ss=None, bs=None)  # built-in rule scores
        _same(fast_none, slow_none)


def test_bars_the_array_path_refuses_get_the_pandas_answer(bundle, sp500_bars):
    bars = sp500_bars.iloc[-300:]
    newest_first = _doc(bars.iloc[::-1])
    bad_price = _doc(bars)
    bad_price["close"][100] = -1.0
    bad_high = _doc(bars)
    bad_high["high"][5] = bad_high["low"][5] / 2
    dup_time = _doc(bars)
    dup_time["t"][50] = dup_time["t"][49]
    too_few = _doc(bars.iloc[-10:])
    for doc in (newest_first, bad_price, bad_high, dup_time, too_few):
        fast, slow = _both(bundle, doc)
        _same(fast, slow)
    fast, slow = _both(bundle, newest_first)
    assert not isinstance(slow, Exception)  # normalised (reversed), not refused
    fast, slow = _both(bundle, bad_price, symbol="X")
    assert isinstance(slow, DataError) and str(slow).startswith("X: ")


def test_finish_is_the_same_on_both_paths(bundle, sp500_bars):
    fast, slow = _both(bundle, _doc(sp500_bars.iloc[-256:]))
    out = np.array([0.4, 0.6, 0.55], np.float32)
    kw = {"device": "cpu", "backend": "onnx", "latency_ms": 1.0}
    (pre,) = with_regime_vols(bundle, [fast])
    assert pre.regime_vol is not None
    a, b = finish(bundle, pre, out, **kw), finish(bundle, slow, out, **kw)
    assert (a.enhanced_ss, a.enhanced_bs, a.ml_info) == (b.enhanced_ss, b.enhanced_bs, b.ml_info)
    many = with_regime_vols(bundle, [fast] * 9)  # the vectorised GARCH pass
    assert {p.regime_vol for p in many} == {pre.regime_vol}


def test_scalar_garch_is_bit_identical_to_the_model(bundle):
    rng = np.random.default_rng(0)
    variants = (
        bundle.garch,
        dataclasses.replace(bundle.garch, alpha=0.3, beta=0.75),  # not stationary
        dataclasses.replace(bundle.garch, lookback=10, horizon=1),
    )
    for params in variants:
        for n in (2, 3, 60, 256, 700):
            for _ in range(40):
                sigma = rng.uniform(0.001, 0.05)
                close = np.exp(np.cumsum(rng.normal(0, sigma, n))) * rng.uniform(0.01, 1e4)
                returns = np.diff(np.log(close))[None, :]  # the vectorised filter
                want = float(garch_forecast_batch(params, returns)[0])
                assert regime_vol(params, close) == want
    with pytest.raises(DataError):
        regime_vol(bundle.garch, np.array([1.0]))


def test_wire_arrays_keep_the_error_messages():
    good = {"t": [1, 2], "open": [1, 2.5], "high": [1, 3], "low": [1, 2], "close": [1, 2],
            "volume": [0, 1]}  # fmt: skip
    arrays = wire.decode_bar_arrays(good, "bars", 10)
    assert arrays.t_ms.dtype == np.int64 and arrays.ohlcv.shape == (2, 5)
    assert arrays.frame().equals(wire.decode_bars(good, "bars", 10))
    cases = {
        "bars.t[1]: must be an integer": {**good, "t": [1, 2.0]},
        "bars.high[0]: must be a number": {**good, "high": [True, 3]},
        "bars.low[1]: must be a number": {**good, "low": [1, "2"]},
        "bars.close: has 1 values but t has 2": {**good, "close": [1]},
        "bars.volume: must be a list of numbers": {**good, "volume": None},
        "bars.t: 2 bars exceed the limit of 1": good,
    }
    for message, doc in cases.items():
        with pytest.raises(WireError) as e:
            wire.decode_bar_arrays(doc, "bars", 1 if "limit" in message else 10)
        assert str(e.value) == message
    with pytest.raises(WireError, match="out of range"):
        wire.decode_bar_arrays({**good, "t": [1, 2**63]}, "bars", 10)
