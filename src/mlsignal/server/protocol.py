"""The HTTP/1.1 connection layer of ``mlsignal serve``: nginx-like limits before any ASGI code.

:class:`LimitedHttpToolsProtocol` is uvicorn's httptools protocol with the limits nginx
applies to a client it does not trust yet; a request that breaks one never reaches the app
(no task, no FastAPI, no auth check), and is answered in a few bytes and closed:

- **Header size** (nginx's ``large_client_header_buffers``): at most ``max_header_bytes``
  from the first byte of a request to the end of its headers (request line included), else
  ``431``. Counted per read (one addition per ``data_received``; httptools itself would
  buffer a header of any size); a read is cut at the limit, so no more than the limit is
  ever handed to the parser. One header line (name + value) over ``max_header_line_bytes``
  or more than ``max_headers`` headers: ``431``; a request target over the line limit: ``414``.
- **Header read timeout** (nginx's ``client_header_timeout``): the request line and headers
  must all arrive within ``header_timeout_s``, counted from the connection's accept (first
  request) or from the first byte of a later request; a total, not a time between reads, so
  trickling a byte at a time does not extend it. Past it: ``408`` and close (an idle new
  connection that sent nothing is just closed).
- **Body read timeout** (``client_body_timeout``, but a total too): the whole body must
  arrive within ``body_timeout_s`` of the end of the headers, else ``408`` (if nothing was
  answered yet) and close; the app's request sees a disconnect.
- **Keep-alive idle timeout**: uvicorn's ``timeout_keep_alive`` (``keep_alive_s``) after each
  answer; also re-armed when a request's body finishes after an early answer (a 401 or 413
  sent before the body was read), which uvicorn would otherwise leave open forever.
- **Connection caps**: at most ``max_connections`` open connections in this process, and
  ``max_connections_per_client`` from one client address (an IPv6 client: its /64); an extra
  connection gets ``503`` with ``Retry-After: 1`` and is closed at once, before anything of
  it is read.

Every limit is per process: each worker of ``--workers N`` applies its own. The refusals and
timeouts are counted (``mlsignal_connections_closed_total{reason}``) and logged at most once
a minute per reason; a malformed request (uvicorn's 400) is counted there, not logged.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

log = logging.getLogger("mlsignal.server")

#: What a connection is reading: nothing of the next request yet, its headers, its body.
_WAIT, _HEAD, _BODY = 0, 1, 2
#: Seconds between two log lines about the same limit (a flood logs a line a minute).
LOG_EVERY_S = 60.0


@dataclass(frozen=True)
class Refusal:
    """An answer of the connection layer: status, metrics reason, message."""

    status: int
    reason: str
    message: str


TOO_MANY = Refusal(503, "max_connections", "too many connections; retry later")
TOO_MANY_FROM_CLIENT = Refusal(
    503, "max_connections_per_client", "too many connections from this address; retry later"
)
HEADERS_TOO_LARGE = Refusal(431, "headers_too_large", "request headers too large")
URL_TOO_LONG = Refusal(414, "url_too_long", "request target too long")
HEADER_TIMEOUT = Refusal(408, "header_timeout", "request headers not received in time")
BODY_TIMEOUT = Refusal(408, "body_timeout", "request body not received in time")
BAD_REQUEST = Refusal(400, "bad_request", "invalid HTTP request")


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a request that breaks a limit."""


def response_bytes(refusal: Refusal) -> bytes:
    """The whole answer: ``{"error": message}``, ``Connection: close`` (503: Retry-After)."""
    body = b'{"error":"' + refusal.message.encode("ascii") + b'"}'
    head = [
        STATUS_LINE[refusal.status],
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
    ]
    if refusal.status == 503:
        head.append(b"retry-after: 1\r\n")
    return b"".join([*head, b"\r\n", body])


def client_key(client: tuple[str, int] | None) -> str | None:
    """The address a per-client cap counts: IPv4 as is (also IPv4-mapped IPv6), IPv6 by its
    /64 (one host usually holds a whole /64); ``None`` (a Unix socket): not counted."""
    if client is None:
        return None
    host = client[0]
    if ":" not in host:
        return host
    try:
        addr = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(ipaddress.IPv6Network((addr, 64), strict=False))


class ConnectionLimits:
    """The limits of one server process and its registry of open connections.

    ``on_event(reason)`` is called for every refusal or timeout (the metrics counter).
    """

    def __init__(
        self,
        *,
        max_header_bytes: int = 32 << 10,
        max_header_line_bytes: int = 8 << 10,
        max_headers: int = 100,
        header_timeout_s: float = 10.0,
        body_timeout_s: float = 30.0,
        max_connections: int = 1024,
        max_connections_per_client: int = 256,
        on_event: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_header_line_bytes = max_header_line_bytes
        self.max_headers = max_headers
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_connections = max_connections
        self.max_connections_per_client = max_connections_per_client
        self.on_event = on_event or (lambda reason: None)
        self.clock = clock
        #: Connections admitted and not yet closed, in all and by client address.
        self.open = 0
        self.by_client: dict[str, int] = {}
        #: Refusals and timeouts by reason, since the start.
        self.events: Counter[str] = Counter()
        self._logged: dict[str, tuple[float, int]] = {}  # reason -> (last line, events at it)

    @classmethod
    def from_config(
        cls, config: Any, on_event: Callable[[str], None] | None = None
    ) -> ConnectionLimits:
        """The limits of a :class:`~mlsignal.server.state.ServerConfig`."""
        return cls(
            max_header_bytes=config.max_header_bytes,
            max_header_line_bytes=config.max_header_line_bytes,
            max_headers=config.max_headers,
            header_timeout_s=config.header_timeout_s,
            body_timeout_s=config.body_timeout_s,
            max_connections=config.max_connections,
            max_connections_per_client=config.max_connections_per_client,
            on_event=on_event,
        )

    def admit(self, key: str | None) -> Refusal | None:
        """Count a new connection from ``key``; the refusal when a cap is reached."""
        if self.open >= self.max_connections:
            return TOO_MANY
        cap = self.max_connections_per_client
        if key is not None and cap:
            n = self.by_client.get(key, 0)
            if n >= cap:
                return TOO_MANY_FROM_CLIENT
            self.by_client[key] = n + 1
        self.open += 1
        return None

    def release(self, key: str | None) -> None:
        """Forget a connection :meth:`admit` counted."""
        self.open -= 1
        if key is not None and self.max_connections_per_client:
            n = self.by_client.pop(key, 1) - 1
            if n > 0:
                self.by_client[key] = n

    def note(self, refusal: Refusal) -> None:
        """Count a refusal or timeout; log it the first time and then once a minute."""
        reason = refusal.reason
        self.events[reason] += 1
        self.on_event(reason)
        now = self.clock()
        last, seen = self._logged.get(reason, (-LOG_EVERY_S, 0))
        if now - last >= LOG_EVERY_S and refusal is not BAD_REQUEST:
            n = self.events[reason] - seen
            log.warning(
                "connection limit: %s (%d %s, %d since the last line); open connections: %d",
                refusal.message, refusal.status, reason, n, self.open,
            )  # fmt: skip
            self._logged[reason] = (now, self.events[reason])


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with :class:`ConnectionLimits` (see the module doc).

    Use :func:`protocol_class` to bind it to a process's limits, and pass that class as
    ``uvicorn.Config(http=...)``. The fast path adds one length check per read and one per
    header; a request that arrives in one read arms no timer.
    """

    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stage = _WAIT
        self._header_bytes = 0  # read of this request's line and headers so far
        self._timer: Any = None  # asyncio.TimerHandle of the header or body read timeout
        self._timer_stage = _WAIT
        self._key: str | None = None
        self._admitted = False
        self._refusal: Refusal | None = None
        limits = self.limits  # read on every request: kept on the instance
        self._max_header_bytes = limits.max_header_bytes
        self._max_line = limits.max_header_line_bytes
        self._max_headers = limits.max_headers

    # --- connection ---------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._key = client_key(self.client)
        refused = self.limits.admit(self._key)
        if refused is not None:
            self.limits.note(refused)
            transport.write(response_bytes(refused))
            transport.close()
            return
        self._admitted = True
        self._arm(_HEAD)  # a new connection has header_timeout_s for its first request

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._admitted:
            self._admitted = False
            self.limits.release(self._key)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser, counting the bytes of a request's line and headers."""
        self._unset_keepalive_if_required()
        if self._stage != _BODY:
            counted = self._header_bytes + len(data)
            if counted > self._max_header_bytes:
                self._cut(data)
                return
            self._header_bytes = counted
        if self._feed(data):
            self._after_feed()

    def _cut(self, data: bytes) -> None:
        """A read that takes a request's headers past the limit: feed the parser up to the
        limit only; if the headers ended by then, the rest is read on (body, next request)."""
        view = memoryview(data)
        limit = self._max_header_bytes
        while len(view) > limit - self._header_bytes:
            room = limit - self._header_bytes
            head, view = view[:room], view[room:]
            self._header_bytes = limit
            if not self._feed(head):
                return
            if self._stage == _BODY:
                break
            if self._header_bytes >= limit:  # not reset: these headers never ended
                self._refuse(HEADERS_TOO_LARGE)
                return
        if self._stage != _BODY:
            self._header_bytes += len(view)
        if self._feed(view):
            self._after_feed()

    def _feed(self, data: bytes | memoryview) -> bool:
        """Feed ``data`` to the parser; ``False`` when that refused the request."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._refuse(self._refusal or BAD_REQUEST)
            return False
        except httptools.HttpParserUpgrade:  # no WebSocket here (ws="none"): as uvicorn does
            log.debug("unsupported upgrade request")
        return True

    def _after_feed(self) -> None:
        """Refuse headers that reached the limit unfinished; arm the timer of a request whose
        headers or body are still on their way."""
        stage = self._stage
        if stage != _BODY:
            if self._header_bytes >= self._max_header_bytes:
                self._refuse(HEADERS_TOO_LARGE)
            elif stage == _HEAD and self._timer is None:
                self._arm(_HEAD)
        elif self._timer is None:
            self._arm(_BODY)

    # --- parser callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._stage = _HEAD

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > self._max_line or len(self.headers) >= self._max_headers:
            self._refusal = HEADERS_TOO_LARGE
            raise _Refused()
        # uvicorn's on_header, inlined: this runs for every header of every request
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if len(self.url) > self._max_line:  # within max_header_bytes: bounded already
            self._refusal = URL_TOO_LONG
            raise _Refused()
        self._stage = _BODY
        self._header_bytes = 0
        if self._timer is not None:
            self._cancel_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._stage = _WAIT
        if self._timer is not None:
            self._cancel_timer()
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and not self.pipeline:
            self._rearm_keep_alive()  # answered before its body ended (401, 413)

    # --- timeouts and refusals ----------------------------------------------------------
    def _arm(self, stage: int) -> None:
        timeout = self.limits.header_timeout_s if stage == _HEAD else self.limits.body_timeout_s
        self._timer_stage = stage
        self._timer = self.loop.call_later(timeout, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._timer_stage == _BODY:
            self._refuse(BODY_TIMEOUT)
        elif self._stage == _WAIT:  # a new connection that never sent a request
            self.limits.note(HEADER_TIMEOUT)
            self.transport.close()
        else:
            self._refuse(HEADER_TIMEOUT)

    def _rearm_keep_alive(self) -> None:
        if self.timeout_keep_alive_task is None and not self.transport.is_closing():
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _refuse(self, refusal: Refusal) -> None:
        """Answer ``refusal`` (when no other answer is under way) and close the connection."""
        self.limits.note(refusal)
        self._cancel_timer()
        cycle = self.cycle
        if self._stage == _BODY and cycle is not None:  # the app is reading this request
            cycle.disconnected = True  # its receive() gets http.disconnect, its send is dropped
            cycle.message_event.set()
            can_answer = not cycle.response_started
        else:  # between requests, or reading the next one while the last is answered
            can_answer = cycle is None or cycle.response_complete
        if can_answer:
            self.transport.write(response_bytes(refusal))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self._refuse(BAD_REQUEST)


def protocol_class(limits: ConnectionLimits) -> type[LimitedHttpToolsProtocol]:
    """A :class:`LimitedHttpToolsProtocol` bound to ``limits`` (one per server process), for
    ``uvicorn.Config(http=...)``."""
    return type("MLSignalHttpProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})
