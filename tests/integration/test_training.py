"""Real training runs of the `tiny` preset (tens of seconds each)."""

from __future__ import annotations

import json

import pytest

from mlsignal.bundle import load_bundle
from mlsignal.cli.main import main
from mlsignal.training.presets import get_preset


def _neutrality(bundle_path) -> tuple[float, float]:
    """Mean |enhanced - raw| (score points, ss and bs) and the flat-Kelly share over 300
    bars of each sample from 2004..2012, before the tiny preset's training spans (2013..)."""
    import numpy as np

    from mlsignal.data import load_sample
    from mlsignal.enhancer import MLSignalEnhancer
    from mlsignal.evaluate.scoring import score_bars

    enhancer = MLSignalEnhancer(bundle_path, device="cpu", remote_urls=())
    frames = []
    for name in ("sp500", "nasdaq"):
        bars = load_sample(name)
        ends = np.flatnonzero((bars.index >= "2004-01-01") & (bars.index < "2013-01-01"))
        frames.append(score_bars(enhancer, name, bars, ends[:: len(ends) // 300], 128))
    change = [
        np.abs(f["enhanced_bs"] - f["bs"]).mean() + np.abs(f["enhanced_ss"] - f["ss"]).mean()
        for f in frames
    ]
    flat = [(f["kelly_side"] == "flat").mean() for f in frames]
    return float(np.mean(change) / 2), float(np.mean(flat))


@pytest.mark.slow
def test_shuffled_labels_show_no_skill(tmp_path, capsys):
    """The leakage guard: with permuted labels, out-of-sample AUC must be near 0.5. (Trained
    as docs/study/README.md's shuffled bundle: the last 1,000 bars held out.)"""
    import pandas as pd

    from mlsignal.data import load_sample

    out = tmp_path / "shuffled"
    argv = ["train", "--data", "sp500,nasdaq", "--out", str(out), "--preset", "tiny",
            "--device", "cpu", "--shuffle-labels", "--holdout-bars", "1000", "--no-progress",
            "--no-onnx"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "stack" in printed and "auc" in printed
    b = load_bundle(out)
    assert b.manifest["training"]["shuffled_labels"] is True
    assert b.manifest["training"]["holdout_bars"] == 1000
    last_trained = pd.Timestamp(b.manifest["training"]["span"][1])
    for name in ("sp500", "nasdaq"):
        assert last_trained < load_sample(name).index[-1000], "a held-out bar was trained on"
    for model, m in b.manifest["metrics"].items():
        assert abs(m["auc"] - 0.5) < 0.06, f"{model} shows skill on shuffled labels: {m}"
        assert m["n"] > 500
    assert b.manifest["verdict"]["verdict"] != "skill"
    assert "verdict" in printed and b.manifest["verdict"]["verdict"].upper() in printed
    # Neutral fusion: a model without skill leaves the scores and Kelly alone.
    change, flat = _neutrality(out)
    assert change < 0.5 and flat >= 0.95, (change, flat)


@pytest.mark.slow
def test_a_real_bundle_without_detected_skill_is_neutral(tiny_bundle):
    b = load_bundle(tiny_bundle)
    assert b.manifest["verdict"]["verdict"] in ("no skill detected", "worse than base rate")
    cal = b.manifest["training"]["calibration"]
    assert cal["skilled"] is False and b.fusion.base_rate == cal["base_rate"]
    change, flat = _neutrality(tiny_bundle)
    assert change < 0.5 and flat >= 0.95, (change, flat)


def test_folds_respect_horizon_and_embargo(tiny_bundle):
    """From the fold boundaries in the manifest: every training label ends more than the
    preset's embargo before its fold's test period (purge + embargo fed to the splitter)."""
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    preset = get_preset("tiny")
    h, embargo = preset.labels.horizon, preset.embargo
    assert embargo > 0 and len(manifest["training"]["folds"]) == preset.n_folds
    for f in manifest["training"]["folds"]:
        assert f["train_label_end_pos"] < f["test_first_pos"] - embargo, f
        assert f["test_first_pos"] - f["train_last_sample_pos"] > h + embargo, f
        assert f["train_last_sample"] < f["test_first"]


def test_calibration_segment_is_disjoint_from_the_shipped_models(tiny_bundle):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    preset = get_preset("tiny")
    cal = manifest["training"]["calibration"]
    seg, final = cal["segment"], cal["final_models"]
    assert final["label_end_pos"] < seg["first_pos"] - preset.embargo
    assert final["last_sample"] < seg["first"] and seg["n"] > 100
    assert cal["skill_test"]["method"].startswith("block permutation")
    assert all(w >= 0 for w in cal["stack"]["w"])


@pytest.mark.slow
def test_training_is_deterministic_for_a_seed_on_cpu(tiny_bundle, tmp_path):
    from mlsignal.training.pipeline import train_bundle

    # model.onnx too: the contract hash covers it, so its export must be deterministic.
    again = train_bundle("sp500", tmp_path / "again", preset="tiny", device="cpu", seed=0,
                         progress=False)  # fmt: skip
    first = load_bundle(tiny_bundle)
    assert again.contract_hash == first.contract_hash
    assert load_bundle(again.path).manifest["files"] == first.manifest["files"]
    assert again.metrics == first.manifest["metrics"]


def test_metrics_and_span_are_recorded(tiny_bundle):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    t = manifest["training"]
    assert t["preset"]["name"] == "tiny" and t["seed"] == 0 and t["device"] == "cpu"
    assert t["span"][1].startswith("2018-12")
    assert set(manifest["metrics"]) == {"lstm", "tft", "stack", "logistic", "boosting"}
    assert all("ic" in m for m in manifest["metrics"].values())
    assert manifest["verdict"]["verdict"] in ("skill", "no skill detected", "worse than base rate")
    config = json.loads((tiny_bundle / "config.json").read_text())
    assert config["timeframe"] == {"bar_seconds": 86400.0, "name": "1d"}
