"""The Open Inference Protocol (KServe V2) REST endpoints for the served model.

One model, named ``mlsignal``; its version is the bundle's contract hash (the model
version string is accepted too). Input ``windows`` FP32 ``[-1, T, F]``; outputs ``p_lstm``,
``p_tft``, ``bull_prob`` FP32 ``[-1]``. Health answers 200 for true and 400 for false;
errors are ``{"error": "..."}``: 400 for a bad request, 404 for an unknown model or version.

Tensors travel as JSON or with the binary tensor data extension (``extensions`` lists
``binary_tensor_data``), exactly as ``tritonclient.http`` sends them by default; the codec is
:mod:`mlsignal.wire.v2`. A request body may be gzip- or deflate-compressed
(``Content-Encoding``); answers are never compressed (``Accept-Encoding`` is not honoured,
which HTTP allows). A binary request is decoded on the event loop (``np.frombuffer`` on the
body); a JSON one in the worker pool. Request-level ``parameters.timeout`` (microseconds) is
the request's deadline from arrival: past it, 504.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.exceptions import HTTPException

from mlsignal import __version__
from mlsignal.errors import DeadlineError, V2Error
from mlsignal.server.admission import deadline_of, within
from mlsignal.server.state import ModelState, Services, json_response, services
from mlsignal.signature import DATATYPE, INPUT_NAME, MODEL_NAME, OUTPUT_NAMES, platform
from mlsignal.wire import v2 as v2wire

router = APIRouter(prefix="/v2")


def _model(svc: Services, name: str, version: str | None) -> ModelState:
    """The served model if ``name``/``version`` name it, else a 404."""
    state = svc.holder.current
    problem = unknown_model(state, name, version)
    if problem is not None:
        raise HTTPException(404, problem)
    return state


def unknown_model(state: ModelState, name: str, version: str | None) -> str | None:
    """Why ``name``/``version`` do not name the served model (404, gRPC NOT_FOUND), or None.

    ``version``: the contract hash or the model version string; ``None`` for any.
    """
    if name != MODEL_NAME:
        return f"unknown model {name!r}; this server serves {MODEL_NAME!r}"
    versions = (state.bundle.contract_hash, state.bundle.model_version)
    if version is not None and version not in versions:
        return f"unknown version {version!r} of model {MODEL_NAME!r}"
    return None


def _health(ok: bool) -> Response:
    return Response(status_code=200 if ok else 400)


@router.get("")
async def server_metadata() -> Response:
    """Server metadata: name, version, extensions."""
    doc = {"name": MODEL_NAME, "version": __version__, "extensions": [v2wire.BINARY_EXTENSION]}
    return json_response(doc)


@router.get("/health/live")
async def live() -> Response:
    """Server live: 200."""
    return _health(True)


@router.get("/health/ready")
async def ready(request: Request) -> Response:
    """Server ready: 200 when the model is ready, 400 otherwise."""
    return _health(services(request).ready)


def metadata(state: ModelState) -> dict[str, Any]:
    """The model metadata document."""
    schema = state.bundle.schema
    return {
        "name": MODEL_NAME,
        "versions": [state.bundle.contract_hash],
        "platform": platform(state.backend),
        "inputs": [
            {
                "name": INPUT_NAME,
                "datatype": DATATYPE,
                "shape": [-1, schema.window, schema.n_features],
            }
        ],
        "outputs": [{"name": n, "datatype": DATATYPE, "shape": [-1]} for n in OUTPUT_NAMES],
    }


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def model_metadata(request: Request, name: str, version: str | None = None) -> Response:
    """Model metadata: name, versions, platform, inputs, outputs."""
    return json_response(metadata(_model(services(request), name, version)))


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    """Model ready: 200 or 400; 404 for an unknown model."""
    svc = services(request)
    _model(svc, name, version)
    return _health(svc.ready)


@router.post("/models/{name}/infer")
@router.post("/models/{name}/versions/{version}/infer")
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """Inference with JSON or binary tensors (:mod:`mlsignal.wire.v2`); the outputs equal
    ``/v1/predict``'s for the same windows, bit for bit."""
    t0 = time.perf_counter()
    svc = services(request)
    state = _model(svc, name, version)
    body = content(await request.body(), request.headers, svc.config.max_body_bytes)
    length = request.headers.get(v2wire.HEADER_LENGTH)
    shape = (state.bundle.schema.window, state.bundle.schema.n_features)
    args = (body, length, shape, svc.config.max_symbols)
    if length is not None:  # binary: np.frombuffer, cheaper than a thread hop
        call = v2wire.decode_request(*args)
    else:
        call = await svc.blocking(v2wire.decode_request, *args)
    budget_ms = call.timeout_us / 1e3 if call.timeout_us else None
    deadline = deadline_of(request.scope, budget_ms, svc.config.default_deadline_ms)
    if budget_ms is not None and (time.perf_counter() - t0) * 1e3 >= budget_ms:
        raise DeadlineError()  # the loop's clock may tick in milliseconds: decoding, exactly
    out = await within(deadline, svc.batcher.submit(state.runtime, call.windows, deadline))
    head: dict[str, Any] = {"model_name": MODEL_NAME, "model_version": state.bundle.contract_hash}
    if call.id is not None:
        head = {"id": call.id, **head}
    data, headers = v2wire.encode_response(head, out, call.outputs)
    return Response(data, 200, headers)


def content(body: bytes, headers: Mapping[str, str], max_bytes: int) -> bytes:
    """The request body with its ``Content-Encoding`` (``gzip``, ``deflate``, as
    ``tritonclient`` may send) undone, at most ``max_bytes`` of it; else a V2Error."""
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise V2Error("Content-Encoding", f"{encoding!r} is not supported; use gzip or deflate")
    inflate = zlib.decompressobj(wbits)
    try:
        out = inflate.decompress(body, max_bytes + 1)
    except zlib.error as e:
        raise V2Error("Content-Encoding", f"the body is not valid {encoding} ({e})") from None
    if len(out) > max_bytes or inflate.unconsumed_tail:
        raise V2Error("body", f"decompressed, it exceeds the limit of {max_bytes} bytes")
    return out
