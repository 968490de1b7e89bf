"""Real training runs of the `tiny` preset (tens of seconds each)."""

from __future__ import annotations

import json

import pytest

from mlsignal.bundle import load_bundle
from mlsignal.cli.main import main


@pytest.mark.slow
def test_shuffled_labels_show_no_skill(tmp_path, capsys):
    """The leakage guard: with permuted labels, out-of-sample AUC must be near 0.5."""
    out = tmp_path / "shuffled"
    argv = ["train", "--data", "sp500,nasdaq", "--out", str(out), "--preset", "tiny",
            "--device", "cpu", "--shuffle-labels", "--no-progress", "--no-onnx"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "stack" in printed and "auc" in printed
    b = load_bundle(out)
    assert b.manifest["training"]["shuffled_labels"] is True
    for model, m in b.manifest["metrics"].items():
        assert abs(m["auc"] - 0.5) < 0.06, f"{model} shows skill on shuffled labels: {m}"
        assert m["n"] > 500


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
    assert set(manifest["metrics"]) == {"lstm", "tft", "stack"}
