"""Export a bundle's SignalModel to ONNX, check it against torch, install it into the bundle.

Training-side code (imports torch and onnx). The graph takes ``windows`` ``(B, T, F)`` float32
raw features (dynamic batch) and gives ``p_lstm``, ``p_tft`` and ``bull_prob``, each ``(B,)``.
It is checked with onnxruntime on the CPU against the torch model (golden inputs, random
batches of 1 and 1024) before it is written; then ``model.onnx`` and ``manifest.json`` are each
replaced atomically. The manifest is re-signed: ``model.onnx`` is part of the contract (bundle
format 2), so exporting into a bundle gives it a new contract hash and model version, and a
client pinned to the old hash sees the change. Re-exporting the same weights with the same
torch and onnx gives the same bytes, hence the same hash. A format-1 bundle is upgraded this
way: its weights are first checked against its golden outputs (which format 1 did not cover).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from mlsignal.bundle import CONFIG_FILE, GOLDEN_FILE, MANIFEST_FILE, Bundle, load_bundle
from mlsignal.bundle.checks import read_json_object
from mlsignal.bundle.io import sha256_file, sign
from mlsignal.errors import BundleError, ConfigError, ParityError
from mlsignal.runtime.base import PARITY_ATOL
from mlsignal.runtime.onnx_runtime import ONNX_FILE
from mlsignal.runtime.torch_runtime import build_model
from mlsignal.signature import INPUT_NAME, OUTPUT_NAMES

log = logging.getLogger(__name__)

#: The torch.export-based exporter's native opset: other opsets go through a version
#: converter that fails on this graph (no Split adapter from 18 to 17).
DEFAULT_OPSET = 18
#: Random batch sizes checked besides the golden inputs.
CHECK_BATCHES = (1, 1024)
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")


class _SplitOutputs(nn.Module):
    """SignalModel with its (B, 3) output split into three named (B,) outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, T, F) -> p_lstm, p_tft, bull_prob, each (B,)."""
        out = self.model(x)  # (B, 3)
        return out[:, 0], out[:, 1], out[:, 2]


def export_onnx(bundle_dir: str | os.PathLike[str], opset: int | None = None) -> dict[str, Any]:
    """Export the bundle at ``bundle_dir`` to ``model.onnx`` and record it in the manifest.

    Raises :class:`ParityError` (and installs nothing) if the torch model does not give the
    bundle's golden outputs, or onnxruntime's outputs differ from torch's, by more than
    ``PARITY_ATOL``. Re-exporting replaces the previous ``model.onnx``. The manifest is
    re-signed (format 2: a new contract hash and model version unless the graph's bytes are
    unchanged); a format-1 bundle is upgraded. Returns the manifest's new ``onnx`` section.
    """
    bundle = load_bundle(bundle_dir, legacy=True)
    model = build_model(bundle, "cpu")
    check_torch_golden(model, bundle)
    t0 = time.perf_counter()
    proto = _export_proto(model, bundle, DEFAULT_OPSET if opset is None else opset)
    export_s = time.perf_counter() - t0
    data = proto.SerializeToString()
    worst = check_onnx_parity(data, model, bundle)
    section = {
        "file": ONNX_FILE,
        "opset": _graph_opset(proto),
        "input": INPUT_NAME,
        "outputs": list(OUTPUT_NAMES),
        "onnxruntime_version": ort.__version__,
        "onnx_version": onnx.__version__,
        "torch_version": torch.__version__,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "max_abs_diff": worst,
    }
    install_onnx(bundle.path, data, section)
    log.info(
        "exported %s/%s: opset %d, %.1f s, max |diff| vs torch %.3g",
        bundle.path,
        ONNX_FILE,
        section["opset"],
        export_s,
        worst,
    )
    return section


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's tracer, deprecation and optimiser chatter, locally.

    torch.export warns about the models' shape asserts and LSTM flat weights; onnxscript logs
    every constant-folding decision at INFO. The parity check below is the real gate.
    """
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for category in (torch.jit.TracerWarning, FutureWarning, UserWarning):
                warnings.simplefilter("ignore", category)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export_proto(model: nn.Module, bundle: Bundle, opset: int) -> onnx.ModelProto:
    """Trace ``model`` with torch.export (dynamic batch) and translate it to ONNX."""
    example = torch.zeros(2, bundle.schema.window, bundle.schema.n_features)  # (2, T, F)
    batch = torch.export.Dim("batch", min=1)
    with _quiet_exporter():
        program = torch.onnx.export(
            _SplitOutputs(model).eval(),
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    proto = program.model_proto
    strip_debug_metadata(proto)
    onnx.checker.check_model(proto)
    if _graph_opset(proto) != opset:
        # The exporter's version converter falls back to the native opset when it cannot
        # convert: refuse rather than record an opset nobody asked for.
        raise ConfigError(
            f"torch {torch.__version__} cannot export this model at opset {opset} (the graph "
            f"came out at opset {_graph_opset(proto)}); use the default, {DEFAULT_OPSET}"
        )
    return proto


def strip_debug_metadata(proto: onnx.ModelProto) -> None:
    """Drop the exporter's debug metadata (stack traces with source paths, the export's
    range constraints) from the model, its graphs and nodes, in place.

    They change from one export to the next (another checkout, or a second export in the
    same process) while the computation does not; the contract hash covers model.onnx's
    bytes, so the same weights must export to the same bytes.
    """
    del proto.metadata_props[:]
    graphs = [proto.graph]
    nodes = [n for f in proto.functions for n in f.node]
    while graphs:
        graph = graphs.pop()
        del graph.metadata_props[:]
        nodes.extend(graph.node)
        while nodes:
            node = nodes.pop()
            del node.metadata_props[:]
            for attr in node.attribute:
                graphs.extend([attr.g] if attr.HasField("g") else [])
                graphs.extend(attr.graphs)


def _graph_opset(proto: onnx.ModelProto) -> int:
    """The default-domain opset the graph actually uses (not merely the one asked for)."""
    return next(int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _check_inputs(model: nn.Module, bundle: Bundle) -> dict[str, np.ndarray]:
    """Named input batches: the golden windows, and random batches around the scaler."""
    with np.load(bundle.file(GOLDEN_FILE)) as golden:
        cases = {"golden": np.ascontiguousarray(golden["inputs"], dtype=np.float32)}
    mean = model.feat_mean.numpy()  # (F,)
    std = model.feat_std.numpy()  # (F,)
    rng = np.random.default_rng(0)
    shape = (bundle.schema.window, bundle.schema.n_features)
    for n in CHECK_BATCHES:
        z = rng.standard_normal((n, *shape))
        cases[f"random batch {n}"] = (mean + std * z).astype(np.float32)
    return cases


def check_torch_golden(model: nn.Module, bundle: Bundle) -> float:
    """The torch model's outputs on the golden inputs against the golden expected ones.

    The golden file is what every runtime is judged by; it must belong to these weights.
    Raises :class:`ParityError` beyond ``PARITY_ATOL``; returns the worst difference.
    """
    with np.load(bundle.file(GOLDEN_FILE)) as golden:
        inputs = np.ascontiguousarray(golden["inputs"], dtype=np.float32)
        expected = golden["expected"].astype(np.float64)
    with torch.inference_mode():
        got = model(torch.from_numpy(inputs)).numpy().astype(np.float64)  # (N, 3)
    worst = float(np.abs(got - expected).max())
    if not worst <= PARITY_ATOL:  # NaN too
        raise ParityError(
            f"bundle {bundle.path}: weights.pt does not give the golden outputs of "
            f"{GOLDEN_FILE} (worst |diff| {worst:.3g} > {PARITY_ATOL:g}): the files do not "
            f"belong together; {ONNX_FILE} not installed"
        )
    return worst


def check_onnx_parity(data: bytes, model: nn.Module, bundle: Bundle) -> float:
    """Compare the serialized graph (onnxruntime, CPU) with ``model``; return the worst diff.

    Raises :class:`ParityError` naming the case, output, row and difference when any output
    differs by more than ``PARITY_ATOL``.
    """
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    worst = 0.0
    for case, x in _check_inputs(model, bundle).items():
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy().astype(np.float64)  # (B, 3)
        got = np.stack(session.run(list(OUTPUT_NAMES), {INPUT_NAME: x}), axis=1)  # (B, 3)
        diff = np.abs(got.astype(np.float64) - expected)
        if not np.isfinite(diff).all():
            raise ParityError(f"ONNX export of {bundle.path}: non-finite outputs on {case}")
        row, col = np.unravel_index(int(np.argmax(diff)), diff.shape)
        if diff[row, col] > PARITY_ATOL:
            raise ParityError(
                f"ONNX export of {bundle.path} drifts from torch on {case}: worst |diff| "
                f"{diff[row, col]:.3g} on {OUTPUT_NAMES[col]} (row {row}) > tolerance "
                f"{PARITY_ATOL:g}; {ONNX_FILE} not installed"
            )
        worst = max(worst, float(diff[row, col]))
    return worst


def install_onnx(bundle_dir: Path, data: bytes, section: dict[str, Any]) -> None:
    """Write ``model.onnx`` and the re-signed manifest, each via temp file + fsync + replace.

    On re-export the old entry is first dropped from the manifest (re-signed without it), so
    a crash at any point leaves a bundle that :func:`load_bundle` accepts (with the old, the
    new or no ONNX file, each under its own contract hash).
    """
    manifest_path = bundle_dir / MANIFEST_FILE
    manifest = read_json_object(manifest_path, "manifest")
    config = read_json_object(bundle_dir / CONFIG_FILE, "config")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"bundle {bundle_dir}: manifest has no 'files' table")
    if ONNX_FILE in files:
        del files[ONNX_FILE]
        manifest.pop("onnx", None)
        _write_atomic(manifest_path, _manifest_bytes(sign(manifest, config)))
    _write_atomic(bundle_dir / ONNX_FILE, data)
    files[ONNX_FILE] = sha256_file(bundle_dir / ONNX_FILE)
    manifest["onnx"] = section
    _write_atomic(manifest_path, _manifest_bytes(sign(manifest, config)))


def _manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The manifest as write_bundle formats it (indented, sorted keys, trailing newline)."""
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: hidden temp sibling, fsync, os.replace, fsync the dir."""
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
