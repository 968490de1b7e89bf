"""Request body limit (413) as a pure ASGI middleware, and the JSON error sender it shares.

The limit is checked twice: a declared ``Content-Length`` above it is refused before a byte
is read, and the bytes actually received are counted (chunked uploads declare nothing). The
body is read here, up to the limit, and replayed to the app, so no handler ever sees more;
a body cut short by a disconnect (or the body read timeout of
:mod:`mlsignal.server.protocol`) never reaches a handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from mlsignal import wire
from mlsignal.errors import BodyTooLargeError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


#: The error kind of a request whose client left before its body was read (counted as 499).
DISCONNECTED = "disconnected"


def note_error(scope: Scope, kind: str) -> None:
    """Record the error kind of this request for the metrics middleware."""
    scope.setdefault("mlsignal", {})["error_kind"] = kind


async def send_error(
    scope: Scope,
    send: Send,
    status: int,
    message: str,
    kind: str,
    headers: dict[str, str] | None = None,
) -> None:
    """Send ``{"error": message}`` with ``status`` from ASGI code."""
    note_error(scope, kind)
    body = wire.dumps({"error": message})
    raw = [(b"content-type", wire.JSON_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Answer 413 for bodies over ``max_bytes``; otherwise replay the read body to ``app``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, send)
            return
        try:
            chunks = await self._read(receive)
        except BodyTooLargeError:
            await self._refuse(scope, send)
            return
        if chunks[-1]["type"] != "http.request":  # the client left (or its body timed out)
            note_error(scope, DISCONNECTED)  # nothing to answer, and no partial body to work on
            return
        await self.app(scope, _replay(chunks, receive), send)

    async def _read(self, receive: Receive) -> list[Message]:
        messages, total = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages  # a disconnect
            total += len(message.get("body", b""))
            if total > self.max_bytes:
                raise BodyTooLargeError(self.max_bytes)
            if not message.get("more_body", False):
                return messages

    async def _refuse(self, scope: Scope, send: Send) -> None:
        msg = str(BodyTooLargeError(self.max_bytes))
        await send_error(scope, send, 413, msg, "too_large", {"connection": "close"})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that returns one joined body message, then defers to ``receive``."""
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
    first: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    if messages and messages[-1]["type"] != "http.request":
        first.append(messages[-1])

    async def replay() -> Message:
        if first:
            return first.pop(0)
        return await receive()

    return replay
