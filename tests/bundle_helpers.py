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
