"""What a bundle's contract hash covers, and every malformed bundle as one BundleError line.

Each damaged bundle is re-signed the way a careless tool would (file hashes and contract hash
recomputed, :func:`bundle_helpers.resign`), so only the new checks stand between it and a
server.
"""

from __future__ import annotations

import datetime
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bundle_helpers import resign
from mlsignal.bundle import io as bundle_io
from mlsignal.bundle import load_bundle
from mlsignal.bundle.io import contract_hash, sha256_file
from mlsignal.errors import BundleError, BundleIntegrityError, BundleVersionError, ParityError
from mlsignal.runtime.torch_runtime import TorchRuntime


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _write_manifest(path: Path, manifest: dict) -> None:
    (path / "manifest.json").write_text(json.dumps(manifest))


def _refused(path: Path, match: str) -> str:
    """load_bundle's error: a BundleError, one line, matching ``match``."""
    with pytest.raises(BundleError, match=match) as info:
        load_bundle(path)
    assert "\n" not in str(info.value)
    return str(info.value)


# --- the contract hash covers every file ------------------------------------------------------
@pytest.mark.parametrize("name", ["golden.npz", "model.onnx"])
def test_every_file_changes_the_contract_hash(bundle_copy, name):
    files = _manifest(bundle_copy)["files"]
    config = json.loads((bundle_copy / "config.json").read_text())
    changed = {**files, name: "0" * 64}
    assert contract_hash(changed, config) != contract_hash(files, config)


def test_the_old_rule_left_onnx_and_golden_out(bundle_copy):
    # What format 1 signed: swapping these files kept the hash (the attack of issue 13).
    files = _manifest(bundle_copy)["files"]
    config = json.loads((bundle_copy / "config.json").read_text())
    for name in ("golden.npz", "model.onnx"):
        changed = {**files, name: "0" * 64}
        assert bundle_io.legacy_contract_hash(changed, config) == bundle_io.legacy_contract_hash(
            files, config
        )


def test_a_swapped_golden_file_gets_a_new_contract_hash(bundle_copy):
    before = load_bundle(bundle_copy).contract_hash
    with np.load(bundle_copy / "golden.npz") as g:
        inputs, expected = g["inputs"], g["expected"]
    with open(bundle_copy / "golden.npz", "wb") as f:
        np.savez(f, inputs=inputs[:4], expected=expected[:4])
    _refused(bundle_copy, "golden.npz does not match its sha256")
    manifest = _manifest(bundle_copy)
    manifest["files"]["golden.npz"] = sha256_file(bundle_copy / "golden.npz")
    _write_manifest(bundle_copy, manifest)
    _refused(bundle_copy, "contract hash mismatch")  # file hash updated, contract not
    resign(bundle_copy)
    assert load_bundle(bundle_copy).contract_hash != before  # a pin catches it


def test_export_into_a_bundle_gives_a_new_contract_hash_and_version(bundle_copy):
    from mlsignal.onnx_export import export_onnx

    manifest = _manifest(bundle_copy)
    del manifest["files"]["model.onnx"], manifest["onnx"]
    _write_manifest(bundle_copy, manifest)
    (bundle_copy / "model.onnx").unlink()
    resign(bundle_copy)
    without = load_bundle(bundle_copy)
    export_onnx(bundle_copy)
    exported = load_bundle(bundle_copy)
    assert exported.contract_hash != without.contract_hash
    assert exported.model_version == f"sp500-{exported.contract_hash[:12]}"
    assert exported.manifest["format_version"] == 2
    export_onnx(bundle_copy)  # the same weights export to the same bytes: the same hash
    assert load_bundle(bundle_copy).contract_hash == exported.contract_hash


# --- format 1 -------------------------------------------------------------------------------
def _as_format_1(path: Path) -> dict:
    """Re-sign ``path`` as format 1 wrote it (contract over weights + config only)."""
    manifest = _manifest(path)
    config = json.loads((path / "config.json").read_text())
    manifest["format_version"] = 1
    manifest["contract_hash"] = bundle_io.legacy_contract_hash(manifest["files"], config)
    manifest["model_version"] = f"sp500-{manifest['contract_hash'][:12]}"
    _write_manifest(path, manifest)
    return manifest


def test_a_format_1_bundle_is_refused_with_the_way_to_upgrade(bundle_copy):
    _as_format_1(bundle_copy)
    message = _refused(bundle_copy, "format version 1, whose contract hash does not cover")
    assert f"mlsignal export-onnx --bundle {bundle_copy}" in message
    with pytest.raises(BundleVersionError):
        load_bundle(bundle_copy)


def test_export_onnx_upgrades_a_format_1_bundle(bundle_copy):
    from mlsignal.onnx_export import export_onnx

    old = _as_format_1(bundle_copy)
    export_onnx(bundle_copy)
    upgraded = load_bundle(bundle_copy)
    assert upgraded.manifest["format_version"] == 2
    assert upgraded.contract_hash != old["contract_hash"]
    assert upgraded.model_version != old["model_version"]


def test_upgrade_refuses_a_golden_file_of_other_weights(bundle_copy):
    # Format 1 never signed golden.npz: the upgrade checks it against the weights first.
    from mlsignal.onnx_export import export_onnx

    with np.load(bundle_copy / "golden.npz") as g:
        inputs, expected = g["inputs"], g["expected"] + 0.01
    with open(bundle_copy / "golden.npz", "wb") as f:
        np.savez(f, inputs=inputs, expected=expected)
    resign(bundle_copy)
    _as_format_1(bundle_copy)
    before = (bundle_copy / "manifest.json").read_bytes()
    with pytest.raises(ParityError, match=r"weights\.pt does not give the golden outputs"):
        export_onnx(bundle_copy)
    assert (bundle_copy / "manifest.json").read_bytes() == before  # nothing installed


# --- manifest paths stay inside the bundle ----------------------------------------------------
@pytest.mark.parametrize("name", ["../../etc/hostname", "/etc/hostname", "./config.json", "a//b"])
def test_manifest_names_outside_the_bundle_are_refused(bundle_copy, name):
    # Signed as a tool would sign it (today such a name is read and hashed).
    manifest = _manifest(bundle_copy)
    manifest["files"][name] = "0" * 64
    config = json.loads((bundle_copy / "config.json").read_text())
    manifest["contract_hash"] = contract_hash(manifest["files"], config)
    _write_manifest(bundle_copy, manifest)
    _refused(bundle_copy, "is not a plain relative path inside the bundle")


def test_a_symlink_leading_outside_is_refused(bundle_copy, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    os.symlink(outside, bundle_copy / "notes.txt")
    manifest = _manifest(bundle_copy)
    manifest["files"]["notes.txt"] = sha256_file(outside)
    _write_manifest(bundle_copy, manifest)
    resign(bundle_copy)
    _refused(bundle_copy, r"notes\.txt is a link that leads outside the bundle")


def test_a_symlinked_weights_file_outside_is_refused(bundle_copy, tmp_path):
    (tmp_path / "weights.pt").write_bytes((bundle_copy / "weights.pt").read_bytes())
    (bundle_copy / "weights.pt").unlink()
    os.symlink(tmp_path / "weights.pt", bundle_copy / "weights.pt")
    _refused(bundle_copy, r"weights\.pt is a link that leads outside the bundle")


def test_a_symlink_inside_the_bundle_is_fine(bundle_copy):
    os.symlink("config.json", bundle_copy / "config-alias.json")
    manifest = _manifest(bundle_copy)
    manifest["files"]["config-alias.json"] = sha256_file(bundle_copy / "config.json")
    _write_manifest(bundle_copy, manifest)
    resign(bundle_copy)
    assert "config-alias.json" in load_bundle(bundle_copy).extra_files


# --- malformed manifests ------------------------------------------------------------------------
def test_a_manifest_that_is_not_utf8(bundle_copy):
    (bundle_copy / "manifest.json").write_bytes(b'{"format_version": 2, "x": "\xff\xfe"}')
    _refused(bundle_copy, r"manifest .* is not UTF-8 text")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m["files"].update({"golden.npz": 12345}), r"sha256 of 'golden.npz' must be 64"),
        (lambda m: m["files"].update({"weights.pt": ["a"]}), r"sha256 of 'weights.pt' must be 64"),
        (lambda m: m.pop("model_version"), "model_version must be a non-empty string, got missing"),
        (lambda m: m.update(model_version=7), "model_version must be a non-empty string, got int"),
        (lambda m: m.update(contract_hash=None), "contract_hash must be a non-empty string"),
    ],
    ids=["sha-int", "sha-list", "no-version", "version-int", "no-hash"],
)
def test_malformed_manifest_fields(bundle_copy, edit, match):
    manifest = _manifest(bundle_copy)
    edit(manifest)
    _write_manifest(bundle_copy, manifest)
    _refused(bundle_copy, match)


# --- malformed files with consistent hashes ------------------------------------------------------
def test_a_corrupt_golden_file_with_consistent_hashes(bundle_copy):
    (bundle_copy / "golden.npz").write_bytes(b"PK\x03\x04 not really a zip" * 10)
    resign(bundle_copy)
    _refused(bundle_copy, r"golden\.npz cannot be read \(")


def test_a_golden_file_of_the_wrong_shape(bundle_copy):
    with open(bundle_copy / "golden.npz", "wb") as f:
        np.savez(f, inputs=np.zeros((2, 3, 4), np.float32), expected=np.zeros((2, 3)))
    resign(bundle_copy)
    _refused(bundle_copy, r"golden\.npz holds inputs \[2, 3, 4\]")


def test_a_golden_file_with_pickled_objects(bundle_copy):
    with open(bundle_copy / "golden.npz", "wb") as f:
        np.savez(f, inputs=np.array([{"x": 1}], dtype=object), expected=np.zeros((1, 3)))
    resign(bundle_copy)
    _refused(bundle_copy, r"golden\.npz cannot be read \(ValueError")


def test_a_truncated_weights_file_with_consistent_hashes(bundle_copy):
    data = (bundle_copy / "weights.pt").read_bytes()
    (bundle_copy / "weights.pt").write_bytes(data[: len(data) // 2])
    resign(bundle_copy)
    _refused(bundle_copy, r"weights\.pt is not a readable torch archive")


def _weights_archive(path: Path, pickled: bytes) -> None:
    """``weights.pt`` as a well-formed zip holding ``pickled`` as its data.pkl, re-signed."""
    with zipfile.ZipFile(path / "weights.pt", "w") as z:
        z.writestr("weights/data.pkl", pickled)
        z.writestr("weights/version", b"3\n")
    resign(path)


def test_a_weights_archive_with_a_corrupt_pickle(bundle_copy):
    _weights_archive(bundle_copy, b"\x80\x02garbage")  # zip checksums hold
    _refused(bundle_copy, r"weights\.pt holds a corrupt pickle \(")


def test_a_weights_pickle_that_torch_refuses(bundle_copy):
    # Well-formed, but not tensors (weights_only refuses the class): the torch runtime says
    # so in one line.
    _weights_archive(bundle_copy, pickle.dumps({"x": datetime.date(2020, 1, 2)}, protocol=2))
    bundle = load_bundle(bundle_copy)
    with pytest.raises(BundleIntegrityError, match=r"weights\.pt cannot be loaded \(") as info:
        TorchRuntime(bundle, "cpu")
    assert "\n" not in str(info.value)


def test_a_config_without_schema_with_consistent_hashes(bundle_copy):
    config = json.loads((bundle_copy / "config.json").read_text())
    del config["schema"]
    (bundle_copy / "config.json").write_text(json.dumps(config))
    manifest = _manifest(bundle_copy)
    manifest["files"]["config.json"] = sha256_file(bundle_copy / "config.json")
    _write_manifest(bundle_copy, manifest)
    _refused(bundle_copy, r"config\.json is incomplete: KeyError\('schema'\)")


def test_a_config_that_is_not_utf8_with_consistent_hashes(bundle_copy):
    (bundle_copy / "config.json").write_bytes(b"\xff\xfe{}")
    manifest = _manifest(bundle_copy)
    manifest["files"]["config.json"] = sha256_file(bundle_copy / "config.json")
    _write_manifest(bundle_copy, manifest)
    _refused(bundle_copy, r"config .* is not UTF-8 text")
