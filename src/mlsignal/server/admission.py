"""Admission before work: a request is counted from the moment it arrives, and refused at
once when the server already holds as much work as it should.

:class:`AdmissionMiddleware` (pure ASGI, outermost after metrics) stamps every request with
its arrival time on the event loop's clock (``scope["mlsignal"]["arrived"]``), so deadlines
start there, not when a handler gets round to it. For the work routes (``POST`` to
``/v1/enhance``, ``/v1/predict`` and the V2 ``infer`` routes) it counts the request as in
flight from arrival until its response is sent, through body reading, decoding, preparing,
waiting for the model and finishing. Past ``max_inflight`` a request gets ``503`` with
``Retry-After`` before a byte of its body is read: an overloaded server spends almost
nothing on work it cannot do in time, and recovers as soon as the load drops.

:func:`deadline_of` gives a request's absolute deadline: its own budget (``deadline_ms`` of
a v1 body, or the ``X-Deadline-Ms`` header on any route) or the server's default, counted
from arrival; :func:`within` bounds the rest of a handler by it (``504`` when it passes).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import TypeVar

from mlsignal.errors import DeadlineError
from mlsignal.server.limits import ASGIApp, Receive, Scope, Send, send_error

T = TypeVar("T")

#: Seconds a refused client should wait before trying again.
RETRY_AFTER_S = "1"
#: Request header with the caller's budget in milliseconds from arrival.
DEADLINE_HEADER = b"x-deadline-ms"


def is_work(scope: Scope) -> bool:
    """Whether a request runs the model: ``POST`` to enhance, predict or a V2 infer route."""
    if scope["type"] != "http" or scope.get("method") != "POST":
        return False
    path: str = scope.get("path", "")
    return path in ("/v1/enhance", "/v1/predict") or (
        path.startswith("/v2/models/") and path.endswith("/infer")
    )


class AdmissionMiddleware:
    """Counts work requests in flight; refuses the one past ``max_inflight`` with a 503."""

    def __init__(self, app: ASGIApp, max_inflight: int) -> None:
        self.app = app
        self.max_inflight = max_inflight
        self.inflight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("mlsignal", {})["arrived"] = asyncio.get_running_loop().time()
        if not is_work(scope):
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.max_inflight:
            message = f"server busy: {self.inflight} requests in flight (limit {self.max_inflight})"
            headers = {"retry-after": RETRY_AFTER_S, "connection": "close"}
            await send_error(scope, send, 503, message, "overloaded", headers)
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


def arrived(scope: Scope) -> float:
    """The request's arrival on the loop's clock (now, for a scope the middleware missed)."""
    stamp = scope.get("mlsignal", {}).get("arrived")
    return asyncio.get_running_loop().time() if stamp is None else float(stamp)


def header_budget_ms(scope: Scope) -> float | None:
    """The ``X-Deadline-Ms`` header as a positive number of ms, or ``None``."""
    for name, value in scope.get("headers", ()):
        if name == DEADLINE_HEADER:
            try:
                ms = float(value)
            except ValueError:
                return None
            return ms if math.isfinite(ms) and ms > 0 else None
    return None


def deadline_of(scope: Scope, budget_ms: float | None, default_ms: float | None) -> float | None:
    """The absolute deadline (loop clock) of a request: its own budget (``budget_ms``, else
    the header), else ``default_ms``, from arrival; ``None`` when there is none."""
    ms = budget_ms if budget_ms is not None else header_budget_ms(scope)
    ms = ms if ms is not None else default_ms
    return None if ms is None else arrived(scope) + ms / 1e3


async def within(deadline: float | None, work: Awaitable[T]) -> T:
    """``await work``, or :class:`DeadlineError` (a 504) when ``deadline`` passes first."""
    if deadline is None:
        return await work
    left = deadline - asyncio.get_running_loop().time()
    if left <= 0:  # passed already: the work never starts
        if asyncio.iscoroutine(work):
            work.close()
        raise DeadlineError()
    try:
        return await asyncio.wait_for(work, left)
    except TimeoutError:
        raise DeadlineError("an answer") from None
