"""V2 gRPC messages <-> arrays: decode and check a ``ModelInferRequest``, build the answers.

Pure functions over the message classes of :mod:`mlsignal.server.proto` (no server, no
event loop), with the same checks and messages as the REST routes (:mod:`.v2`): a bad
request is a :class:`~mlsignal.errors.V2Error` whose ``field`` names the offending part,
e.g. ``inputs[0].shape`` or ``raw_input_contents[0]``.

Input data comes either as ``raw_input_contents`` (one little-endian FP32 byte string per
input: what ``tritonclient.grpc`` sends by default) or as ``inputs[0].contents.fp32_contents``.
Outputs go back as ``raw_output_contents`` in the order of ``outputs``, as Triton answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mlsignal.errors import V2Error
from mlsignal.server import proto
from mlsignal.signature import DATATYPE, INPUT_NAME, MODEL_NAME, OUTPUT_NAMES
from mlsignal.wire.v2 import check_input_shape, check_input_type, wanted_outputs

#: Little-endian float32, the byte order of V2 raw tensor contents.
FP32_LE = np.dtype("<f4")
_TYPED = "inputs[0].contents.fp32_contents"


@dataclass(frozen=True)
class InferCall:
    """A checked inference request: its ``id``, windows ``(B, T, F)`` float32 and the
    names of the outputs asked for."""

    id: str
    windows: np.ndarray
    wanted: frozenset[str]


def decode_infer(request: Any, shape: tuple[int, int], max_windows: int) -> InferCall:
    """Check a ``ModelInferRequest`` against the model's window ``shape`` ``(T, F)``.

    Model name and version are the caller's to check (they decide NOT_FOUND, not
    INVALID_ARGUMENT). Raises :class:`~mlsignal.errors.V2Error` naming the field.
    """
    if len(request.inputs) != 1:
        raise V2Error("inputs", f"must be a list with one tensor named {INPUT_NAME!r}")
    tensor = request.inputs[0]
    check_input_type(tensor.name, tensor.datatype)
    if tensor.parameters:
        raise V2Error(
            "inputs[0].parameters",
            f"are not supported (got {', '.join(sorted(tensor.parameters))}); "
            "send the data in raw_input_contents or contents.fp32_contents",
        )
    dims = check_input_shape(list(tensor.shape), shape, max_windows)
    if request.raw_input_contents:
        windows = _raw_windows(request, dims)
    else:
        windows = _typed_windows(tensor.contents, dims)
    return InferCall(request.id, windows, frozenset(_wanted(request.outputs)))


def _raw_windows(request: Any, dims: list[int]) -> np.ndarray:
    raw = request.raw_input_contents
    if len(raw) != 1:
        raise V2Error("raw_input_contents", f"has {len(raw)} entries; one per input (1) is needed")
    if request.inputs[0].contents.ListFields():
        raise V2Error("inputs[0].contents", "must be empty when raw_input_contents holds the data")
    need = int(np.prod(dims)) * FP32_LE.itemsize
    if len(raw[0]) != need:
        raise V2Error(
            "raw_input_contents[0]",
            f"has {len(raw[0])} bytes; shape {dims} of {DATATYPE} needs {need}",
        )
    # Our own writable, native-order copy: protobuf bytes are read-only, and torch warns on
    # (and must not write into) read-only memory.
    data = np.frombuffer(raw[0], dtype=FP32_LE).astype(np.float32)
    return _finite(data, "raw_input_contents[0]").reshape(dims)


def _typed_windows(contents: Any, dims: list[int]) -> np.ndarray:
    others = [f.name for f, _ in contents.ListFields() if f.name != "fp32_contents"]
    if others:
        raise V2Error(
            f"inputs[0].contents.{others[0]}",
            f"must be empty: {DATATYPE} data goes in fp32_contents or raw_input_contents",
        )
    values = contents.fp32_contents
    if not values:
        raise V2Error("inputs[0].contents", "is empty: send raw_input_contents or fp32_contents")
    need = int(np.prod(dims))
    if len(values) != need:
        raise V2Error(_TYPED, f"has {len(values)} values; shape {dims} needs {need}")
    data = np.fromiter(values, dtype=np.float32, count=need)
    return _finite(data, _TYPED).reshape(dims)


def _finite(data: np.ndarray, field: str) -> np.ndarray:
    if not np.isfinite(data).all():
        raise V2Error(field, "must be finite")
    return data


def _wanted(outputs: Any) -> set[str]:
    """No outputs listed: all (proto3 cannot tell an empty list from an absent one)."""
    for i, o in enumerate(outputs):
        if o.parameters:
            raise V2Error(f"outputs[{i}].parameters", "are not supported (e.g. classification)")
    return wanted_outputs([{"name": o.name} for o in outputs] or None)


def infer_response(contract_hash: str, call: InferCall, out: np.ndarray) -> Any:
    """Model outputs ``(B, 3)`` -> a ``ModelInferResponse`` with ``raw_output_contents``."""
    reply = proto.ModelInferResponse(model_name=MODEL_NAME, model_version=contract_hash, id=call.id)
    for k, name in enumerate(OUTPUT_NAMES):
        if name in call.wanted:
            reply.outputs.add(name=name, datatype=DATATYPE, shape=[len(out)])
            column = np.ascontiguousarray(out[:, k], dtype=FP32_LE)
            reply.raw_output_contents.append(column.tobytes())
    return reply


def metadata_response(doc: dict[str, Any]) -> Any:
    """The REST model metadata document (:func:`.v2.metadata`) as a ``ModelMetadataResponse``."""
    tensor = proto.ModelMetadataResponse.TensorMetadata
    return proto.ModelMetadataResponse(
        name=doc["name"],
        versions=doc["versions"],
        platform=doc["platform"],
        inputs=[tensor(**t) for t in doc["inputs"]],
        outputs=[tensor(**t) for t in doc["outputs"]],
    )
