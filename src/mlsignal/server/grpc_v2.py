"""The Open Inference Protocol (KServe V2) gRPC service, served beside the HTTP app.

``mlsignal serve --grpc-port PORT`` answers ``inference.GRPCInferenceService`` (ServerLive,
ServerReady, ServerMetadata, ModelMetadata, ModelReady, ModelInfer; see
``proto/grpc_service.proto``) on its own port, in the same process as the HTTP app:

- one loop: a ``grpc.aio`` server on the app's running event loop (uvicorn's uvloop),
  started and stopped by the app's lifespan (:func:`attach_grpc`). ModelInfer hands its
  windows to the same :class:`~mlsignal.server.forwarder.Forwarder` as the HTTP routes, so
  gRPC and HTTP requests share batches on one GPU stream and one admission bound;
- one model: every call reads ``holder.current`` once, so a hot reload (SIGHUP,
  ``/v1/admin/reload``) applies to gRPC too and never changes the model under a call;
- one contract: names, versions, shapes and messages are the REST routes' (:mod:`.v2`);
  an unknown model or version is NOT_FOUND, a bad request INVALID_ARGUMENT naming the
  field, a full queue or a draining server UNAVAILABLE (trailing ``retry-after: 1``), a
  passed deadline DEADLINE_EXCEEDED. The client's gRPC deadline is the batcher deadline;
- one set of keys: with API keys, every rpc but ServerLive/ServerReady needs metadata
  ``authorization: Bearer <key>`` or ``x-api-key: <key>`` (checked in constant time),
  else UNAUTHENTICATED; with ``--ssl-certfile/--ssl-keyfile`` the port speaks TLS;
- one drain: on SIGTERM the port takes no new calls at once and calls in flight get the
  grace period, before the batcher closes. (A call gRPC core had read but not yet handed
  to a handler when the port closed ends CANCELLED, not UNAVAILABLE: grpc/grpc#41785.)

Calls are counted in the app's metrics under their method path (``route``) with the gRPC
status name (``status``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from mlsignal import __version__
from mlsignal.errors import (
    ConfigError,
    DataError,
    DeadlineError,
    DrainingError,
    QueueFullError,
    UnavailableError,
)
from mlsignal.server import proto
from mlsignal.server.auth import UNAUTHORIZED, key_ok, presented_key
from mlsignal.server.grpc_codec import decode_infer, infer_response, metadata_response
from mlsignal.server.state import ModelState, Services
from mlsignal.server.v2 import metadata, unknown_model
from mlsignal.signature import MODEL_NAME

log = logging.getLogger(__name__)

Code = grpc.StatusCode
#: Answered without an API key, like ``/v2/health/live`` and ``/v2/health/ready``.
PUBLIC_METHODS = frozenset({"ServerLive", "ServerReady"})
#: Seconds calls in flight get to finish after SIGTERM (uvicorn's graceful shutdown is 30).
GRACE_S = 30.0
_RETRY_AFTER = (("retry-after", "1"),)


@dataclass(frozen=True)
class GrpcConfig:
    """Where and how the gRPC service listens.

    ``certfile``/``keyfile``: PEM files for TLS (both or neither). ``grace_s``: seconds
    calls in flight get on shutdown. ``reuse_port``: let several processes bind the port
    (SO_REUSEPORT, for several ingress processes); off, a port already taken is an error.
    """

    port: int
    host: str = "127.0.0.1"
    certfile: str | None = None
    keyfile: str | None = None
    grace_s: float = GRACE_S
    reuse_port: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ConfigError(f"--grpc-port must be a port number, got {self.port!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--grpc-port must be in 0..65535, got {self.port}")
        if bool(self.certfile) != bool(self.keyfile):
            raise ConfigError("--ssl-certfile and --ssl-keyfile go together")

    @property
    def address(self) -> str:
        """``host:port`` as gRPC takes it (an IPv6 address in brackets)."""
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port}"


def attach_grpc(app: Any, config: GrpcConfig) -> None:
    """Serve the V2 gRPC service beside the FastAPI ``app`` of :func:`~.app.create_app`:
    its lifespan starts it after the batcher and stops it (drained) before the batcher."""
    app.state.grpc = config


def draining_grpc(app: Any) -> Awaitable[None] | None:
    """Start draining ``app``'s running gRPC server now (no new calls; calls in flight get
    the grace period); the awaitable finishes when it has stopped. ``None`` without one."""
    server: GrpcServer | None = getattr(app.state, "grpc_server", None)
    return None if server is None else server.stop()


class _Abort(Exception):
    """A gRPC status decided by a handler (NOT_FOUND, UNAUTHENTICATED)."""

    def __init__(self, code: grpc.StatusCode, message: str, kind: str) -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind


def status_of(exc: Exception) -> tuple[grpc.StatusCode, str, str]:
    """An exception of a call -> (gRPC status, message, metrics error kind)."""
    if isinstance(exc, _Abort):
        return exc.code, str(exc), exc.kind
    if isinstance(exc, DeadlineError):
        return Code.DEADLINE_EXCEEDED, str(exc), "deadline"
    if isinstance(exc, QueueFullError):
        return Code.UNAVAILABLE, str(exc), "overloaded"
    if isinstance(exc, DrainingError):
        return Code.UNAVAILABLE, str(exc), "draining"
    if isinstance(exc, UnavailableError):  # e.g. no Ray replica answered
        return Code.UNAVAILABLE, str(exc), "unavailable"
    if isinstance(exc, DataError):  # V2Error: the message names the field
        return Code.INVALID_ARGUMENT, str(exc), "invalid"
    return Code.INTERNAL, "internal error", "internal"


def _metadata_key(metadata: Any) -> bytes | None:
    """The API key of a call's metadata (``authorization: Bearer``, or ``x-api-key``)."""
    headers = {}
    for key, value in metadata or ():
        if isinstance(value, str):  # binary (-bin) entries never carry a key
            headers[key.lower().encode()] = value.encode()
    return presented_key(headers)


class V2Servicer:
    """The rpcs of ``inference.GRPCInferenceService`` over the app's :class:`Services`."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.keys = svc.config.api_keys

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler of every rpc in the ``.proto``'s service."""
        impl: dict[str, Callable[..., Awaitable[Any]]] = {
            "ServerLive": self.server_live,
            "ServerReady": self.server_ready,
            "ServerMetadata": self.server_metadata,
            "ModelReady": self.model_ready,
            "ModelMetadata": self.model_metadata,
            "ModelInfer": self.model_infer,
        }
        methods = {}
        for m in proto.SERVICE.methods:
            request = proto.message_class(m.input_type.full_name)
            reply = proto.message_class(m.output_type.full_name)
            methods[m.name] = grpc.unary_unary_rpc_method_handler(
                self._guarded(m.name, impl[m.name]),
                request_deserializer=request.FromString,
                response_serializer=reply.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(proto.SERVICE.full_name, methods)

    def _guarded(
        self, name: str, fn: Callable[[Any, Any], Awaitable[Any]]
    ) -> Callable[[Any, Any], Awaitable[Any]]:
        """``fn`` behind the key check, with errors as gRPC statuses and metrics."""
        route = f"/{proto.SERVICE.full_name}/{name}"
        needs_key = bool(self.keys) and name not in PUBLIC_METHODS

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            t0 = time.perf_counter()
            try:
                key = _metadata_key(context.invocation_metadata())
                if needs_key and not key_ok(key, self.keys):
                    raise _Abort(Code.UNAUTHENTICATED, UNAUTHORIZED, "auth")
                reply = await fn(request, context)
            except asyncio.CancelledError:  # the client went away or its deadline passed
                self._observe(route, Code.CANCELLED, None, t0)
                raise
            except Exception as e:
                code, message, kind = status_of(e)
                if code is Code.INTERNAL:
                    log.exception("internal error on gRPC %s", route)
            else:
                self._observe(route, Code.OK, None, t0)
                return reply
            self._observe(route, code, kind, t0)
            trailing = _RETRY_AFTER if code is Code.UNAVAILABLE else ()
            await context.abort(code, message, trailing_metadata=trailing)

        return call

    def _observe(self, route: str, code: grpc.StatusCode, kind: str | None, t0: float) -> None:
        m = self.svc.metrics
        m.latency.labels(route, "GRPC").observe(time.perf_counter() - t0)
        m.requests.labels(route, code.name).inc()
        if kind is not None:
            m.errors.labels(kind).inc()

    def _model(self, name: str, version: str) -> ModelState:
        """The served model, read once for the call; NOT_FOUND as the REST routes' 404."""
        state = self.svc.holder.current
        problem = unknown_model(state, name, version or None)  # "": any version
        if problem is not None:
            raise _Abort(Code.NOT_FOUND, problem, "not_found")
        return state

    # --- rpcs ---------------------------------------------------------------------------
    async def server_live(self, request: Any, context: Any) -> Any:
        """Live: the process answers."""
        return proto.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: Any) -> Any:
        """Ready: the model is loaded, checked and warm, and the server is not draining."""
        return proto.ServerReadyResponse(ready=self.svc.ready)

    async def server_metadata(self, request: Any, context: Any) -> Any:
        """Name, version; no protocol extensions."""
        return proto.ServerMetadataResponse(name=MODEL_NAME, version=__version__, extensions=[])

    async def model_ready(self, request: Any, context: Any) -> Any:
        """Whether the named model (and version) is ready; NOT_FOUND if it is not served."""
        self._model(request.name, request.version)
        return proto.ModelReadyResponse(ready=self.svc.ready)

    async def model_metadata(self, request: Any, context: Any) -> Any:
        """Versions, platform, the input and the outputs, as ``GET /v2/models/mlsignal``."""
        return metadata_response(metadata(self._model(request.name, request.version)))

    async def model_infer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Windows -> the three outputs, through the shared batcher."""
        loop = asyncio.get_running_loop()
        arrived, remaining = loop.time(), context.time_remaining()
        deadline = None if remaining is None else arrived + remaining
        state = self._model(request.model_name, request.model_version)
        shape = (state.bundle.schema.window, state.bundle.schema.n_features)
        limit = self.svc.config.max_symbols
        if request.raw_input_contents:  # bytes: a view and one copy, on the loop
            call = decode_infer(request, shape, limit)
        else:  # typed floats: a loop over every value, off the loop
            call = await self.svc.blocking(decode_infer, request, shape, limit)
        out = await self.svc.batcher.submit(state.runtime, call.windows, deadline)
        return infer_response(state.bundle.contract_hash, call, out)


class GrpcServer:
    """A started ``grpc.aio`` server of the V2 service; :meth:`stop` drains it (idempotent)."""

    def __init__(self, server: grpc.aio.Server, address: str, grace_s: float) -> None:
        self.server = server
        self.address = address
        self.grace_s = grace_s
        self._stopping: asyncio.Future | None = None

    @classmethod
    async def start(cls, svc: Services, config: GrpcConfig) -> GrpcServer:
        """Bind ``config.address`` (TLS with a cert and key) and start serving on this loop."""
        options = [
            # the HTTP body limit bounds a request here too (gRPC's default is 4 MiB)
            ("grpc.max_receive_message_length", svc.config.max_body_bytes),
            ("grpc.so_reuseport", int(config.reuse_port)),
        ]
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers((V2Servicer(svc).handler(),))
        try:
            if config.certfile and config.keyfile:
                port = server.add_secure_port(config.address, _tls(config))
            else:
                port = server.add_insecure_port(config.address)
        except RuntimeError as e:  # grpc raises on a failed bind (older versions return 0)
            raise ConfigError(f"cannot listen for gRPC on {config.address}: {e}") from None
        if not port:
            raise ConfigError(f"cannot listen for gRPC on {config.address}")
        await server.start()
        mode = "tls" if config.certfile else "plaintext"
        log.info("serving gRPC %s on %s:%d (%s)", proto.SERVICE.full_name, config.host, port, mode)
        return cls(server, config.address, config.grace_s)

    async def stop(self) -> None:
        """No new calls; calls in flight get ``grace_s``, then are cancelled."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self.server.stop(self.grace_s))
        await asyncio.shield(self._stopping)


def _tls(config: GrpcConfig) -> grpc.ServerCredentials:
    pems = []
    for flag, path in (("--ssl-keyfile", config.keyfile), ("--ssl-certfile", config.certfile)):
        try:
            pems.append(Path(str(path)).read_bytes())
        except OSError as e:
            raise ConfigError(f"cannot read {flag} {path}: {e.strerror}") from None
    return grpc.ssl_server_credentials([(pems[0], pems[1])])


async def start_grpc(app: Any, svc: Services) -> GrpcServer | None:
    """Start the gRPC server :func:`attach_grpc` asked for (the lifespan calls it); ``None``
    when none was."""
    config: GrpcConfig | None = getattr(app.state, "grpc", None)
    if config is None:
        return None
    server = await GrpcServer.start(svc, config)
    app.state.grpc_server = server
    return server


async def stop_grpc(app: Any) -> None:
    """Drain and stop the gRPC server of ``app``, if one runs (the lifespan calls it)."""
    stopping = draining_grpc(app)
    if stopping is not None:
        await stopping
        log.info("gRPC drained")
