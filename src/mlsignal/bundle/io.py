"""Bundle layout, atomic writing and verified loading.

A bundle is a directory::

    manifest.json   format version, model version, contract hash, sha256 of every file,
                    training data span, metrics (written last)
    config.json     feature schema, model config, GARCH / Kelly / fusion parameters
    weights.pt      the SignalModel state_dict (device-independent tensors)
    golden.npz      golden input windows and their expected outputs (parity checks)

The *contract hash* covers the weights, the feature schema (names, window, warm-up) and every
parameter in config.json: two bundles with the same contract hash give the same numbers.
Nothing here imports torch; the runtime loads ``weights.pt``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlsignal.errors import (
    BundleError,
    BundleIntegrityError,
    BundleNotFoundError,
    BundleVersionError,
)
from mlsignal.features.schema import FeatureSchema
from mlsignal.models.fusion import FusionConfig
from mlsignal.models.garch import GarchParams
from mlsignal.models.kelly import KellyConfig, KellyParams

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
GOLDEN_FILE = "golden.npz"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, GOLDEN_FILE)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces) for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def contract_hash(file_hashes: Mapping[str, str], config: Mapping[str, Any]) -> str:
    """The hash a client and a server compare: weights + schema + window + all parameters."""
    schema = FeatureSchema.from_dict(config["schema"])
    payload = {
        "weights_sha256": file_hashes[WEIGHTS_FILE],
        "config_sha256": hashlib.sha256(canonical_json(config).encode()).hexdigest(),
        "feature_schema_hash": schema.hash,
        "window": schema.window,
        "warmup": schema.warmup,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk. Parameters are parsed; weights are loaded by a runtime."""

    path: Path
    manifest: dict[str, Any]
    config: dict[str, Any]
    schema: FeatureSchema
    garch: GarchParams
    kelly_params: KellyParams
    kelly_config: KellyConfig
    fusion: FusionConfig
    extra_files: tuple[str, ...] = field(default=())

    @property
    def model_version(self) -> str:
        """Human-readable version, e.g. ``sp500+nasdaq-20261126T081500Z-3f2a9c1d``."""
        return str(self.manifest["model_version"])

    @property
    def contract_hash(self) -> str:
        """sha256 over weights, feature schema, window and parameters."""
        return str(self.manifest["contract_hash"])

    @property
    def min_bars(self) -> int:
        """Fewest bars an enhance call needs: the feature lookback or the GARCH lookback."""
        return max(self.schema.lookback, self.garch.lookback + 1)

    def file(self, name: str) -> Path:
        """Path of one of the bundle's files."""
        return self.path / name


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        with path.open("r", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise BundleIntegrityError(f"{what} {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BundleIntegrityError(f"{what} {path} is not a JSON object")
    return data


def _verify_files(path: Path, manifest: Mapping[str, Any]) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleIntegrityError(f"bundle {path}: manifest has no 'files' table")
    missing_required = [n for n in REQUIRED_FILES if n not in files]
    if missing_required:
        raise BundleIntegrityError(
            f"bundle {path}: manifest lists no {', '.join(missing_required)}"
        )
    for name, expected in files.items():
        f = path / name
        if not f.is_file():
            raise BundleIntegrityError(f"bundle {path} is partial: {name} is missing")
        actual = sha256_file(f)
        if actual != expected:
            raise BundleIntegrityError(
                f"bundle {path}: {name} does not match its sha256 in the manifest "
                f"(expected {expected[:12]}…, found {actual[:12]}…): tampered or corrupt"
            )


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Load and verify a bundle; raise a :class:`BundleError` naming what is wrong."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not path.is_dir():
        raise BundleNotFoundError(f"no bundle at {path}: directory does not exist")
    if not manifest_path.is_file():
        raise BundleNotFoundError(
            f"no bundle at {path}: {MANIFEST_FILE} is missing (not a bundle, or a partial write)"
        )
    manifest = _read_json(manifest_path, "manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleVersionError(
            f"bundle {path} has format version {version!r}; this mlsignal reads {FORMAT_VERSION}"
        )
    _verify_files(path, manifest)
    config = _read_json(path / CONFIG_FILE, "config")
    actual = contract_hash(manifest["files"], config)
    if actual != manifest.get("contract_hash"):
        raise BundleIntegrityError(
            f"bundle {path}: contract hash mismatch (manifest {manifest.get('contract_hash')!r}, "
            f"computed {actual!r})"
        )
    try:
        return Bundle(
            path=path,
            manifest=manifest,
            config=config,
            schema=FeatureSchema.from_dict(config["schema"]),
            garch=GarchParams.from_dict(config["garch"]),
            kelly_params=KellyParams(**config["kelly_params"]),
            kelly_config=KellyConfig(**config["kelly_config"]),
            fusion=FusionConfig(**config["fusion"]),
            extra_files=tuple(n for n in manifest["files"] if n not in REQUIRED_FILES),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise BundleIntegrityError(f"bundle {path}: config.json is incomplete: {e}") from None


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that a rename or a new file in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(path)


def write_bundle(
    out: str | os.PathLike[str],
    files: Mapping[str, Any],
    config: Mapping[str, Any],
    manifest_extra: Mapping[str, Any],
) -> Path:
    """Write a bundle atomically and return its path.

    ``files`` maps file names (at least weights.pt and golden.npz) to a callable that writes
    the file given its path. Everything goes to a hidden temporary sibling directory, is
    fsynced, and only then renamed onto ``out``: a crash mid-write leaves no directory at
    ``out`` that :func:`load_bundle` would accept.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_contents(tmp, files, config, manifest_extra)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_contents(
    tmp: Path, files: Mapping[str, Any], config: Mapping[str, Any], extra: Mapping[str, Any]
) -> None:
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name, writer in files.items():
        writer(tmp / name)
    hashes = {f.name: sha256_file(f) for f in sorted(tmp.iterdir()) if f.is_file()}
    missing = [n for n in REQUIRED_FILES if n not in hashes]
    if missing:
        raise BundleError(f"refusing to write a bundle without {', '.join(missing)}")
    chash = contract_hash(hashes, config)
    manifest = {
        "format_version": FORMAT_VERSION,
        **extra,
        "contract_hash": chash,
        "model_version": f"{extra.get('model_name', 'mlsignal')}-{chash[:12]}",
        "files": hashes,
    }
    _fsync_tree(tmp)
    # The manifest is written last: a directory without it is never taken for a bundle.
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    _fsync_tree(tmp)


def _swap_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
    os.rename(tmp, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    log.info("bundle written to %s", out)
