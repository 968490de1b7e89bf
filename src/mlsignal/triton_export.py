"""``mlsignal export-triton``: a Triton model repository for a bundle's ONNX model.

Layout (what Triton's ``onnxruntime`` backend loads)::

    REPO/<name>/config.pbtxt            platform, signature, batching, instances, versions
    REPO/<name>/<version>/model.onnx    the bundle's model.onnx, byte for byte
    REPO/<name>/<version>/mlsignal.json contract hash, model version, where it came from

**Versions.** Triton names versions with positive integers; our model identity is the
bundle's contract hash. The version is the hash's first 15 hex digits read as an integer
(60 bits, below Triton's int64 limit): ``triton_version(h) = int(h[:15], 16)``. It is derived,
never assigned, so a V2 client holding a bundle knows the only version it may call
(``/v2/models/<name>/versions/<triton_version(its hash)>/infer``) and Triton itself refuses
any other; the full hash is in ``mlsignal.json`` and in the config's ``parameters``. Because
such numbers are not ordered in time, the config always lists the served versions
explicitly (``version_policy: { specific: ... }``) instead of relying on "latest".
``--add`` keeps the versions already there, so old and new models are served side by side
during a rollout (docs/scaling.md).

**Writes are atomic** at every step Triton can observe: a new model directory is built
beside the repository's models and renamed into place; a version is added by renaming a
finished hidden directory (Triton ignores non-numeric names) before the config that lists
it replaces the old config with ``os.replace``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlsignal import __version__
from mlsignal.bundle import load_bundle
from mlsignal.bundle.io import fsync_dir
from mlsignal.errors import BundleError, ConfigError
from mlsignal.runtime.onnx_runtime import ONNX_FILE
from mlsignal.signature import HASH_DIGITS, MODEL_NAME, PLATFORMS, triton_version

CONFIG_FILE = "config.pbtxt"
LABEL_FILE = "mlsignal.json"

#: ONNX TensorProto element types -> Triton data types.
TRITON_TYPES = {
    1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
    6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64",
    12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16",
}  # fmt: skip


@dataclass(frozen=True)
class Batching:
    """Triton batching and instances for one kind of device, with where the numbers come from."""

    max_batch: int
    preferred: tuple[int, ...]
    queue_delay_us: int
    instances: int
    why: tuple[str, ...]  # comment lines written above the settings


#: Chosen from docs/BENCHMARKS.md (2026-11-26, H200 host: torch CUDA eager and ORT CPU rows);
#: tests/unit/test_doc_numbers.py checks every number of ``why`` against docs/img/bench-h200.json.
DEFAULTS = {
    "gpu": Batching(
        max_batch=1024,
        preferred=(256, 1024),
        queue_delay_us=500,
        instances=1,
        why=(
            "GPU numbers: docs/img/bench-h200.json (docs/BENCHMARKS.md, 2026-11-26, H200),",
            "PyTorch CUDA eager forward, median by batch: 1: 1.8 ms, 16: 1.9 ms, 256: 2.7 ms",
            "(94K windows/s), 1024: 8.9 ms (116K/s), 4096: 37.1 ms (110K/s). Throughput peaks",
            "at 1024, so max_batch_size 1024; 256 gives 81% of it at a third of the latency, so",
            "it is preferred first. A pass costs about the same for 1 or 16 windows",
            "(launch-bound): waiting up to 0.5 ms (under a third of the batch-1 forward) lets",
            "concurrent symbols share one pass.",
            "Measured with PyTorch CUDA; ONNX Runtime's CUDA provider was not measured.",
        ),
    ),
    "cpu": Batching(
        max_batch=256,
        preferred=(16, 256),
        queue_delay_us=500,
        instances=1,
        why=(
            "CPU numbers: docs/img/bench-h200.json (docs/BENCHMARKS.md, 2026-11-26), ONNX",
            "Runtime with default session options on the 16-core H200 host, forward median by",
            "batch: 1: 1.6 ms, 16: 4.5 ms (3.6K windows/s), 256: 44 ms (5.8K/s), 1024: 207 ms",
            "(4.9K/s). Throughput peaks at 256, so max_batch_size 256; 16 is preferred first",
            "for latency. One instance: ONNX Runtime already uses every core; a second would",
            "compete for them.",
        ),
    ),
}


@dataclass(frozen=True)
class Tensor:
    """One input or output of the ONNX graph as Triton needs it (batch axis removed)."""

    name: str
    data_type: str
    dims: tuple[int, ...]  # without the batch axis; () for a (B,) tensor


def onnx_signature(path: Path) -> tuple[list[Tensor], list[Tensor]]:
    """Inputs and outputs of ``path``, read from the graph; the first axis must be dynamic."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [_tensor(v, path) for v in graph.input if v.name not in initializers]
    return inputs, [_tensor(v, path) for v in graph.output]


def _tensor(value: Any, path: Path) -> Tensor:
    tt = value.type.tensor_type
    if tt.elem_type not in TRITON_TYPES:
        raise BundleError(f"{path}: {value.name!r} has ONNX element type {tt.elem_type}")
    dims = list(tt.shape.dim)
    if not dims or dims[0].HasField("dim_value"):
        raise BundleError(
            f"{path}: {value.name!r} has no dynamic batch axis (shape {_shape(dims)}); "
            "re-export it with `mlsignal export-onnx`"
        )
    rest = []
    for d in dims[1:]:
        if not d.HasField("dim_value"):
            raise BundleError(f"{path}: {value.name!r} has a dynamic inner axis {_shape(dims)}")
        rest.append(int(d.dim_value))
    return Tensor(value.name, TRITON_TYPES[tt.elem_type], tuple(rest))


def _shape(dims: list[Any]) -> str:
    return "[" + ", ".join(d.dim_param or str(d.dim_value) for d in dims) + "]"


# --- config.pbtxt -------------------------------------------------------------------------
def _tensor_block(t: Tensor) -> list[str]:
    lines = ["  {", f'    name: "{t.name}"', f"    data_type: {t.data_type}"]
    if t.dims:
        lines.append(f"    dims: [ {', '.join(map(str, t.dims))} ]")
    else:  # a (B,) tensor: Triton needs dims [1] reshaped to a scalar per batch item
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    return [*lines, "  }"]


def _tensors(key: str, tensors: list[Tensor]) -> list[str]:
    lines = [f"{key} ["]
    for k, t in enumerate(tensors):
        block = _tensor_block(t)
        if k < len(tensors) - 1:
            block[-1] += ","
        lines += block
    return [*lines, "]"]


def render_config(
    name: str,
    inputs: list[Tensor],
    outputs: list[Tensor],
    kind: str,
    batching: Batching,
    versions: dict[int, dict[str, Any]],
) -> str:
    """The text of ``config.pbtxt``; ``versions`` maps Triton version -> its label."""
    newest = max(versions.values(), key=lambda v: v["exported_at"])
    lines = [
        f"# Written by mlsignal {__version__} export-triton. Served versions and their",
        f"# contract hashes (version = int(contract_hash[:{HASH_DIGITS}], 16)):",
        *(
            f"#   {n}: {v['model_version']} {v['contract_hash']}"
            for n, v in sorted(versions.items())
        ),
        f'name: "{name}"',
        f'platform: "{PLATFORMS["onnx"]}"',
        f"max_batch_size: {batching.max_batch}",
        "version_policy: { specific: { versions: [ "
        + ", ".join(str(n) for n in sorted(versions))
        + " ] } }",
        *_tensors("input", inputs),
        *_tensors("output", outputs),
        *(f"# {line}" for line in batching.why),
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(map(str, batching.preferred))} ]",
        f"  max_queue_delay_microseconds: {batching.queue_delay_us}",
        "}",
        "instance_group [",
        f"  {{ count: {batching.instances} kind: KIND_{kind.upper()} }}",
        "]",
        "# Accelerators (TensorRT, FP16) are left off: they change the numbers, and the",
        "# bundle's parity gate (|diff| <= 1e-5 on bull_prob) was checked without them.",
    ]
    params = {"mlsignal_model_version": newest["model_version"]}
    params.update({f"contract_hash_{n}": v["contract_hash"] for n, v in sorted(versions.items())})
    for key, value in params.items():
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


# --- the repository -----------------------------------------------------------------------
def batching_for(
    kind: str, max_batch: int | None, instances: int | None, delay_us: int | None
) -> Batching:
    """The defaults of ``kind`` with the command line's overrides."""
    if kind not in DEFAULTS:
        raise ConfigError(f"--kind must be gpu or cpu, got {kind!r}")
    base = DEFAULTS[kind]
    mb = base.max_batch if max_batch is None else max_batch
    n = base.instances if instances is None else instances
    delay = base.queue_delay_us if delay_us is None else delay_us
    if mb < 1 or n < 1 or delay < 0:
        raise ConfigError("--max-batch and --instances must be >= 1, --queue-delay-us >= 0")
    preferred = tuple(p for p in base.preferred if p <= mb) or (mb,)
    why = base.why
    if (max_batch, instances, delay_us) != (None, None, None):
        why = (*why, f"Set on the command line: max_batch_size {mb}, {n} instance(s), "
               f"max_queue_delay {delay} us; preferred sizes above it dropped.")  # fmt: skip
    return Batching(mb, preferred, delay, n, why)


def _label(bundle: Any) -> dict[str, Any]:
    return {
        "contract_hash": bundle.contract_hash,
        "model_version": bundle.model_version,
        "triton_version": triton_version(bundle.contract_hash),
        "onnx_sha256": bundle.manifest["files"][ONNX_FILE],
        "source_bundle": str(bundle.path.resolve()),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mlsignal_version": __version__,
    }


def _existing(model_dir: Path) -> dict[int, dict[str, Any]]:
    """Labels of the versions already in ``model_dir`` (refuses versions not ours)."""
    found = {}
    for d in sorted(model_dir.iterdir()) if model_dir.is_dir() else []:
        if not (d.is_dir() and d.name.isdigit()):
            continue
        try:
            found[int(d.name)] = json.loads((d / LABEL_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise BundleError(
                f"{d} was not written by mlsignal export-triton (no readable {LABEL_FILE}); "
                "use another --name or --out"
            ) from None
    return found


def _write_file(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_version(tmp: Path, onnx_path: Path, label: dict[str, Any]) -> None:
    tmp.mkdir(parents=True)
    _write_file(tmp / ONNX_FILE, onnx_path.read_bytes())
    _write_file(tmp / LABEL_FILE, (json.dumps(label, indent=2, sort_keys=True) + "\n").encode())


def _replace_file(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _write_file(tmp, text.encode("utf-8"))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _same_signature(model_dir: Path, versions: dict[int, Any], sig: Any) -> None:
    for n in versions:
        if onnx_signature(model_dir / str(n) / ONNX_FILE) != sig:
            raise BundleError(
                f"{model_dir}/{n} has another input/output signature; one config cannot serve "
                "both: export under another --name"
            )


def export_triton(
    bundle_dir: str | os.PathLike[str],
    repo: str | os.PathLike[str],
    name: str = MODEL_NAME,
    kind: str = "gpu",
    max_batch: int | None = None,
    instances: int | None = None,
    queue_delay_us: int | None = None,
    add: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Write (or extend) ``repo/name`` for the bundle's ONNX model; returns a summary.

    Refuses, unless ``force``, a model directory holding other versions (``add`` keeps them
    and serves all) or this version with a different ``model.onnx``.
    """
    if not name or "/" in name or name.startswith(".") or name.isdigit():
        raise ConfigError(f"--name must be a plain directory name, got {name!r}")
    if add and force:
        raise ConfigError("--add keeps the versions already there, --force drops them: pick one")
    bundle = load_bundle(bundle_dir)  # hashes verified, model.onnx included
    if ONNX_FILE not in bundle.manifest.get("files", {}):
        raise BundleError(f"bundle {bundle.path} has no {ONNX_FILE}: run `mlsignal export-onnx`")
    onnx_path = bundle.file(ONNX_FILE)
    inputs, outputs = onnx_signature(onnx_path)
    batching = batching_for(kind, max_batch, instances, queue_delay_us)
    repo, version = Path(repo), triton_version(bundle.contract_hash)
    model_dir = repo / name
    repo.mkdir(parents=True, exist_ok=True)
    versions = {} if force else _existing(model_dir)
    same = versions.get(version)
    if same is not None and (model_dir / str(version) / ONNX_FILE).read_bytes() != (
        onnx_path.read_bytes()
    ):
        raise BundleError(
            f"{model_dir}/{version} holds a different {ONNX_FILE} for the same contract hash; "
            "pass --force to replace it"
        )
    others = sorted(n for n in versions if n != version)
    if others and not add:
        listed = ", ".join(f"{n} ({versions[n]['model_version']})" for n in others)
        raise BundleError(
            f"{model_dir} already serves version(s) {listed}; pass --add to serve both side by "
            "side (a rollout), or --force to replace them"
        )
    _same_signature(model_dir, {n: None for n in others}, (inputs, outputs))
    label = same if same is not None else _label(bundle)
    served = {**{n: versions[n] for n in others}, version: label}
    config = render_config(name, inputs, outputs, kind, batching, served)
    if model_dir.is_dir() and not force:
        _extend(model_dir, version, onnx_path, label, config, exists=same is not None)
    else:
        _fresh(model_dir, version, onnx_path, label, config)
    return {
        "model_dir": str(model_dir),
        "version": version,
        "versions": sorted(served),
        "contract_hash": bundle.contract_hash,
        "model_version": bundle.model_version,
        "config": str(model_dir / CONFIG_FILE),
        "kind": kind,
        "max_batch_size": batching.max_batch,
        "preferred_batch_size": list(batching.preferred),
        "max_queue_delay_microseconds": batching.queue_delay_us,
        "instances": batching.instances,
    }


def _fresh(model_dir: Path, version: int, onnx_path: Path, label: dict, config: str) -> None:
    """Build the whole model directory beside it, then rename it into place."""
    tmp = model_dir.parent / f".{model_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = None
    try:
        _write_version(tmp / str(version), onnx_path, label)
        _write_file(tmp / CONFIG_FILE, config.encode("utf-8"))
        fsync_dir(tmp)
        if model_dir.exists():
            old = model_dir.parent / f".{model_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(model_dir, old)
        os.rename(tmp, model_dir)
        fsync_dir(model_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _extend(
    model_dir: Path, version: int, onnx_path: Path, label: dict, config: str, exists: bool
) -> None:
    """Add a version (a hidden directory renamed into place), then replace the config."""
    if not exists:
        tmp = model_dir / f".{version}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            _write_version(tmp, onnx_path, label)
            os.rename(tmp, model_dir / str(version))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(model_dir)
    _replace_file(model_dir / CONFIG_FILE, config)
    fsync_dir(model_dir)
