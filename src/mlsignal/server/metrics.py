"""Prometheus metrics in a private registry per app, and the middleware that records them.

The middleware is also the last line of defence: an exception nothing else handled is
logged here with its traceback and answered ``500 {"error": "internal error"}``.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401 (re-export)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mlsignal.server.limits import (
    DISCONNECTED,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    send_error,
)

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_KIND_BY_STATUS = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 422: "invalid"}


class Metrics:
    """The server's series: latency by route, batch size, queue depth, errors, model info."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.latency = Histogram(
            "mlsignal_request_duration_seconds",
            "HTTP request latency by route",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "mlsignal_requests_total", "HTTP requests by route and status", ["route", "status"],
            registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "mlsignal_batch_size", "windows per forward pass", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("mlsignal_queue_depth", "windows waiting for a batch", registry=r)
        self.errors = Counter(
            "mlsignal_errors_total", "error answers by kind", ["kind"], registry=r
        )
        self.model_info = Gauge(
            "mlsignal_model_info",
            "the served model (value 1)",
            ["model_version", "contract_hash", "device", "backend"],
            registry=r,
        )
        self.reloads = Counter(
            "mlsignal_reloads_total", "bundle reloads by outcome", ["outcome"], registry=r
        )
        self.connections_open = Gauge(
            "mlsignal_connections_open", "open HTTP connections of this process", registry=r
        )
        self.connections_closed = Counter(
            "mlsignal_connections_closed_total",
            "HTTP connections refused or closed by a connection limit, by reason",
            ["reason"],
            registry=r,
        )

    def set_model(self, model_version: str, contract_hash: str, device: str, backend: str) -> None:
        """Point the model info gauge at the model now served."""
        self.model_info.clear()
        self.model_info.labels(model_version, contract_hash, device, backend).set(1)

    def render(self) -> bytes:
        """The Prometheus text exposition of every series."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Time every HTTP request, count its status and error kind; turn crashes into 500s."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
            if not started and scope.get("mlsignal", {}).get("error_kind") == DISCONNECTED:
                status = 499  # nginx's "client closed request": nobody to answer
        except Exception:
            log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await send_error(scope, send, 500, "internal error", "internal")
            else:
                scope.setdefault("mlsignal", {})["error_kind"] = "internal"
        finally:
            self._observe(scope, status, time.perf_counter() - t0)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        label = getattr(route, "path", None) or _route_of(scope)
        self.metrics.latency.labels(label, scope.get("method", "")).observe(seconds)
        self.metrics.requests.labels(label, str(status)).inc()
        kind = scope.get("mlsignal", {}).get("error_kind")
        if kind is None and status >= 400:
            kind = _KIND_BY_STATUS.get(status, f"http_{status}")
        if kind is not None:
            self.metrics.errors.labels(kind).inc()


def _route_of(scope: Scope) -> str:
    """The route template for a request the router never reached (e.g. a 401)."""
    app = scope.get("app")
    for route in getattr(app, "routes", ()):
        try:
            match, _ = route.matches(scope)
        except Exception:  # a label lookup must never fail a request
            continue
        if match.name != "NONE":
            return getattr(route, "path", "unmatched")
    return "unmatched"
