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
    return MLSignalEnhancer(tiny_bundle, device="cpu")


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
    with pytest.raises(PriceError, match=r"^BAD: row 298 .*high"):
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
    assert info["bull_prob"] == 0.5 and info["kelly"] == 0.0
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
