"""Socket I/O that cannot outlive a call's deadline, and can be cut short from another thread.

httpx applies its timeouts per phase and per read: a server that sends a byte just before
each read timeout (a trickled head or body), or its head just before the budget and then
nothing, keeps a plain client reading for a multiple of its budget. Here every socket
operation of an attempt (connect, TLS handshake, each write, each read) waits at most until
the attempt's absolute end, whatever phase timeouts httpx passes down, and another thread
may :meth:`IoGuard.cancel` an attempt: its socket is shut down, which wakes a blocked read at
once. The guard travels in a context variable set by the thread that runs the attempt, so
nothing in httpx's call chain has to carry it.

This is the second line. The first is :mod:`mlsignal.client.race`: attempts run on worker
threads and the caller waits on a queue with a timeout, so the caller's return at its
deadline never depends on a socket (nor on name resolution, which no socket timeout
bounds). The guard makes the abandoned attempts stop by then too, so that no thread,
connection or server slot outlives the call it served.
"""

from __future__ import annotations

import contextlib
import contextvars
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator

import httpcore
import httpx

#: The guard of the attempt running on this thread (None outside an attempt: no bound).
_CURRENT: contextvars.ContextVar[IoGuard | None] = contextvars.ContextVar(
    "mlsignal_io_guard", default=None
)


class IoGuard:
    """The absolute end (``time.monotonic()`` seconds) of one attempt's socket I/O.

    Use ``with guard.active():`` on the thread that runs the attempt; :meth:`cancel` from any
    thread ends it early.
    """

    def __init__(self, end: float) -> None:
        self.end = end
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._cancelled = False

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancelled

    def remaining_s(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.end - time.monotonic())

    def budget(self, timeout: float | None, error: type[Exception]) -> float:
        """The timeout of the next socket operation: httpx's ``timeout`` capped by what is
        left; raises ``error`` when nothing is left or the attempt was cancelled."""
        if self._cancelled:
            raise error("the call this attempt served has ended")
        left = self.end - time.monotonic()
        if left <= 0:
            raise error("the call's deadline has passed")
        return left if timeout is None else min(timeout, left)

    def hold(self, sock: socket.socket | None) -> None:
        """The socket the attempt uses now (shut down at once if already cancelled)."""
        with self._lock:
            self._sock = sock
            cancelled = self._cancelled
        if cancelled:
            _shutdown(sock)

    def cancel(self) -> None:
        """End the attempt: shut its socket down (a blocked read returns at once) and fail
        its next operation."""
        with self._lock:
            self._cancelled = True
            sock, self._sock = self._sock, None
        _shutdown(sock)

    @contextlib.contextmanager
    def active(self) -> Iterator[IoGuard]:
        """Bound the socket I/O of this thread by this guard while inside."""
        token = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(token)
            with self._lock:
                self._sock = None  # the connection goes back to the pool: not ours to cut


def _shutdown(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):
        # the plain socket's shutdown, also for an SSLSocket: its own override would unwrap
        # the TLS object under the thread that is reading from it
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Stream(httpcore.NetworkStream):
    """A network stream whose operations the current guard bounds."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def _sock(self) -> socket.socket | None:
        return self._inner.get_extra_info("socket")

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        guard = _CURRENT.get()
        if guard is None:
            return self._inner.read(max_bytes, timeout)
        bounded = guard.budget(timeout, httpcore.ReadTimeout)
        guard.hold(self._sock())
        return self._inner.read(max_bytes, bounded)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        guard = _CURRENT.get()
        sock = self._sock()
        if guard is None or sock is None:
            return self._inner.write(buffer, timeout)
        guard.hold(sock)
        view = memoryview(buffer)
        try:  # httpcore's own loop gives each partial send the whole timeout again
            while view:
                sock.settimeout(guard.budget(timeout, httpcore.WriteTimeout))
                view = view[sock.send(view) :]
        except TimeoutError as e:
            raise httpcore.WriteTimeout(str(e)) from e
        except OSError as e:
            raise httpcore.WriteError(str(e)) from e

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        guard = _CURRENT.get()
        if guard is not None:
            timeout = guard.budget(timeout, httpcore.ConnectTimeout)
            guard.hold(self._sock())
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> object:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    """httpcore's sync backend with every connect bounded by the current guard."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        guard = _CURRENT.get()
        if guard is not None:
            timeout = guard.budget(timeout, httpcore.ConnectTimeout)
        inner = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        stream = _Stream(inner)
        if guard is not None:
            guard.hold(stream.get_extra_info("socket"))  # cancelled meanwhile: cut at once
        return stream

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        guard = _CURRENT.get()
        if guard is not None:
            timeout = guard.budget(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` (HTTP/1.1, no proxy, nothing from the environment) whose
    socket I/O the current :class:`IoGuard` bounds.

    It builds the connection pool itself, as ``HTTPTransport.__init__`` would, with the
    guarded network backend: httpx has no public hook for one, and ``_pool`` is the one
    attribute ``HTTPTransport``'s methods use (tests/unit/test_client_transport.py fails if
    that changes).
    """

    def __init__(self, verify: bool | ssl.SSLContext, limits: httpx.Limits) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_Backend(),
        )
