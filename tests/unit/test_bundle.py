from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bundle_helpers import resign
from mlsignal.bundle import load_bundle, write_bundle
from mlsignal.bundle.io import sha256_file
from mlsignal.errors import (
    BundleError,
    BundleIntegrityError,
    BundleNotFoundError,
    BundleVersionError,
    ParityError,
)
from mlsignal.runtime import load_runtime


def test_loads_and_describes_itself(tiny_bundle):
    b = load_bundle(tiny_bundle)
    assert len(b.contract_hash) == 64
    assert b.model_version.startswith("sp500-") and b.contract_hash[:12] in b.model_version
    assert b.min_bars >= b.schema.lookback
    training = b.manifest["training"]
    assert training["symbols"] == ["sp500"] and training["span"][0] < training["span"][1]
    for model in ("lstm", "tft", "stack"):
        assert {"auc", "brier", "log_loss", "hit_rate"} <= set(b.manifest["metrics"][model])


def test_missing_directory_and_missing_manifest(tmp_path, bundle_copy):
    with pytest.raises(BundleNotFoundError, match="directory does not exist"):
        load_bundle(tmp_path / "nope")
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleNotFoundError, match=r"manifest.json is missing .*partial write"):
        load_bundle(bundle_copy)


def test_tampered_weights_are_refused(bundle_copy):
    data = bytearray((bundle_copy / "weights.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle_copy / "weights.pt").write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match=r"weights\.pt does not match its sha256"):
        load_bundle(bundle_copy)


def test_partial_bundle_is_refused(bundle_copy):
    (bundle_copy / "golden.npz").unlink()
    with pytest.raises(BundleIntegrityError, match=r"is partial: golden\.npz is missing"):
        load_bundle(bundle_copy)


def test_edited_parameters_break_the_contract(bundle_copy):
    config = json.loads((bundle_copy / "config.json").read_text())
    config["kelly_config"]["cap"] = 0.9
    (bundle_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleIntegrityError, match=r"config\.json does not match"):
        load_bundle(bundle_copy)
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["files"]["config.json"] = sha256_file(bundle_copy / "config.json")
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleIntegrityError, match="contract hash mismatch"):
        load_bundle(bundle_copy)


def test_unknown_format_version(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleVersionError, match="format version 99"):
        load_bundle(bundle_copy)


def test_garbled_manifest(bundle_copy):
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleIntegrityError, match="not valid JSON"):
        load_bundle(bundle_copy)


def test_runtime_reproduces_golden_outputs_exactly_on_cpu(tiny_bundle):
    b = load_bundle(tiny_bundle)
    rt = load_runtime(b, "cpu")
    with np.load(b.file("golden.npz")) as g:
        out = rt.predict(g["inputs"])
        assert out.shape == g["expected"].shape
        assert np.abs(out - g["expected"]).max() < 1e-6


def test_parity_gate_refuses_drift(bundle_copy):
    with np.load(bundle_copy / "golden.npz") as g:
        inputs, expected = g["inputs"], g["expected"].copy()
    expected[3, 2] += 1e-3
    np.savez(bundle_copy / "golden.npz", inputs=inputs, expected=expected)
    resign(bundle_copy)
    with pytest.raises(ParityError, match=r"torch on cpu drifts .*\(bull_prob 0\.001\)"):
        load_runtime(load_bundle(bundle_copy), "cpu", "torch")
    with pytest.raises(ParityError, match=r"onnx on cpu drifts .*\(bull_prob 0\.001\)"):
        load_runtime(load_bundle(bundle_copy), "cpu", "onnx")


def _writers(src: Path, fail_on: str | None = None):
    def copy(name):
        def write(dst: Path) -> None:
            if name == fail_on:
                dst.write_bytes(b"half")
                raise OSError("disk full")
            shutil.copyfile(src / name, dst)

        return write

    return {n: copy(n) for n in ("weights.pt", "golden.npz")}


def test_write_is_atomic_a_crash_leaves_no_bundle(tiny_bundle, tmp_path):
    config = json.loads((tiny_bundle / "config.json").read_text())
    out = tmp_path / "b"
    with pytest.raises(OSError, match="disk full"):
        write_bundle(out, _writers(tiny_bundle, fail_on="golden.npz"), config, {})
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_old_bundle(tiny_bundle, tmp_path):
    config = json.loads((tiny_bundle / "config.json").read_text())
    out = write_bundle(tmp_path / "b", _writers(tiny_bundle), config, {"model_name": "x"})
    before = load_bundle(out).contract_hash
    with pytest.raises(OSError):
        write_bundle(out, _writers(tiny_bundle, fail_on="weights.pt"), config, {})
    assert load_bundle(out).contract_hash == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_write_refuses_a_bundle_without_weights(tiny_bundle, tmp_path):
    config = json.loads((tiny_bundle / "config.json").read_text())
    writers = _writers(tiny_bundle)
    del writers["weights.pt"]
    with pytest.raises(BundleError, match=r"without weights\.pt"):
        write_bundle(tmp_path / "b", writers, config, {})
    assert list(tmp_path.iterdir()) == []
