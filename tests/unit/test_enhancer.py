from __future__ import annotations

import numpy as np
import pytest
import torch

from mlsignal.enhancer import MLSignalEnhancer, SignalRequest
from mlsignal.errors import (
    ConfigError,
    DataError,
    DeviceUnavailableError,
    InsufficientDataError,
    MissingColumnError,
    PriceError,
    TimestampError,
)

DESIGN_KEYS = {
    "bull_prob", "regime_vol", "regime", "kelly", "model_version", "source",
    "device", "backend", "latency_ms", "bar_ts",
}  # fmt: skip


@pytest.fixture(scope="module")
def enhancer(tiny_bundle):
    return MLSignalEnhancer(tiny_bundle, device="cpu", backend="torch")


def test_auto_backend_on_cpu_is_onnx_when_the_bundle_has_model_onnx(tiny_bundle, monkeypatch):
    monkeypatch.delenv("ML_INFERENCE_BACKEND", raising=False)
    assert (tiny_bundle / "model.onnx").is_file()  # training exports it
    assert MLSignalEnhancer(tiny_bundle, device="cpu").runtime.backend == "onnx"


def test_enhance_signal_returns_bounded_scores_and_full_ml_info(enhancer, sp500_bars):
    ess, ebs, info = enhancer.enhance_signal(sp500_bars, 40.0, 70.0)
    assert set(info) >= DESIGN_KEYS and info["fallback_reason"] is None
    assert info["endpoint"] is None and info["attempts"] == 0
    assert 0.0 <= ess <= 100.0 and 0.0 <= ebs <= 100.0
    assert 0.0 < info["bull_prob"] < 1.0 and info["regime"] in ("low", "normal", "high")
    assert 0.0 <= info["kelly"] <= 0.25 and info["regime_vol"] > 0
    assert info["source"] == "local" and info["device"] == "cpu" and info["backend"] == "torch"
    assert info["bar_ts"] == "2018-12-31T00:00:00"
    assert info["model_version"] == enhancer.bundle.model_version
    # the fusion direction: a bullish model raises bs and damps ss, and the reverse
    if info["bull_prob"] > 0.5:
        assert ebs >= 70.0 and ess <= 40.0
    else:
        assert ebs <= 70.0 and ess >= 40.0


def test_result_depends_only_on_the_last_min_bars(enhancer, sp500_bars):
    a = enhancer.enhance_signal(sp500_bars, 10, 20)
    b = enhancer.enhance_signal(sp500_bars.iloc[-enhancer.min_bars :], 10, 20)
    assert a[:2] == b[:2]
    assert a[2]["bull_prob"] == b[2]["bull_prob"] and a[2]["regime_vol"] == b[2]["regime_vol"]


def test_raw_user_frame_is_accepted(enhancer, sp500_bars):
    raw = sp500_bars.reset_index().rename(columns=str.capitalize)  # Timestamp, Open, ...
    raw = raw.rename(columns={"Timestamp": "Date"})
    assert enhancer.enhance_signal(raw, 5, 5)[:2] == enhancer.enhance_signal(sp500_bars, 5, 5)[:2]


def test_rule_scores_are_used_when_none_are_given(enhancer, sp500_bars):
    from mlsignal.rules import last_rule_scores

    _, _, info = enhancer.enhance_signal(sp500_bars)
    ss, bs = last_rule_scores(sp500_bars.iloc[-enhancer.min_bars :])
    assert (info["rule_ss"], info["rule_bs"]) == pytest.approx((ss, bs))


def test_batch_matches_single_calls(enhancer, sp500_bars):
    ends = [len(sp500_bars) - k for k in (1, 20, 300)]
    reqs = [SignalRequest(f"s{e}", sp500_bars.iloc[:e], 30.0, 60.0) for e in ends]
    batch = enhancer.enhance_batch(reqs)
    assert [r.symbol for r in batch] == [r.symbol for r in reqs]
    for req, res in zip(reqs, batch, strict=True):
        ess, ebs, info = enhancer.enhance_signal(req.bars, req.ss, req.bs)
        assert res.ml_info["bull_prob"] == pytest.approx(info["bull_prob"], abs=1e-6)
        assert (res.enhanced_ss, res.enhanced_bs) == pytest.approx((ess, ebs), abs=1e-4)
    assert enhancer.enhance_batch([]) == []


def test_a_bad_symbol_in_a_batch_is_named(enhancer, sp500_bars):
    bad = sp500_bars.iloc[-300:].copy()
    bad.iloc[-2, bad.columns.get_loc("high")] = -1.0
    reqs = [SignalRequest("GOOD", sp500_bars, 1, 1), SignalRequest("BAD", bad, 1, 1)]
    with pytest.raises(PriceError, match=r"^BAD: row 299 .*high"):
        enhancer.enhance_batch(reqs)


def test_too_few_bars(enhancer, sp500_bars):
    with pytest.raises(
        InsufficientDataError,
        match=rf"100 bars given; the model needs at least {enhancer.min_bars}",
    ):
        enhancer.enhance_signal(sp500_bars.iloc[-100:], 1, 1)


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (
            lambda d: d.assign(close=d["close"].where(d.index != d.index[-3], np.nan)),
            PriceError,
            "close",
        ),
        (lambda d: d.drop(columns="volume"), MissingColumnError, "volume"),
        (lambda d: d.iloc[::-1].iloc[[*range(1, len(d)), 0]], TimestampError, "row"),
        (
            lambda d: d.assign(low=d["low"].where(d.index != d.index[-1], d["high"] * 2)),
            PriceError,
            "low",
        ),
    ],
)
def test_bad_bars_raise_named_errors(enhancer, sp500_bars, mutate, error, message):
    bars = mutate(sp500_bars.iloc[-400:].copy())
    with pytest.raises(error, match=message):
        enhancer.enhance_signal(bars, 1, 1)


@pytest.mark.parametrize(
    ("ss", "bs", "message"),
    [
        (101, 5, "ss must be"),
        (5, -1, "bs must be"),
        (float("nan"), 5, "ss must be"),
        ("x", 5, "ss must be"),
    ],
)
def test_bad_scores(enhancer, sp500_bars, ss, bs, message):
    with pytest.raises(DataError, match=message):
        enhancer.enhance_signal(sp500_bars, ss, bs)


class _BrokenRuntime:
    """A runtime whose device fails (as a lost GPU would), at the runtime swap point."""

    backend = "torch"
    device = "cuda:0"

    def __init__(self, bundle):
        self.bundle = bundle

    def predict(self, windows):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_a_failing_runtime_degrades_to_rule_scores(tiny_bundle, sp500_bars, caplog):
    enh = MLSignalEnhancer(tiny_bundle, device="cpu")
    enh.runtime = _BrokenRuntime(enh.bundle)
    for _ in range(3):
        ess, ebs, info = enh.enhance_signal(sp500_bars, 33.0, 44.0)
    assert (ess, ebs) == (33.0, 44.0)
    assert info["source"] == "rules" and "illegal memory access" in info["fallback_reason"]
    assert info["bull_prob"] == info["base_rate"] and info["kelly"] == 0.0  # no information
    errors = [r for r in caplog.records if "returning rule scores" in r.getMessage()]
    assert len(errors) == 1  # logged once per state change, not once per bar


def test_no_bundle_is_a_config_error(monkeypatch):
    monkeypatch.delenv("MLSIGNAL_BUNDLE", raising=False)
    with pytest.raises(ConfigError, match="no bundle given"):
        MLSignalEnhancer()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_without_cuda_fails_at_construction(tiny_bundle, monkeypatch):
    monkeypatch.setenv("ML_INFERENCE_DEVICE", "cuda")
    with pytest.raises(DeviceUnavailableError, match="ML_INFERENCE_DEVICE='cuda' asks for CUDA"):
        MLSignalEnhancer(tiny_bundle)


def test_onnx_backend_matches_torch(tiny_bundle, enhancer, sp500_bars):
    onnx = MLSignalEnhancer(tiny_bundle, device="cpu", backend="onnx")
    _, _, a = onnx.enhance_signal(sp500_bars, 30, 60)
    _, _, b = enhancer.enhance_signal(sp500_bars, 30, 60)
    assert a["backend"] == "onnx" and b["backend"] == "torch"
    assert abs(a["bull_prob"] - b["bull_prob"]) < 1e-5


def test_unknown_backend_is_a_config_error(tiny_bundle):
    with pytest.raises(ConfigError, match="'tensorrt' is not a backend"):
        MLSignalEnhancer(tiny_bundle, device="cpu", backend="tensorrt")


# --- streaming: enhance_signal on one more bar, enhance_bar ---------------------------------
def _same(a, b):
    """Two enhance results equal except for latency_ms."""
    ia, ib = dict(a[2]), dict(b[2])
    ia.pop("latency_ms"), ib.pop("latency_ms")
    return a[:2] == b[:2] and ia == ib


@pytest.fixture(scope="module")
def full_path(tiny_bundle):
    return MLSignalEnhancer(tiny_bundle, device="cpu", backend="torch", streaming=False)


def test_streaming_enhance_signal_and_enhance_bar_equal_the_full_path(
    tiny_bundle, full_path, sp500_bars
):
    live = MLSignalEnhancer(tiny_bundle, device="cpu", backend="torch")
    bars_live = MLSignalEnhancer(tiny_bundle, device="cpu", backend="torch")
    start = len(sp500_bars) - 120
    bars_live.seed("SPX", sp500_bars.iloc[:start])
    taken = 0
    for t in range(start, len(sp500_bars)):
        df = sp500_bars.iloc[t - 399 : t + 1]
        ss, bs = (None, None) if t % 3 else (35.0, 65.0)  # rule scores and given scores
        followed = live._follows(df) if t > start else False  # appends the bar when True
        taken += followed
        expected = full_path.enhance_signal(df, ss, bs)
        assert _same(live.enhance_signal(df, ss, bs), expected), t
        bar = sp500_bars.iloc[t]
        assert _same(bars_live.enhance_bar("SPX", bar, ss, bs), expected), t
    assert taken == 119  # every call after the first took the stream


def test_enhance_signal_falls_back_to_the_full_path_when_bars_do_not_follow(
    tiny_bundle, full_path, sp500_bars
):
    live = MLSignalEnhancer(tiny_bundle, device="cpu", backend="torch")
    n = len(sp500_bars)
    live.enhance_signal(sp500_bars.iloc[: n - 10], 30, 60)
    same = sp500_bars.iloc[: n - 10]
    assert live._follows(same)  # the same bars again: no new bar, the stream as it is
    edited = sp500_bars.iloc[: n - 9].copy()
    edited.iloc[-50, edited.columns.get_loc("volume")] += 1.0  # an old bar changed
    assert not live._follows(edited)
    assert not live._follows(sp500_bars.iloc[: n - 8])  # two new bars
    assert not live._follows(sp500_bars.iloc[: n - 9].rename(columns=str.upper))  # raw frame
    assert not live._follows(sp500_bars.iloc[: n - 9].astype({"volume": "float32"}))
    for df in (edited, sp500_bars.iloc[: n - 7], sp500_bars.iloc[: n - 6]):
        assert _same(live.enhance_signal(df, 30, 60), full_path.enhance_signal(df, 30, 60))


def test_a_bad_new_bar_raises_the_full_paths_error(tiny_bundle, sp500_bars):
    live = MLSignalEnhancer(tiny_bundle, device="cpu")
    live.enhance_signal(sp500_bars.iloc[:-1], 30, 60)
    bad = sp500_bars.copy()
    bad.iloc[-1, bad.columns.get_loc("high")] = 1.0
    with pytest.raises(PriceError, match=rf"^row {len(bad)} \(2018-12-31 00:00:00\): high"):
        live.enhance_signal(bad, 30, 60)


def test_enhance_bar_errors_and_atomic_batches(tiny_bundle, sp500_bars):
    live = MLSignalEnhancer(tiny_bundle, device="cpu")
    live.seed("A", sp500_bars.iloc[:-2])
    live.seed("B", sp500_bars.iloc[:-2])
    with pytest.raises(InsufficientDataError, match=r"^C: 1 bars held; the model needs"):
        live.enhance_bar("C", sp500_bars.iloc[0])
    good, bad = sp500_bars.iloc[-2], sp500_bars.iloc[-2].copy()
    bad["low"] = bad["high"] * 2
    with pytest.raises(PriceError, match=r"^B: bar 2018-12-28 00:00:00: low"):
        live.enhance_bars({"A": good, "B": bad})
    assert live.streams["A"].last_timestamp == sp500_bars.index[-3]  # nothing was added
    with pytest.raises(DataError, match=r"^A: ss must be"):
        live.enhance_bar("A", good, ss=150.0)
    results = live.enhance_bars({"A": sp500_bars.iloc[-1], "B": good}, {"B": (10.0, 20.0)})
    assert [r.symbol for r in results] == ["A", "B"]
    assert results[1].ml_info["rule_ss"] == 10.0
    assert results[0].ml_info["bar_ts"] == "2018-12-31T00:00:00"
