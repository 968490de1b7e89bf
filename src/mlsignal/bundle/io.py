"""Bundle layout, atomic writing and verified loading.

A bundle is a directory::

    manifest.json   format version, model version, contract hash, sha256 of every file,
                    training data span, metrics (written last)
    config.json     feature schema, model config, GARCH / Kelly / fusion parameters
    weights.pt      the SignalModel state_dict (device-independent tensors), calibration included
    golden.npz      golden input windows and their expected outputs (parity checks)
    model.onnx      the exported graph (optional; ``mlsignal export-onnx``)

The *contract hash* (format 2) covers the sha256 of every file the manifest lists (weights,
ONNX model, golden data, config with its calibration, GARCH, Kelly and fusion parameters) and
the feature schema (names, window, warm-up): two bundles with the same contract hash give the
same numbers, on every backend, and are checked against the same golden outputs. Format 1's
hash covered only the weights and the config; such bundles are refused with the way to
upgrade them (:data:`UPGRADE_HINT`). Nothing here imports torch; the runtime loads
``weights.pt``.
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

from mlsignal.bundle.checks import (
    check_golden,
    check_manifest_fields,
    check_torch_archive,
    member,
    read_json_object,
)
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

#: Format 2: the contract hash covers every listed file (format 1: weights and config only).
FORMAT_VERSION = 2
#: The format whose contract hash left model.onnx and golden.npz out; read only to upgrade.
LEGACY_FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
GOLDEN_FILE = "golden.npz"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, GOLDEN_FILE)
#: How to turn a format-1 bundle into a format-2 one (``{path}``: the bundle).
UPGRADE_HINT = (
    "upgrade it with `mlsignal export-onnx --bundle {path}` (checks the weights against the "
    "golden outputs, re-exports model.onnx and re-signs: a new contract hash and model "
    "version), or retrain"
)


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
    """The hash a client and a server compare (format 2).

    sha256 over the sha256 of every file in ``file_hashes`` (the manifest's table: weights,
    config, golden data, model.onnx when exported, any other file) and the feature schema's
    hash, window and warm-up from ``config``. Any file that can change a number changes it.
    """
    schema = FeatureSchema.from_dict(config["schema"])
    payload = {
        "format_version": FORMAT_VERSION,
        "files": dict(sorted(file_hashes.items())),
        "feature_schema_hash": schema.hash,
        "window": schema.window,
        "warmup": schema.warmup,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def legacy_contract_hash(file_hashes: Mapping[str, str], config: Mapping[str, Any]) -> str:
    """Format 1's contract hash: weights + config + schema (not model.onnx, not golden.npz)."""
    schema = FeatureSchema.from_dict(config["schema"])
    payload = {
        "weights_sha256": file_hashes[WEIGHTS_FILE],
        "config_sha256": hashlib.sha256(canonical_json(config).encode()).hexdigest(),
        "feature_schema_hash": schema.hash,
        "window": schema.window,
        "warmup": schema.warmup,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def sign(manifest: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """``manifest`` in format 2, with the contract hash of its ``files`` and the model
    version that names it (``{model_name}-{hash[:12]}``)."""
    chash = contract_hash(manifest["files"], config)
    name = manifest.get("model_name") or "mlsignal"
    return {
        **manifest,
        "format_version": FORMAT_VERSION,
        "contract_hash": chash,
        "model_version": f"{name}-{chash[:12]}",
    }


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
        """Human-readable version, e.g. ``sp500+nasdaq-3f2a9c1d0b7e``."""
        return str(self.manifest["model_version"])

    @property
    def contract_hash(self) -> str:
        """sha256 over every file of the bundle and its feature schema (see the module)."""
        return str(self.manifest["contract_hash"])

    @property
    def min_bars(self) -> int:
        """Fewest bars an enhance call needs: the feature lookback or the GARCH lookback."""
        return max(self.schema.lookback, self.garch.lookback + 1)

    def file(self, name: str) -> Path:
        """Path of one of the bundle's files."""
        return self.path / name


def _verify_files(path: Path, files: Mapping[str, str]) -> None:
    missing_required = [n for n in REQUIRED_FILES if n not in files]
    if missing_required:
        raise BundleIntegrityError(
            f"bundle {path}: manifest lists no {', '.join(missing_required)}"
        )
    for name, expected in files.items():
        f = member(path, name)
        if not f.is_file():
            raise BundleIntegrityError(f"bundle {path} is partial: {name} is missing")
        actual = sha256_file(f)
        if actual != expected:
            raise BundleIntegrityError(
                f"bundle {path}: {name} does not match its sha256 in the manifest "
                f"(expected {expected[:12]}…, found {actual[:12]}…): tampered or corrupt"
            )


def _read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / MANIFEST_FILE
    if not path.is_dir():
        raise BundleNotFoundError(f"no bundle at {path}: directory does not exist")
    if not manifest_path.is_file():
        raise BundleNotFoundError(
            f"no bundle at {path}: {MANIFEST_FILE} is missing (not a bundle, or a partial write)"
        )
    return read_json_object(member(path, MANIFEST_FILE), "manifest")


def _check_version(path: Path, manifest: Mapping[str, Any], legacy: bool) -> None:
    version = manifest.get("format_version")
    if version == FORMAT_VERSION or (legacy and version == LEGACY_FORMAT_VERSION):
        return
    if version == LEGACY_FORMAT_VERSION:
        raise BundleVersionError(
            f"bundle {path} has format version 1, whose contract hash does not cover "
            f"model.onnx and golden.npz; {UPGRADE_HINT.format(path=path)}"
        )
    raise BundleVersionError(
        f"bundle {path} has format version {version!r}; this mlsignal reads {FORMAT_VERSION}"
    )


def load_bundle(path: str | os.PathLike[str], *, legacy: bool = False) -> Bundle:
    """Load and verify a bundle; raise a :class:`BundleError` naming what is wrong.

    Verified: the manifest (UTF-8 JSON, identity fields, a sha256 string per file), every
    listed file inside the bundle and matching its sha256, the contract hash, config.json's
    parameters, golden.npz's arrays and weights.pt's archive. ``legacy`` (for
    :func:`mlsignal.onnx_export.export_onnx` only, which re-signs what it loads) also takes a
    format-1 bundle, verified by format 1's rule.
    """
    path = Path(path)
    manifest = _read_manifest(path)
    _check_version(path, manifest, legacy)
    files = check_manifest_fields(path, manifest)
    _verify_files(path, files)
    config = read_json_object(path / CONFIG_FILE, "config")
    try:
        rule = legacy_contract_hash if manifest["format_version"] == 1 else contract_hash
        actual = rule(files, config)
        schema = FeatureSchema.from_dict(config["schema"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BundleIntegrityError(f"bundle {path}: config.json is incomplete: {e!r}") from None
    if actual != manifest["contract_hash"]:
        raise BundleIntegrityError(
            f"bundle {path}: contract hash mismatch (manifest {manifest['contract_hash']!r}, "
            f"computed {actual!r})"
        )
    check_golden(path / GOLDEN_FILE, schema)
    check_torch_archive(path / WEIGHTS_FILE)
    try:
        return Bundle(
            path=path,
            manifest=manifest,
            config=config,
            schema=schema,
            garch=GarchParams.from_dict(config["garch"]),
            kelly_params=KellyParams(**config["kelly_params"]),
            kelly_config=KellyConfig(**config["kelly_config"]),
            fusion=FusionConfig(**config["fusion"]),
            extra_files=tuple(n for n in files if n not in REQUIRED_FILES),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BundleIntegrityError(f"bundle {path}: config.json is incomplete: {e!r}") from None


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
    manifest = sign({**extra, "files": hashes}, config)
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
