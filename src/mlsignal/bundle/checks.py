"""What :func:`~mlsignal.bundle.load_bundle` checks besides the hashes, each a one-line error.

- the manifest: UTF-8 JSON, an object, with a string ``model_version`` and ``contract_hash``
  and a ``files`` table of sha256 hex strings;
- every file name the manifest lists stays inside the bundle: a plain relative path (no
  ``..``, ``.`` or empty part, not absolute) whose real path, symlinks resolved, is in the
  bundle directory;
- ``golden.npz`` is a readable npz of ``inputs`` ``(N, T, F)`` and ``expected`` ``(N, 3)``,
  finite, shaped for the schema; ``weights.pt`` is a readable torch archive (a zip whose
  checksums hold, with a well-formed pickle). Both are read without torch, nothing unpickled.

A bundle that fails any of them is a :class:`~mlsignal.errors.BundleIntegrityError`; the
message names the bundle, the file and what is wrong, on one line.
"""

from __future__ import annotations

import json
import pickletools
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mlsignal.errors import BundleIntegrityError
from mlsignal.features.schema import FeatureSchema

_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Columns of a golden ``expected`` row (p_lstm, p_tft, bull_prob).
GOLDEN_OUTPUTS = 3


def one_line(e: BaseException) -> str:
    """``TypeName: first line of the message``, for errors quoted inside our own."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A UTF-8 JSON object from ``path``, or a :class:`BundleIntegrityError` saying why not."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise BundleIntegrityError(
            f"{what} {path} is not UTF-8 text (byte {e.start}): not a bundle file, or corrupt"
        ) from None
    except OSError as e:
        raise BundleIntegrityError(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BundleIntegrityError(f"{what} {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BundleIntegrityError(f"{what} {path} is not a JSON object")
    return data


def check_manifest_fields(path: Path, manifest: Mapping[str, Any]) -> dict[str, str]:
    """The manifest's ``files`` table, after checking it and the identity fields' types."""
    for key in ("model_version", "contract_hash"):
        value = manifest.get(key)
        if not isinstance(value, str) or not value:
            got = "missing" if value is None else f"{type(value).__name__} {value!r}"[:80]
            raise BundleIntegrityError(
                f"bundle {path}: manifest {key} must be a non-empty string, got {got}"
            )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleIntegrityError(f"bundle {path}: manifest has no 'files' table")
    for name, sha in files.items():
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            shown = f"{type(sha).__name__} {sha!r}"[:80]
            raise BundleIntegrityError(
                f"bundle {path}: manifest sha256 of {name!r} must be 64 lowercase hex "
                f"digits, got {shown}"
            )
    return files


def member(path: Path, name: str) -> Path:
    """The file ``name`` of the bundle at ``path``, refused unless it stays inside it.

    ``name`` must be a relative path of plain parts (``config.json``, ``sub/x.bin``): no
    ``..``, ``.``, empty part, leading ``/``, backslash or NUL; and the file it names, with
    every symlink resolved, must lie inside the bundle directory.
    """
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") for p in parts) or "\\" in name or "\0" in name:
        raise BundleIntegrityError(
            f"bundle {path}: manifest file name {name!r} is not a plain relative path "
            "inside the bundle"
        )
    target = path / name
    root = path.resolve()
    if not target.resolve().is_relative_to(root):
        raise BundleIntegrityError(
            f"bundle {path}: {name} is a link that leads outside the bundle (to {target.resolve()})"
        )
    return target


def check_golden(file: Path, schema: FeatureSchema) -> None:
    """``golden.npz``: readable without pickle, ``inputs`` ``(N, T, F)`` and ``expected``
    ``(N, 3)``, ``N >= 1``, finite numbers."""
    try:
        with np.load(file, allow_pickle=False) as golden:
            inputs, expected = golden["inputs"], golden["expected"]
    except Exception as e:  # npz readers raise zip, OS, value and key errors alike
        raise BundleIntegrityError(
            f"bundle {file.parent}: {file.name} cannot be read ({one_line(e)})"
        ) from None
    want = (schema.window, schema.n_features)
    n = inputs.shape[0] if inputs.ndim == 3 else -1
    if inputs.ndim != 3 or inputs.shape[1:] != want or n < 1 or expected.shape != (n, 3):
        raise BundleIntegrityError(
            f"bundle {file.parent}: {file.name} holds inputs {list(inputs.shape)} and expected "
            f"{list(expected.shape)}; the schema needs [N, {want[0]}, {want[1]}] and "
            f"[N, {GOLDEN_OUTPUTS}]"
        )
    for key, arr in (("inputs", inputs), ("expected", expected)):
        if arr.dtype.kind != "f" or not np.isfinite(arr).all():
            raise BundleIntegrityError(
                f"bundle {file.parent}: {file.name} {key} must be finite floats (dtype {arr.dtype})"
            )


def check_torch_archive(file: Path) -> None:
    """``weights.pt`` is a torch zip archive whose entries' CRCs hold and whose ``data.pkl``
    is a well-formed pickle stream (its opcodes read, nothing executed: no torch needed)."""
    where = f"bundle {file.parent}: {file.name}"
    try:
        with zipfile.ZipFile(file) as archive:
            bad = archive.testzip()
            pickles = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"]
            data = archive.read(pickles[0]) if len(pickles) == 1 else b""
    except Exception as e:  # BadZipFile, OSError, EOFError, ...
        raise BundleIntegrityError(
            f"{where} is not a readable torch archive ({one_line(e)})"
        ) from None
    if bad is not None:
        raise BundleIntegrityError(f"{where} is corrupt (entry {bad} fails its checksum)")
    if len(pickles) != 1:
        raise BundleIntegrityError(f"{where} is not a torch archive ({len(pickles)} data.pkl)")
    try:
        for _ in pickletools.genops(data):
            pass
    except Exception as e:  # ValueError: truncated or unknown opcodes
        raise BundleIntegrityError(f"{where} holds a corrupt pickle ({one_line(e)})") from None
