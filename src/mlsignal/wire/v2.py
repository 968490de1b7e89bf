"""Open Inference Protocol (KServe V2) infer bodies over HTTP: JSON and binary tensors.

Both ends of ``POST /v2/models/{name}[/versions/{version}]/infer`` use this module: the
client encodes requests and decodes responses, the server the other way round. The model's
signature is :mod:`mlsignal.signature`'s: one input ``windows`` FP32 ``(B, T, F)``, outputs
``p_lstm``, ``p_tft``, ``bull_prob`` FP32 ``(B,)``.

**Binary tensor data extension** (Triton's ``binary_tensor_data``, as ``tritonclient.http``
sends it by default). The body is a JSON inference header followed by raw tensor bytes,
little-endian, row-major, without padding; the ``Inference-Header-Content-Length`` HTTP
header gives the JSON header's length in bytes. An input sent that way carries
``parameters.binary_data_size`` (its byte count) instead of ``data``. An output is returned
as bytes when it asks ``parameters.binary_data: true``, or when the request asks
``parameters.binary_data_output: true`` and the output does not say otherwise (with no
``outputs`` list, that is every output). The response then carries the same header and
``parameters.binary_data_size`` on each binary output, and the output bytes follow the JSON
in the order of the outputs in it. The request :func:`encode_request` makes for windows
``(2, 64, 29)`` (the whole header, byte by byte, is in docs/API.md)::

    POST /v2/models/mlsignal/versions/<contract hash>/infer
    Content-Type: application/octet-stream
    Inference-Header-Content-Length: 310
    {"inputs":[{"name":"windows","shape":[2,64,29],"datatype":"FP32",
      "parameters":{"binary_data_size":14848}}],"outputs":[...],
      "parameters":{"timeout":2500000}}                        <- 310 bytes of JSON
    <14848 bytes: 2 x 64 x 29 float32, little-endian, row-major>

Request-level ``parameters.timeout`` (microseconds, as Triton reads it) is the time the
server may take from the request's arrival; 0 or absent: no limit.

Errors are :class:`~mlsignal.errors.V2Error` (a request; the server answers 400) or
:class:`~mlsignal.errors.WireError` (a response; the client falls back), each naming the
field. Decoding a binary tensor is ``np.frombuffer`` on the body: no copy, no Python loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlsignal.errors import V2Error, WireError
from mlsignal.signature import DATATYPE, INPUT_NAME, OUTPUT_NAMES
from mlsignal.wire import JSON_TYPE, dumps, loads, number_tensor

#: The HTTP header with the JSON inference header's length in bytes.
HEADER_LENGTH = "Inference-Header-Content-Length"
#: The name of the extension in the server metadata's ``extensions``.
BINARY_EXTENSION = "binary_tensor_data"
#: The content type of a body with binary tensors.
BINARY_TYPE = "application/octet-stream"
#: Little-endian numpy dtypes of the float datatypes an output may come back as.
FLOAT_DTYPES = {"FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
_FP32 = np.dtype("<f4")


def header_length(value: str | None, size: int, error: type[WireError] = V2Error) -> int | None:
    """The ``Inference-Header-Content-Length`` value as a byte count in ``1..size``
    (``None`` when absent); else ``error`` naming the header."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit() or not 1 <= int(text) <= size:
        raise error(
            HEADER_LENGTH, f"is {value!r}; it must be a whole number of bytes from 1 to the "
            f"body's {size}"
        )  # fmt: skip
    return int(text)


def _int_param(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# --- requests -----------------------------------------------------------------------------
@dataclass(frozen=True)
class EncodedInfer:
    """An infer request made once per call; :meth:`body` adds each attempt's timeout.

    ``header``: the JSON inference header (an object, without request-level parameters);
    ``payload``: the input's bytes (empty for JSON tensors); ``n``: windows sent.
    """

    header: bytes
    payload: bytes
    n: int

    @property
    def binary(self) -> bool:
        """Whether the windows travel as binary tensor data."""
        return bool(self.payload)

    def body(self, timeout_us: int | None = None) -> tuple[bytes, dict[str, str]]:
        """The request body and its headers, with ``parameters.timeout`` if given."""
        header = self.header
        if timeout_us is not None:
            header = header[:-1] + b',"parameters":{"timeout":%d}}' % max(0, int(timeout_us))
        if not self.payload:
            return header, {"content-type": JSON_TYPE}
        headers = {"content-type": BINARY_TYPE, HEADER_LENGTH: str(len(header))}
        return header + self.payload, headers


def encode_request(
    windows: np.ndarray, *, binary: bool = True, request_id: str | None = None
) -> EncodedInfer:
    """The infer request for windows ``(B, T, F)``, asking for every output.

    ``binary``: the windows as binary tensor data and the outputs asked back as binary;
    else JSON ``data`` (flat, row-major) both ways. Raises ``ValueError`` for windows that
    are not ``(B, T, F)`` with ``B >= 1`` or not finite.
    """
    arr = np.ascontiguousarray(windows, dtype=_FP32)
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise ValueError(f"windows must have shape (B, T, F) with B >= 1, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("windows must be finite")
    tensor: dict[str, Any] = {"name": INPUT_NAME, "shape": list(arr.shape), "datatype": DATATYPE}
    payload = b""
    if binary:
        payload = arr.tobytes()
        tensor["parameters"] = {"binary_data_size": len(payload)}
        outputs = [{"name": n, "parameters": {"binary_data": True}} for n in OUTPUT_NAMES]
    else:
        tensor["data"] = arr.ravel()
        outputs = [{"name": n} for n in OUTPUT_NAMES]
    doc: dict[str, Any] = {} if request_id is None else {"id": request_id}
    doc.update(inputs=[tensor], outputs=outputs)
    return EncodedInfer(dumps(doc), payload, int(arr.shape[0]))


@dataclass(frozen=True)
class InferRequest:
    """A decoded infer request.

    ``windows``: float32 ``(B, T, F)`` (read-only when it came as binary: a view of the
    body); ``outputs``: each requested output -> whether it goes back as binary, in
    :data:`~mlsignal.signature.OUTPUT_NAMES` order; ``timeout_us``: 0 for none.
    """

    id: str | None
    windows: np.ndarray
    outputs: dict[str, bool]
    timeout_us: int = 0


def decode_request(
    body: bytes, length: str | None, shape: tuple[int, int], max_windows: int
) -> InferRequest:
    """Validate an infer request; ``length`` is its ``Inference-Header-Content-Length``
    header (or ``None``), ``shape`` the model's ``(T, F)``. Raises :class:`V2Error` (or a
    :class:`WireError` on ``body`` for JSON that does not parse) naming the field."""
    size = header_length(length, len(body))
    try:
        doc = loads(body[:size] if size is not None else body)
    except WireError as e:
        if size is not None:
            raise
        raise WireError(
            "body", f"{str(e).removeprefix('body: ')}; binary tensor data after the JSON needs "
            f"the {HEADER_LENGTH} header"
        ) from None  # fmt: skip
    if not isinstance(doc, Mapping):
        raise V2Error("body", "must be a JSON object")
    req_id = doc.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise V2Error("id", "must be a string")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise V2Error("inputs", f"must be a list with one tensor named {INPUT_NAME!r}")
    params = _params(doc, "parameters")
    windows = _windows(inputs[0], body, size, shape, max_windows)
    as_binary = params.get("binary_data_output", False)
    if not isinstance(as_binary, bool):
        raise V2Error("parameters.binary_data_output", "must be true or false")
    timeout = params.get("timeout", 0)
    if not _int_param(timeout):
        raise V2Error("parameters.timeout", "must be a whole number of microseconds >= 0")
    return InferRequest(req_id, windows, _wanted(doc.get("outputs"), as_binary), timeout)


def _params(doc: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    params = doc.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise V2Error(where, "must be an object")
    return params


def check_input_type(name: Any, datatype: Any) -> None:
    """The one input's ``name`` and ``datatype`` (HTTP and gRPC), or a :class:`V2Error`."""
    if name != INPUT_NAME:
        raise V2Error("inputs[0].name", f"must be {INPUT_NAME!r}")
    if datatype != DATATYPE:
        raise V2Error("inputs[0].datatype", f"must be {DATATYPE!r}, got {datatype!r}")


def check_input_shape(dims: Any, shape: tuple[int, int], max_windows: int) -> list[int]:
    """The input's ``[B, T, F]`` against the model's ``(T, F)`` and ``1 <= B <= max_windows``
    (HTTP and gRPC); ``dims`` as a list, or a :class:`V2Error` naming ``inputs[0].shape``."""
    if (
        not isinstance(dims, list)
        or len(dims) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims)
        or tuple(dims[1:]) != shape
        or not 1 <= dims[0] <= max_windows
    ):
        raise V2Error(
            "inputs[0].shape",
            f"is {dims!r}; expected [B, {shape[0]}, {shape[1]}] with 1 <= B <= {max_windows}",
        )
    return dims


def wanted_outputs(outputs: Any) -> set[str]:
    """The requested output names (``None``: all), or a :class:`V2Error` naming the entry."""
    return set(_wanted(outputs, False))


def _windows(
    tensor: Any, body: bytes, size: int | None, shape: tuple[int, int], max_windows: int
) -> np.ndarray:
    """The input tensor -> float32 ``(B, T, F)``, from its JSON ``data`` or the body."""
    if not isinstance(tensor, Mapping):
        raise V2Error("inputs[0].name", f"must be {INPUT_NAME!r}")
    check_input_type(tensor.get("name"), tensor.get("datatype"))
    dims = check_input_shape(tensor.get("shape"), shape, max_windows)
    params = _params(tensor, "inputs[0].parameters")
    if "shared_memory_region" in params:
        raise V2Error(
            "inputs[0].parameters.shared_memory_region",
            "shared memory is not supported; send the tensor in the body",
        )
    if params.get("binary_data_size") is not None:
        arr, where = _binary_input(tensor, params, body, size, dims), "inputs[0]"
    else:
        if size is not None and size < len(body):
            raise V2Error(
                "body", f"has {len(body) - size} bytes after the JSON header, but no input "
                "has parameters.binary_data_size"
            )  # fmt: skip
        arr, where = _json_input(tensor, dims), "inputs[0].data"
    if not np.isfinite(arr).all():
        b, t, f = np.argwhere(~np.isfinite(arr))[0]
        raise V2Error(where, f"must be finite; window {b}, step {t}, feature {f} is {arr[b, t, f]}")
    return arr


def _binary_input(
    tensor: Mapping[str, Any],
    params: Mapping[str, Any],
    body: bytes,
    size: int | None,
    dims: list[int],
) -> np.ndarray:
    nbytes = params["binary_data_size"]
    where = "inputs[0].parameters.binary_data_size"
    if not _int_param(nbytes):
        raise V2Error(where, f"must be a whole number of bytes, got {nbytes!r}")
    if "data" in tensor:
        raise V2Error("inputs[0].data", "must be absent when binary_data_size is given")
    count = dims[0] * dims[1] * dims[2]
    if nbytes != count * _FP32.itemsize:
        raise V2Error(
            where, f"is {nbytes} bytes; shape {dims} of {DATATYPE} needs "
            f"{count * _FP32.itemsize} ({dims[0]} x {dims[1]} x {dims[2]} x 4)"
        )  # fmt: skip
    if size is None:
        raise V2Error(HEADER_LENGTH, "is required when an input has binary_data_size")
    if len(body) - size != nbytes:
        raise V2Error(
            "body", f"has {len(body) - size} bytes after the {size}-byte JSON header; "
            f"inputs[0] has binary_data_size {nbytes}"
        )  # fmt: skip
    arr = np.frombuffer(body, dtype=_FP32, count=count, offset=size)
    return arr.astype(np.float32, copy=False).reshape(dims)


def _json_input(tensor: Mapping[str, Any], dims: list[int]) -> np.ndarray:
    """``data``: numbers only (flat row-major, or nested), as FP32 takes them; a number
    beyond float32 becomes inf and is refused by the caller."""
    data = number_tensor(tensor.get("data"), "inputs[0].data", depth=len(dims), error=V2Error)
    if data.size != dims[0] * dims[1] * dims[2]:
        raise V2Error("inputs[0].data", f"has {data.size} values; shape {dims} needs the product")
    return data.reshape(dims)


def _wanted(outputs: Any, as_binary: bool) -> dict[str, bool]:
    """The requested outputs -> binary or not, in OUTPUT_NAMES order (absent: all)."""
    if outputs is None:
        return dict.fromkeys(OUTPUT_NAMES, as_binary)
    if not isinstance(outputs, list) or not outputs:
        raise V2Error("outputs", 'must be a non-empty list of {"name": ...} or absent')
    wanted: dict[str, bool] = {}
    for i, o in enumerate(outputs):
        name = o.get("name") if isinstance(o, Mapping) else None
        if name not in OUTPUT_NAMES:
            raise V2Error(f"outputs[{i}].name", f"must be one of {', '.join(OUTPUT_NAMES)}")
        params = _params(o, f"outputs[{i}].parameters")
        for unsupported in ("shared_memory_region", "classification"):
            if unsupported in params:
                raise V2Error(f"outputs[{i}].parameters.{unsupported}", "is not supported")
        binary = params.get("binary_data", as_binary)
        if not isinstance(binary, bool):
            raise V2Error(f"outputs[{i}].parameters.binary_data", "must be true or false")
        wanted[name] = binary
    return {n: wanted[n] for n in OUTPUT_NAMES if n in wanted}


# --- responses ----------------------------------------------------------------------------
def encode_response(
    head: Mapping[str, Any], outputs: np.ndarray, wanted: Mapping[str, bool]
) -> tuple[bytes, dict[str, str]]:
    """The infer response for model outputs ``(B, 3)`` (columns :data:`OUTPUT_NAMES`):
    ``head`` (``id``, ``model_name``, ``model_version``) and the ``wanted`` outputs, each as
    binary or JSON. Returns the body and its headers (content type, and the
    ``Inference-Header-Content-Length`` when any output is binary)."""
    tensors, chunks = [], []
    for name, binary in wanted.items():
        column = np.ascontiguousarray(outputs[:, OUTPUT_NAMES.index(name)], dtype=_FP32)
        tensor: dict[str, Any] = {"name": name, "datatype": DATATYPE, "shape": [len(column)]}
        if binary:
            chunks.append(column.tobytes())
            tensor["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            tensor["data"] = column
        tensors.append(tensor)
    header = dumps({**head, "outputs": tensors})
    if not chunks:
        return header, {"content-type": JSON_TYPE}
    headers = {"content-type": BINARY_TYPE, HEADER_LENGTH: str(len(header))}
    return b"".join([header, *chunks]), headers


def decode_response(body: bytes, length: str | None, n: int) -> tuple[dict[str, Any], np.ndarray]:
    """An infer response (``length``: its ``Inference-Header-Content-Length``, or ``None``)
    -> its JSON header and float32 ``(n, 3)`` in the order ``p_lstm, p_tft, bull_prob``.

    Outputs may be binary or JSON, FP16/FP32/FP64, shape ``[n]`` or ``[n, 1]``, and must be
    finite. Raises :class:`WireError` naming the field.
    """
    size = header_length(length, len(body), WireError)
    try:
        doc = loads(body[:size] if size is not None else body)
    except WireError:
        raise WireError("body", "the JSON header does not parse") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("outputs"), list):
        raise WireError("outputs", "is missing: not a V2 infer response")
    tensors = _binary_spans(doc["outputs"], len(body), size)
    out = np.empty((n, len(OUTPUT_NAMES)), dtype=np.float32)
    for k, name in enumerate(OUTPUT_NAMES):
        if name not in tensors:
            raise WireError("outputs", f"has no tensor {name!r}")
        out[:, k] = _output(name, *tensors[name], body, n)
    return doc, out


def _binary_spans(
    outputs: list[Any], total: int, size: int | None
) -> dict[str, tuple[Mapping[str, Any], tuple[int, int] | None]]:
    """Output name -> (tensor, ``(offset, nbytes)`` of its bytes or ``None`` for JSON)."""
    found: dict[str, tuple[Mapping[str, Any], tuple[int, int] | None]] = {}
    offset = total if size is None else size
    for o in outputs:
        if not isinstance(o, Mapping):
            continue
        name = o.get("name")
        params = o.get("parameters")
        nbytes = params.get("binary_data_size") if isinstance(params, Mapping) else None
        span = None
        if nbytes is not None:
            where = f"outputs.{name}.parameters.binary_data_size"
            if not _int_param(nbytes) or offset + nbytes > total:
                raise WireError(where, f"is {nbytes!r}; the body has {total - offset} bytes left")
            span, offset = (offset, nbytes), offset + nbytes
        found[str(name)] = (o, span)
    if offset != total:
        raise WireError("body", f"has {total - offset} bytes that no output accounts for")
    return found


def _output(
    name: str, tensor: Mapping[str, Any], span: tuple[int, int] | None, body: bytes, n: int
) -> np.ndarray:
    datatype = tensor.get("datatype")
    if datatype not in FLOAT_DTYPES:
        raise WireError(f"outputs.{name}.datatype", f"is {datatype!r}")
    if tensor.get("shape") not in ([n], [n, 1]):
        raise WireError(
            f"outputs.{name}.shape", f"is {tensor.get('shape')!r}, expected [{n}] or [{n}, 1]"
        )
    if span is not None:
        dtype = np.dtype(FLOAT_DTYPES[datatype])
        if span[1] != n * dtype.itemsize:
            raise WireError(
                f"outputs.{name}.parameters.binary_data_size",
                f"is {span[1]} bytes for {n} {datatype} values",
            )
        data = np.frombuffer(body, dtype=dtype, count=n, offset=span[0])
    else:
        try:
            data = np.asarray(tensor.get("data"), dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise WireError(f"outputs.{name}.data", "is not a list of numbers") from None
        if data.size != n:
            raise WireError(f"outputs.{name}.data", f"has {data.size} values for {n} windows")
    if not np.isfinite(data).all():
        raise WireError(f"outputs.{name}.data", "is not finite")
    return data  # FP32 comes back exactly: bytes as they were, or a float32's JSON digits
