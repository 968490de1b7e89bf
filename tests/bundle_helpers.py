"""Editing a bundle the way a careless tool would: change files, then re-sign the manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mlsignal.bundle.io import contract_hash, sha256_file


def resign(path: Path) -> dict:
    """Recompute every file hash and the contract hash in ``path``'s manifest; return it."""
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"] = {n: sha256_file(path / n) for n in manifest["files"]}
    config = json.loads((path / "config.json").read_text())
    manifest["contract_hash"] = contract_hash(manifest["files"], config)
    (path / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def other_model(src: Path, dst: Path) -> Path:
    """A valid bundle with another contract hash (a different fusion strength), no training."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["fusion"]["strength"] = 0.25
    (dst / "config.json").write_text(json.dumps(config))
    manifest = resign(dst)
    manifest["model_version"] = "other-" + manifest["contract_hash"][:12]
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def sign_by_hand(path: Path, manifest: dict) -> None:
    """Write ``manifest`` with its contract hash recomputed over its ``files`` as they are."""
    config = json.loads((path / "config.json").read_text())
    manifest["contract_hash"] = contract_hash(manifest["files"], config)
    (path / "manifest.json").write_text(json.dumps(manifest))


def _edit_manifest(path: Path, edit) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def _truncate(path: Path, name: str) -> None:
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[: len(data) // 2])
    resign(path)


def _outside_name(path: Path) -> None:
    outside = path.parent / "outside.txt"
    outside.write_text("a file next to the bundle, not in it\n")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["../outside.txt"] = sha256_file(outside)
    sign_by_hand(path, manifest)


def _format_1(path: Path) -> None:
    """Signed as format 1 did (weights + config only)."""
    manifest = json.loads((path / "manifest.json").read_text())
    if manifest["format_version"] == 1:
        return
    from mlsignal.bundle.io import legacy_contract_hash

    config = json.loads((path / "config.json").read_text())
    manifest["format_version"] = 1
    manifest["contract_hash"] = legacy_contract_hash(manifest["files"], config)
    (path / "manifest.json").write_text(json.dumps(manifest))


#: Ways a bundle on disk can be malformed that a careless tool (or a signer) lets through,
#: each a function damaging the bundle at ``path`` in place: every one must be a one-line
#: BundleError (exit 2 on the CLI, 422 on a reload).
DAMAGES = {
    "manifest-not-utf8": lambda p: (p / "manifest.json").write_bytes(b'{"files": "\xff"}'),
    "sha-not-a-string": lambda p: _edit_manifest(p, lambda m: m["files"].update(
        {"golden.npz": 1234})),
    "no-model-version": lambda p: _edit_manifest(p, lambda m: m.pop("model_version")),
    "corrupt-golden": lambda p: _truncate(p, "golden.npz"),
    "corrupt-weights": lambda p: _truncate(p, "weights.pt"),
    "name-outside": _outside_name,
    "format-1": _format_1,
}  # fmt: skip
