"""``mlsignal serve``: load, verify and warm a bundle, then serve it with uvicorn.

Refuses (exit 2, one line) to listen on a non-loopback address without API keys unless
``--insecure``. SIGTERM/SIGINT drain: no new connections, requests in flight finish, the
batcher empties, exit 0. SIGHUP reloads the bundle (see ``POST /v1/admin/reload``).
With ``--workers N`` (N > 1) this process supervises N such servers on one socket
(:mod:`mlsignal.cli.serve_workers`). ``--grpc-port`` adds the V2 gRPC service
(:mod:`mlsignal.server.grpc_v2`) to each server process and its event loop: same model,
batcher, keys and TLS; drained with HTTP (workers share the gRPC port with SO_REUSEPORT).
HTTP connections go through :mod:`mlsignal.server.protocol` (header size, read timeouts,
keep-alive, connection caps: nginx-like, before any request handling), in every worker.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any

from mlsignal.cli.options import cli_settings, server_config
from mlsignal.cli.sockets import bind, check_port
from mlsignal.errors import ConfigError

if TYPE_CHECKING:
    from mlsignal.server import ServerConfig

log = logging.getLogger("mlsignal.server")

#: Seconds uvicorn waits for requests in flight after SIGTERM before cancelling them.
GRACEFUL_S = 30.0


def _check_tls(args: argparse.Namespace) -> None:
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise ConfigError("--ssl-certfile and --ssl-keyfile go together")


def _grpc_config(args: argparse.Namespace, shared: bool = False) -> Any:
    """The gRPC service's ``GrpcConfig`` for ``--grpc-port`` (same host and TLS files), or
    ``None`` without it; ``shared``: a worker of ``--workers N`` (the port is reused)."""
    if getattr(args, "grpc_port", None) is None:
        return None
    try:
        from mlsignal.server.grpc_v2 import GrpcConfig
    except ImportError as e:
        raise ConfigError(
            f"--grpc-port needs grpcio and protobuf ({e.name} is missing): "
            "pip install 'mlsignal[server]'"
        ) from None
    return GrpcConfig(
        args.grpc_port, args.host, args.ssl_certfile, args.ssl_keyfile, grace_s=GRACEFUL_S,
        reuse_port=shared,
    )  # fmt: skip


def _server(config: Any, app: Any, grpc: bool) -> Any:
    """The ``uvicorn.Server``; with gRPC, its shutdown (SIGTERM) closes the gRPC port at the
    same moment as the HTTP one, and both drain together (the lifespan then waits for both
    before the batcher closes)."""
    import uvicorn

    if not grpc:
        return uvicorn.Server(config)
    from mlsignal.server.grpc_v2 import draining_grpc

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            grpc_drain = draining_grpc(app)
            http_drain = super().shutdown(sockets)
            await asyncio.gather(http_drain, *([grpc_drain] if grpc_drain else []))

    return Server(config)


def _http_protocol(config: ServerConfig, app: Any) -> type:
    """uvicorn's httptools protocol with this process's connection limits, counted in the
    app's metrics (:mod:`mlsignal.server.protocol`)."""
    from mlsignal.server.protocol import ConnectionLimits, protocol_class

    metrics = app.state.services.metrics
    limits = ConnectionLimits.from_config(
        config, on_event=lambda reason: metrics.connections_closed.labels(reason).inc()
    )
    metrics.connections_open.set_function(lambda: limits.open)
    _ensure_fds(config.max_connections + FD_SLACK)
    return protocol_class(limits)


#: File descriptors a server process needs besides its connections (bundle, logs, pipes).
FD_SLACK = 256


def _ensure_fds(needed: int) -> None:
    """Raise the soft open-files limit towards ``needed`` (up to the hard limit), so the
    connection cap, not EMFILE, is what refuses a flood; warn when it stays lower."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        target = soft
    if target < needed:
        log.warning(
            "open-files limit %d is below --max-connections + %d; raise it (LimitNOFILE=)",
            target, FD_SLACK,
        )  # fmt: skip


def check_serve_args(args: argparse.Namespace) -> tuple[tuple[bytes, ...], ServerConfig]:
    """Keys, bind address, TLS, gRPC and limits checked before anything loads (a one-line
    error, exit 2); returns the keys and the server's config. Lifecycle lines always show."""
    from mlsignal.server.auth import check_bind, load_keys

    check_port(args.port)  # --grpc-port: GrpcConfig checks it (0: any free port)
    keys = load_keys(args.api_key_file)
    check_bind(args.host, keys, args.insecure)
    _check_tls(args)
    _grpc_config(args)
    config = server_config(args, keys)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)  # lifecycle lines (start, reload, drain) always show
    return keys, config


def serve(
    args: argparse.Namespace, socks: list[socket.socket] | None = None, worker: int = 0
) -> int:
    """Run the server until SIGTERM/SIGINT; returns the exit code.

    The uvicorn engine; ``--engine ray`` goes to :mod:`mlsignal.cli.serve_ray` instead.
    ``socks``: listening sockets to serve on (a worker of ``--workers N``: see
    :mod:`mlsignal.cli.serve_workers`, which ``mlsignal serve --workers N`` runs instead);
    ``None`` binds ``--host``/``--port`` itself, before the model loads (a port in use is a
    one-line error at once).
    """
    keys, config = check_serve_args(args)
    grpc_config = _grpc_config(args, shared=socks is not None)  # checked before the model loads
    sockets = socks if socks is not None else bind(args.host, args.port)
    label = f" worker={worker}" if socks is not None else ""
    try:
        return _serve(args, sockets, label, keys, config, grpc_config)
    finally:
        for s in sockets:
            s.close()


def _serve(
    args: argparse.Namespace,
    sockets: list[socket.socket],
    label: str,
    keys: tuple[bytes, ...],
    config: ServerConfig,
    grpc_config: Any,
) -> int:
    """Load the model, then serve on ``sockets`` (bound) until SIGTERM/SIGINT."""
    import uvicorn

    from mlsignal.server import create_app, load_model

    settings = cli_settings(args)
    device = args.device or settings.device
    backend = args.backend or settings.backend
    state = load_model(args.bundle, device, backend, config.max_batch, settings=settings)
    app = create_app(config, state)
    if grpc_config is not None:
        from mlsignal.server.grpc_v2 import attach_grpc

        attach_grpc(app, grpc_config)
    scheme = "https" if args.ssl_certfile else "http"
    log.info(
        "serving %s://%s:%d%s device=%s backend=%s model_version=%s contract_hash=%s "
        "api_keys=%s parity_worst_diff=%.3g warmup_ms=%.1f",
        scheme, args.host, args.port, label,
        state.device, state.backend,
        state.bundle.model_version, state.bundle.contract_hash,
        "on" if keys else "off", state.parity_worst_diff, state.warmup_ms,
    )  # fmt: skip
    uv_config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http=_http_protocol(config, app),
        ws="none",  # no WebSocket routes: an Upgrade never leaves the limited protocol
        timeout_keep_alive=config.keep_alive_s,  # type: ignore[arg-type]  # a float works
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        log_level="warning",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_S,
    )
    server = _server(uv_config, app, grpc=grpc_config is not None)
    # uvicorn re-raises the captured SIGTERM/SIGINT after its graceful shutdown; with these
    # handlers in place that re-raise is a no-op and the drained server exits 0.
    drained = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in drained}
    try:
        server.run(sockets=sockets)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        print("mlsignal serve: error: the server did not start (see the log)", file=sys.stderr)
        return 1
    log.info("stopped")
    return 0
