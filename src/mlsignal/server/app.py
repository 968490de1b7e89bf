"""The FastAPI app: v1 JSON routes, health, metrics, admin reload, and the V2 router.

Layering: imports wire, inference, runtime (through state), bundle, config and errors;
never the client or the enhancer. Every answer is JSON through orjson; every error is
``{"error": "..."}`` and never a stack trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from types import ModuleType
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware

from mlsignal import wire
from mlsignal.data import timeframe
from mlsignal.errors import (
    BundleError,
    DataError,
    DeadlineError,
    DrainingError,
    MLSignalError,
    QueueFullError,
    ReloadBusyError,
    VersionPinError,
)
from mlsignal.pipeline import Prepared, finish, prepare_many
from mlsignal.server import v2
from mlsignal.server.admission import RETRY_AFTER_S, AdmissionMiddleware, deadline_of, within
from mlsignal.server.auth import AuthMiddleware
from mlsignal.server.forwarder import Forwarder
from mlsignal.server.limits import BodyLimitMiddleware, note_error
from mlsignal.server.metrics import CONTENT_TYPE, MetricsMiddleware
from mlsignal.server.state import (
    ModelState,
    ServerConfig,
    Services,
    check_pin,
    json_response,
    model_fields,
    services,
)
from mlsignal.signature import OUTPUT_NAMES

log = logging.getLogger(__name__)


def create_app(
    config: ServerConfig, state: ModelState, forwarder: Forwarder | None = None
) -> FastAPI:
    """Build the app around a loaded :class:`ModelState`.

    ``forwarder`` is the forward seam (:class:`~mlsignal.server.forwarder.Forwarder`): by
    default the in-process :class:`~mlsignal.server.batcher.Batcher`; the Ray engine passes
    a :class:`~mlsignal.server.ray_engine.RayForwarder` that sends windows to model replicas.
    """
    svc = Services(config, state, forwarder)
    app = FastAPI(
        title="mlsignal",
        lifespan=_lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        middleware=[
            Middleware(MetricsMiddleware, metrics=svc.metrics),
            Middleware(AuthMiddleware, keys=config.api_keys),
            Middleware(AdmissionMiddleware, max_inflight=config.max_inflight),
            Middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes),
        ],
    )
    app.state.services = svc
    _add_error_handlers(app)
    app.include_router(router)
    app.include_router(v2.router)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    svc: Services = app.state.services
    svc.batcher.start()
    grpc_v2 = _grpc_service(app)
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()

    def on_sighup() -> None:
        task = loop.create_task(_reload_on_signal(svc))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    try:
        if grpc_v2 is not None:
            await grpc_v2.start_grpc(app, svc)
        yield
    finally:
        svc.draining = True
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGHUP)
        if grpc_v2 is not None:  # its calls in flight finish while the batcher still runs
            await grpc_v2.stop_grpc(app)
        await svc.batcher.close()
        svc.pool.shutdown(wait=True)
        log.info("drained: batcher empty, worker threads stopped")


def _grpc_service(app: FastAPI) -> ModuleType | None:
    """:mod:`~mlsignal.server.grpc_v2` when ``attach_grpc`` asked for the gRPC service (only
    then is grpc imported), else ``None``."""
    if getattr(app.state, "grpc", None) is None:
        return None
    from mlsignal.server import grpc_v2

    return grpc_v2


async def _reload_on_signal(svc: Services) -> None:
    try:
        await reload_model(svc, None)
    except Exception as e:  # a failed reload keeps the old model
        log.error("SIGHUP reload failed, still serving the old model: %s", e)


async def reload_model(svc: Services, path: str | None) -> ModelState:
    """Reload (default: the same bundle path) and count the outcome."""
    try:
        new = await svc.holder.reload(path)
    except ReloadBusyError:
        raise
    except Exception:
        svc.metrics.reloads.labels("failed").inc()
        raise
    svc.metrics.reloads.labels("ok").inc()
    return new


# --- errors -------------------------------------------------------------------------------
#: (exception class, status, metrics kind, extra headers); first match wins.
_ERRORS: tuple[tuple[type[Exception], int, str, dict[str, str]], ...] = (
    (VersionPinError, 409, "version_mismatch", {}),
    (ReloadBusyError, 409, "reload_busy", {}),
    (QueueFullError, 503, "overloaded", {"Retry-After": RETRY_AFTER_S}),
    (DrainingError, 503, "draining", {"Retry-After": RETRY_AFTER_S}),
    (DeadlineError, 504, "deadline", {}),
    (DataError, 422, "invalid", {}),
    (BundleError, 422, "reload_failed", {}),
)


def _add_error_handlers(app: FastAPI) -> None:
    for cls, status, kind, headers in _ERRORS:
        app.add_exception_handler(cls, _handler(status, kind, headers))
    app.add_exception_handler(StarletteHTTPException, _http_error)


def _handler(status: int, kind: str, headers: dict[str, str]) -> Callable[..., Any]:
    async def handle(request: Request, exc: Exception) -> Response:
        code = status
        if code == 422 and request.url.path.startswith("/v2/"):
            code = 400  # the V2 protocol answers a bad request with 400
        note_error(request.scope, kind)
        return json_response({"error": str(exc)}, code, headers or None)

    return handle


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    detail = exc.detail
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"not found: {request.url.path}"
    return json_response({"error": str(detail)}, exc.status_code, exc.headers)


# --- the v1 steps, shared by routes -------------------------------------------------------
#: Symbols one pool task prepares; a bigger request is cut in ``threads`` parts.
SMALL_REQUEST = 16
#: Bodies up to this size (a few symbols of a few hundred bars: well under a millisecond of
#: numpy) are decoded and prepared on the event loop: a thread hop costs more than the work.
INLINE_BODY_BYTES = 64 << 10


def decode_enhance(body: bytes, config: ServerConfig) -> wire.EnhanceCall:
    """Parse and validate an enhance body (in the pool: big bodies take milliseconds)."""
    return wire.decode_enhance(wire.loads(body), config.max_symbols, config.max_bars)


def prepare_items(state: ModelState, items: list[wire.EnhanceItem]) -> list[Prepared]:
    """Items -> prepared windows with their GARCH ``regime_vol`` (numpy, no pandas on clean
    bars, computed across the items at once); the same numbers and errors as
    :func:`~mlsignal.pipeline.prepare`."""
    return prepare_many(
        state.bundle,
        [(i.symbol, i.arrays.t_ms, i.arrays.ohlcv, i.ss, i.bs, i.arrays.frame) for i in items],
    )


def decode_prepare(
    body: bytes, config: ServerConfig, state: ModelState
) -> tuple[wire.EnhanceCall, list[Prepared] | None]:
    """Decode, check the pin and, for a small request, prepare it: one pool task."""
    call = decode_enhance(body, config)
    check_pin(call.contract_hash, state)
    if len(call.items) > SMALL_REQUEST:
        return call, None
    return call, prepare_items(state, call.items)


def finish_all(
    state: ModelState, prepared: list[Prepared], out: np.ndarray, latency_ms: float
) -> list[dict[str, Any]]:
    """Model outputs -> wire results, with the same ``finish`` as in-process inference."""
    results = []
    for p, row in zip(prepared, out, strict=True):
        r = finish(
            state.bundle,
            p,
            row,
            device=state.device,
            backend=state.backend,
            latency_ms=latency_ms,
            source="local",
        )
        results.append(wire.result_to_wire(r.symbol, r.enhanced_ss, r.enhanced_bs, r.ml_info))
    return results


async def enhance(svc: Services, request: Request) -> dict[str, Any]:
    """``POST /v1/enhance``: decode + pin + prepare on the loop (small bodies) or in ONE pool
    task (a big request: in ``threads`` parts), then the batcher; ``finish`` (GARCH done in
    prepare) runs on the loop for a small request. The deadline (``deadline_ms``, else the
    header, else the server's default) counts from the request's arrival."""
    t0 = time.perf_counter()
    state = svc.holder.current
    body = await request.body()
    if len(body) <= INLINE_BODY_BYTES:
        call, prepared = decode_prepare(body, svc.config, state)
    else:
        call, prepared = await svc.blocking(decode_prepare, body, svc.config, state)
    deadline = deadline_of(request.scope, call.deadline_ms, svc.config.default_deadline_ms)
    return await within(deadline, _enhance_rest(svc, state, call, prepared, deadline, t0))


async def _enhance_rest(
    svc: Services,
    state: ModelState,
    call: wire.EnhanceCall,
    prepared: list[Prepared] | None,
    deadline: float | None,
    t0: float,
) -> dict[str, Any]:
    if prepared is None:
        k = -(-len(call.items) // svc.config.threads)
        parts = [call.items[i : i + k] for i in range(0, len(call.items), k)]
        done = await asyncio.gather(*(svc.blocking(prepare_items, state, p) for p in parts))
        prepared = [p for part in done for p in part]
    if not svc.config.allow_timeframe_mismatch:
        timeframe.check(timeframe.bundle_seconds(state.bundle.config), prepared)
    windows = np.stack([p.window for p in prepared])
    out = await svc.batcher.submit(state.runtime, windows, deadline)
    latency_ms = (time.perf_counter() - t0) * 1e3
    if len(prepared) > SMALL_REQUEST:
        results = await svc.blocking(finish_all, state, prepared, out, latency_ms)
    else:
        results = finish_all(state, prepared, out, latency_ms)
    return {**model_fields(state), "results": results}


def reload_path(body: bytes) -> str | None:
    """The optional ``{"bundle": "path"}`` of an admin reload."""
    if not body.strip():
        return None
    doc = wire.loads(body)
    if not isinstance(doc, dict):
        raise wire.WireError("body", "must be a JSON object")
    path = doc.get("bundle")
    if path is not None and (not isinstance(path, str) or not path):
        raise wire.WireError("bundle", "must be a non-empty string path or null")
    return path


def metrics_response(svc: Services) -> Response:
    """The Prometheus exposition."""
    svc.metrics.queue_depth.set(svc.batcher.depth)
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE)


# --- routes -------------------------------------------------------------------------------
router = APIRouter()


@router.get("/healthz")
async def healthz() -> Response:
    """Alive: the process answers."""
    return json_response({"status": "alive"})


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """Ready: bundle loaded, parity checked, warmed up, not draining."""
    svc = services(request)
    if not svc.ready:
        return json_response({"ready": False, "error": "not ready: shutting down"}, 503)
    b = svc.holder.current.bundle
    return json_response({"ready": True, "model_version": b.model_version})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    return metrics_response(services(request))


@router.get("/v1/models")
async def models(request: Request) -> Response:
    """The served model: version, contract hash, device, backend, schema, warm-up, parity."""
    svc = services(request)
    doc = {**svc.holder.current.describe(), "ready": svc.ready, "pid": os.getpid()}
    return json_response(doc)


@router.post("/v1/enhance")
async def enhance_route(request: Request) -> Response:
    """Bars + rule scores of one or many symbols -> enhanced scores and ml_info."""
    return json_response(await enhance(services(request), request))


@router.post("/v1/predict")
async def predict_route(request: Request) -> Response:
    """Feature windows ``(B, T, F)`` -> model outputs ``(B, 3)``."""
    svc, body = services(request), await request.body()
    state = svc.holder.current
    shape = (state.bundle.schema.window, state.bundle.schema.n_features)
    deadline = deadline_of(request.scope, None, svc.config.default_deadline_ms)
    doc = await svc.blocking(wire.loads, body)
    check_pin(doc.get("contract_hash") if isinstance(doc, dict) else None, state)
    windows = await svc.blocking(wire.decode_windows, doc, shape, svc.config.max_symbols)
    out = await within(deadline, svc.batcher.submit(state.runtime, windows, deadline))
    names = list(OUTPUT_NAMES)
    return json_response({"names": names, "outputs": out, **model_fields(state)})


@router.post("/v1/admin/reload")
async def reload_route(request: Request) -> Response:
    """Load, verify, warm and swap a bundle (default: the same path); old model on failure."""
    svc = services(request)
    path = reload_path(await request.body())
    old = svc.holder.current
    try:
        new = await reload_model(svc, path)
    except ReloadBusyError:
        raise
    except MLSignalError as e:
        note_error(request.scope, "reload_failed")
        status = 422 if isinstance(e, DataError | BundleError) else 500
        return json_response({"error": f"reload failed, old model kept: {e}"}, status)
    return json_response(
        {
            "reloaded": True,
            "previous": {"model_version": old.bundle.model_version,
                         "contract_hash": old.bundle.contract_hash},
            **new.describe(),
        }
    )  # fmt: skip
