"""The Open Inference Protocol (KServe V2) REST endpoints for the served model.

One model, named ``mlsignal``; its version is the bundle's contract hash (the model
version string is accepted too). Input ``windows`` FP32 ``[-1, T, F]``; outputs ``p_lstm``,
``p_tft``, ``bull_prob`` FP32 ``[-1]``. Health answers 200 for true and 400 for false;
errors are ``{"error": "..."}``: 400 for a bad request, 404 for an unknown model or version.
The binary tensor extension is not supported, so ``extensions`` is empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from starlette.exceptions import HTTPException

from mlsignal import __version__, wire
from mlsignal.errors import V2Error
from mlsignal.server.state import ModelState, Services, json_response, services
from mlsignal.signature import DATATYPE, INPUT_NAME, MODEL_NAME, OUTPUT_NAMES, platform

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
    return json_response({"name": MODEL_NAME, "version": __version__, "extensions": []})


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
    """Inference with JSON tensors; the outputs equal ``/v1/predict``'s for the same windows."""
    svc = services(request)
    state = _model(svc, name, version)
    body = await request.body()
    shape = (state.bundle.schema.window, state.bundle.schema.n_features)
    req_id, windows, wanted = await svc.blocking(decode_infer, body, shape, svc.config.max_symbols)
    out = await svc.batcher.submit(state.runtime, windows)
    doc: dict[str, Any] = {"model_name": MODEL_NAME, "model_version": state.bundle.contract_hash}
    if req_id is not None:
        doc["id"] = req_id
    doc["outputs"] = [
        {
            "name": n,
            "datatype": DATATYPE,
            "shape": [len(out)],
            "data": np.ascontiguousarray(out[:, k]),
        }
        for k, n in enumerate(OUTPUT_NAMES)
        if n in wanted
    ]
    return json_response(doc)


def decode_infer(
    body: bytes, shape: tuple[int, int], max_windows: int
) -> tuple[str | None, np.ndarray, set[str]]:
    """Validate an inference request -> (id, windows ``(B, T, F)``, requested outputs)."""
    doc = wire.loads(body)
    if not isinstance(doc, Mapping):
        raise V2Error("body", "must be a JSON object")
    req_id = doc.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise V2Error("id", "must be a string")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise V2Error("inputs", f"must be a list with one tensor named {INPUT_NAME!r}")
    windows = _windows(inputs[0], shape, max_windows)
    return req_id, windows, wanted_outputs(doc.get("outputs"))


def _windows(tensor: Any, shape: tuple[int, int], max_windows: int) -> np.ndarray:
    if not isinstance(tensor, Mapping):
        raise V2Error("inputs[0].name", f"must be {INPUT_NAME!r}")
    check_input_type(tensor.get("name"), tensor.get("datatype"))
    params = tensor.get("parameters") or {}
    if not isinstance(params, Mapping) or params.get("binary_data_size") is not None:
        raise V2Error("inputs[0].parameters", "binary tensor data is not supported; send JSON")
    dims = check_input_shape(tensor.get("shape"), shape, max_windows)
    try:
        data = np.asarray(tensor.get("data"), dtype=np.float32)
    except (TypeError, ValueError):
        raise V2Error("inputs[0].data", "must be a list of numbers in row-major order") from None
    if data.size != dims[0] * shape[0] * shape[1]:
        raise V2Error("inputs[0].data", f"has {data.size} values; shape {dims} needs the product")
    if not np.isfinite(data).all():
        raise V2Error("inputs[0].data", "must be finite")
    return data.reshape(dims)


def check_input_type(name: Any, datatype: Any) -> None:
    """The one input's ``name`` and ``datatype`` (REST and gRPC), or a :class:`V2Error`."""
    if name != INPUT_NAME:
        raise V2Error("inputs[0].name", f"must be {INPUT_NAME!r}")
    if datatype != DATATYPE:
        raise V2Error("inputs[0].datatype", f"must be {DATATYPE!r}, got {datatype!r}")


def check_input_shape(dims: Any, shape: tuple[int, int], max_windows: int) -> list[int]:
    """The input's ``[B, T, F]`` against the model's ``(T, F)`` and ``1 <= B <= max_windows``
    (REST and gRPC); ``dims`` as a list, or a :class:`V2Error` naming ``inputs[0].shape``."""
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
    if outputs is None:
        return set(OUTPUT_NAMES)
    if not isinstance(outputs, list) or not outputs:
        raise V2Error("outputs", 'must be a non-empty list of {"name": ...} or absent')
    wanted = set()
    for i, o in enumerate(outputs):
        name = o.get("name") if isinstance(o, Mapping) else None
        if name not in OUTPUT_NAMES:
            raise V2Error(f"outputs[{i}].name", f"must be one of {', '.join(OUTPUT_NAMES)}")
        wanted.add(name)
    return wanted
