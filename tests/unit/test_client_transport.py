"""The guarded transport against real loopback sockets: every socket operation of an attempt
ends by the attempt's absolute end, and cancel() wakes a blocked read at once.

The misbehaving servers here are threads of this process (the real-process tar-pit tests are
tests/integration/test_faults_client.py). Bounds carry 0.3 s of slack for a loaded 2-core box.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from mlsignal.client.transport import GuardedTransport, IoGuard

SLACK_S = 0.3
HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[socket.socket], None]], str]]:
    """``serve(behaviour)`` -> URL of a one-thread-per-connection loopback server."""
    listeners: list[socket.socket] = []
    done = threading.Event()

    def start(behaviour: Callable[[socket.socket], None]) -> str:
        lsock = socket.create_server(("127.0.0.1", 0))
        listeners.append(lsock)

        def accept() -> None:
            while not done.is_set():
                try:
                    conn, _ = lsock.accept()
                except OSError:
                    return
                threading.Thread(target=_run, args=(behaviour, conn), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        return f"http://127.0.0.1:{lsock.getsockname()[1]}"

    yield start
    done.set()
    for lsock in listeners:
        lsock.close()


def _run(behaviour: Callable[[socket.socket], None], conn: socket.socket) -> None:
    try:
        conn.recv(65536)
        behaviour(conn)
    except OSError:
        pass
    finally:
        conn.close()


def trickle_head(conn: socket.socket) -> None:
    for byte in HEAD[:-1]:
        conn.sendall(bytes([byte]))
        time.sleep(0.05)


def trickle_body(conn: socket.socket) -> None:
    conn.sendall(HEAD)
    for _ in range(99):
        time.sleep(0.05)
        conn.sendall(b" ")


def hang(conn: socket.socket) -> None:
    time.sleep(5.0)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(transport=GuardedTransport(True, httpx.Limits()), timeout=10.0) as client:
        yield client


def _get(http: httpx.Client, url: str) -> bytes:
    with http.stream("GET", url) as response:
        return response.read()


@pytest.mark.parametrize("behaviour", [trickle_head, trickle_body, hang])
def test_every_read_ends_by_the_guards_end(serve, http, behaviour):
    """httpx alone would read for ~5 s here (each byte restarts its 10 s read timeout)."""
    url = serve(behaviour)
    t0 = time.monotonic()
    with pytest.raises(httpx.ReadTimeout), IoGuard(t0 + 0.3).active():
        _get(http, url)
    assert time.monotonic() - t0 < 0.3 + SLACK_S


def test_cancel_from_another_thread_wakes_a_blocked_read(serve, http):
    url = serve(hang)
    guard = IoGuard(time.monotonic() + 30.0)
    threading.Timer(0.2, guard.cancel).start()
    t0 = time.monotonic()
    with pytest.raises(httpx.TransportError), guard.active():
        _get(http, url)
    assert time.monotonic() - t0 < 0.2 + SLACK_S
    with pytest.raises(httpx.TransportError), guard.active():  # a cancelled guard: no I/O
        _get(http, url)


def test_a_slow_reader_cannot_stretch_a_write(serve, http):
    """A server that never reads: the kernel buffers fill and each send blocks."""
    url = serve(hang)
    t0 = time.monotonic()
    with pytest.raises(httpx.WriteTimeout), IoGuard(t0 + 0.3).active():
        http.post(url, content=b"x" * (64 * 1024 * 1024))
    assert time.monotonic() - t0 < 0.3 + SLACK_S


def test_without_a_guard_it_is_a_plain_transport(serve, http):
    closing = HEAD.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n")
    url = serve(lambda conn: conn.sendall(closing + b" " * 100))
    assert _get(http, url) == b" " * 100
    with IoGuard(time.monotonic() + 5.0).active():  # and the same under a guard
        assert _get(http, url) == b" " * 100
