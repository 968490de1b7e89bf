"""Hostile clients against a real `mlsignal serve`: the connection layer's limits
(:mod:`mlsignal.server.protocol`), with raw sockets on loopback as the clients.

Hostile connections come from other loopback addresses (127.0.0.2, 127.0.1.x, ...: all of
127/8 is loopback on Linux), so the per-address cap can be told apart from the well-behaved
client on 127.0.0.1. Timeouts are short here (flags); the margins are generous for a loaded
2-core machine. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from mlsignal import wire

pytestmark = pytest.mark.slow

KEY = "limits-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
HEADER_TIMEOUT_S = 1.5
BODY_TIMEOUT_S = 2.5
KEEP_ALIVE_S = 2.0
#: How late a timer may close a connection on a loaded 2-core machine.
SLACK_S = 3.0


# --- fixtures and raw-socket helpers ------------------------------------------------------
@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text(f"{KEY}\n")
    return path


@pytest.fixture(scope="module")
def srv(tiny_bundle: Path, key_file: Path, tmp_path_factory, server_class) -> Iterator:
    """A keyed server with short read timeouts and the default header and connection caps."""
    server = server_class(
        tiny_bundle, "--device", "cpu", "--api-key-file", str(key_file),
        "--header-timeout-s", str(HEADER_TIMEOUT_S), "--body-timeout-s", str(BODY_TIMEOUT_S),
        "--keep-alive-s", str(KEEP_ALIVE_S),
        log_dir=tmp_path_factory.mktemp("logs"),
    )  # fmt: skip
    server.start()
    yield server
    assert server.stop() == 0
    server.close()


def connect(port: int, source: str = "127.0.0.2", timeout_s: float = 10.0) -> socket.socket:
    """A TCP connection to 127.0.0.1:``port`` from the loopback address ``source``."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(timeout_s)
    sock.connect(("127.0.0.1", port))
    return sock


def read_until_closed(sock: socket.socket, within_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and the seconds that took; fails when the
    connection is still open after ``within_s``."""
    t0 = time.monotonic()
    data = b""
    sock.settimeout(within_s)
    try:
        while chunk := sock.recv(65536):
            data += chunk
            sock.settimeout(max(0.01, within_s - (time.monotonic() - t0)))
    except ConnectionResetError:
        pass  # closed with our unread bytes in its buffer: a reset, after its answer
    except TimeoutError:
        pytest.fail(f"still open after {within_s} s (read so far: {data[:80]!r})")
    finally:
        sock.close()
    return data, time.monotonic() - t0


def status_of(answer: bytes) -> int | None:
    """The status of the first answer in ``answer``; ``None`` when nothing came."""
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of process ``pid`` in MiB (``VmHWM``: its peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field}")


def huge_header(port: int, source: str, size: int, key: bool) -> tuple[int | None, float]:
    """Send one header of ``size`` bytes while reading: the status and when it came."""
    sock = connect(port, source)
    auth = f"Authorization: Bearer {KEY}\r\n".encode() if key else b""
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + auth + b"X-Big: "

    def send() -> None:
        with contextlib.suppress(OSError):  # the server closes on us: expected
            sock.sendall(head + b"a" * size + b"\r\n\r\n")

    sender = threading.Thread(target=send, daemon=True)
    t0 = time.monotonic()
    sender.start()
    answer, _ = read_until_closed(sock, 30.0)
    sender.join(30.0)
    return status_of(answer), time.monotonic() - t0


# --- header size --------------------------------------------------------------------------
def test_huge_headers_get_431_at_once_and_cost_no_memory(srv):
    pid = srv.proc.pid
    before, peak_before = rss_mib(pid), rss_mib(pid, "VmHWM")

    def flood(i: int) -> tuple[int | None, float]:
        return huge_header(srv.port, f"127.0.1.{i + 1}", 16 << 20, key=i % 2 == 0)

    with ThreadPoolExecutor(20) as pool:  # 20 sockets sending 16 MiB of one header each
        answers = list(pool.map(flood, range(20)))
    after, peak = rss_mib(pid), rss_mib(pid, "VmHWM")
    print(f"RSS {before:.0f} -> {after:.0f} MiB (peak {peak_before:.0f} -> {peak:.0f}) after "
          f"20 x 16 MiB headers; answers {answers}")  # fmt: skip
    assert [status for status, _ in answers] == [431] * 20  # with or without a key
    assert max(seconds for _, seconds in answers) < 5.0
    assert after - before < 32, (before, after)
    assert peak < max(peak_before, before + 32), (before, peak_before, peak)  # not even briefly
    # the server still answers, and counted them
    assert httpx.get(f"{srv.url}/v1/models", headers=AUTH, timeout=10).status_code == 200
    metrics = httpx.get(f"{srv.url}/metrics", timeout=10).text
    assert 'mlsignal_connections_closed_total{reason="headers_too_large"}' in metrics


def test_header_line_count_and_url_limits(srv):
    url = f"{srv.url}/v1/models"
    with httpx.Client(headers=AUTH, timeout=10) as client:
        assert client.get(url, headers={"X-Long": "a" * (9 << 10)}).status_code == 431
        many = {f"X-H{i}": "1" for i in range(120)}
        assert client.get(url, headers=many).status_code == 431
        assert client.get(f"{url}?q={'a' * (9 << 10)}").status_code == 414
        # under the limits: 20 KiB of headers in 4 KiB lines is served
        fine = {f"X-Fine{i}": "a" * 4000 for i in range(5)}
        assert client.get(url, headers=fine).status_code == 200


def _request(path: str, body: bytes = b"", chunked: bool = False) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
    if chunked:
        return head.encode() + b"Transfer-Encoding: chunked\r\n\r\n"
    return head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body


def _answers(sock: socket.socket, n: int) -> list[int | None]:
    """The statuses of the next ``n`` answers (each has a Content-Length)."""
    data, statuses = b"", []
    while len(statuses) < n:
        head, sep, rest = data.partition(b"\r\n\r\n")
        length = [
            int(ln.split(b":")[1])
            for ln in head.split(b"\r\n")
            if ln.lower().startswith(b"content-length:")
        ]
        if sep and length and len(rest) >= length[0]:
            statuses.append(status_of(head))
            data = rest[length[0] :]
            continue
        chunk = sock.recv(65536)
        assert chunk, (statuses, data[:80])
        data += chunk
    return statuses


def test_ordinary_requests_pass_in_any_shape_of_reads(srv, tiny_bundle):
    """Counting header bytes per read never refuses or garbles a legal request: pipelined,
    headers a byte at a time, a body in small writes or chunks, or a big body in the same
    read as its headers (past the header limit: the headers end first)."""
    with np.load(tiny_bundle / "golden.npz") as golden:
        windows = golden["inputs"].astype(np.float32)
    big = wire.dumps({"windows": np.concatenate([windows] * 4)[:16]})  # about 300 KiB
    assert len(big) > 2 * (32 << 10)
    sock = connect(srv.port, "127.0.5.1")
    get = f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode()
    sock.sendall(get * 3)  # pipelined
    assert _answers(sock, 3) == [200] * 3
    for byte in get:  # headers one byte per write
        sock.send(bytes([byte]))
    assert _answers(sock, 1) == [200]
    sock.sendall(_request("/v1/predict", big) + get)  # one write: headers, 300 KiB, next request
    assert _answers(sock, 2) == [200, 200]
    request = _request("/v1/predict", big)
    for i in range(0, len(request), 5000):  # a body in small writes
        sock.sendall(request[i : i + 5000])
    assert _answers(sock, 1) == [200]
    sock.sendall(_request("/v1/predict", chunked=True))
    for i in range(0, len(big), 7000):
        part = big[i : i + 7000]
        sock.sendall(b"%x\r\n" % len(part) + part + b"\r\n")
    sock.sendall(b"0\r\n\r\n")
    assert _answers(sock, 1) == [200]
    sock.close()


# --- read timeouts ------------------------------------------------------------------------
def _trickle(sock: socket.socket, stop: threading.Event) -> None:
    """Headers one byte every 0.2 s: busy, but never done."""
    try:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        while not stop.wait(0.2):
            sock.sendall(b"a")
    except OSError:
        pass


def test_stalled_connections_are_closed_after_their_timeouts(srv):
    half_headers = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: b"
    half_body = (
        f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"windows": ['
    ).encode()
    kinds: dict[str, tuple[bytes, float, int | None]] = {
        "idle": (b"", HEADER_TIMEOUT_S, None),
        "half headers": (half_headers, HEADER_TIMEOUT_S, 408),
        "half body": (half_body, BODY_TIMEOUT_S, 408),
        "kept alive": (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", KEEP_ALIVE_S, 200),
    }
    stop = threading.Event()
    jobs: list[tuple[str, socket.socket, float, int | None]] = []
    for k, (name, (payload, timeout_s, status)) in enumerate(kinds.items()):
        for i in range(10):  # 40 stalled connections from 8 addresses
            sock = connect(srv.port, f"127.0.2.{2 * k + i % 2 + 1}")
            sock.sendall(payload)
            jobs.append((name, sock, timeout_s, status))
    trickler = connect(srv.port, "127.0.3.1")
    threading.Thread(target=_trickle, args=(trickler, stop), daemon=True).start()
    jobs.append(("trickled headers", trickler, HEADER_TIMEOUT_S, 408))

    def wait(job: tuple[str, socket.socket, float, int | None]) -> tuple[str, int | None, float]:
        name, sock, timeout_s, _ = job
        answer, seconds = read_until_closed(sock, timeout_s + SLACK_S)
        return name, status_of(answer), seconds

    try:
        with ThreadPoolExecutor(len(jobs)) as pool:
            closed = list(pool.map(wait, jobs))
    finally:
        stop.set()
    for (name, status, seconds), (_, _, timeout_s, want) in zip(closed, jobs, strict=True):
        assert status == want, (name, status)
        assert timeout_s - 0.3 <= seconds <= timeout_s + SLACK_S, (name, seconds)
    assert httpx.get(f"{srv.url}/healthz", timeout=10).status_code == 200
    metrics = httpx.get(f"{srv.url}/metrics", timeout=10).text
    for reason in ("header_timeout", "body_timeout"):
        assert f'mlsignal_connections_closed_total{{reason="{reason}"}}' in metrics


def test_unauthenticated_requests_are_answered_and_closed_at_once(srv):
    """An unauthenticated client costs its headers (a few KiB here) and one 401: the body
    it announces is never read and the connection does not stay, even kept alive."""
    pid = srv.proc.pid
    head = (
        b"POST /v1/enhance HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Pad: " + b"p" * 3000 + b"\r\nContent-Length: 8000000\r\n\r\n"
    )

    def one(i: int) -> tuple[int | None, float]:
        sock = connect(srv.port, f"127.0.4.{i % 8 + 1}")
        sock.sendall(head)
        answer, seconds = read_until_closed(sock, 5.0)
        return status_of(answer), seconds

    stop = threading.Event()
    served: list[int] = []

    def keyed_client() -> None:
        with httpx.Client(base_url=srv.url, headers=AUTH, timeout=10) as client:
            while not stop.is_set() or len(served) < 10:
                served.append(client.get("/v1/models").status_code)

    before = rss_mib(pid)
    normal = threading.Thread(target=keyed_client, daemon=True)
    normal.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, range(200)))
    finally:
        stop.set()
        normal.join(20)
    after = rss_mib(pid)
    print(f"RSS {before:.0f} -> {after:.0f} MiB after 200 unauthenticated requests")
    assert {status for status, _ in answers} == {401}
    assert max(seconds for _, seconds in answers) < 1.0  # closed with its answer
    assert served and set(served) == {200}  # the keyed client was served throughout
    assert after - before < 16, (before, after)


# --- connection caps ----------------------------------------------------------------------
def _refused_and_open(socks: list[socket.socket], settle_s: float) -> tuple[int, int]:
    """How many of ``socks`` the server refused (503 then closed) and how many it keeps open
    after ``settle_s``: a refusal comes at once, an admitted idle connection sends nothing."""
    pending = set(socks)
    deadline = time.monotonic() + settle_s
    refused = 0
    with selectors.DefaultSelector() as sel:
        for sock in socks:
            sel.register(sock, selectors.EVENT_READ)
        while pending and (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                answer = key.fileobj.recv(4096)  # type: ignore[union-attr]
                assert status_of(answer) == 503 and b"retry-after: 1" in answer, answer
                sel.unregister(key.fileobj)
                pending.discard(key.fileobj)  # type: ignore[arg-type]
                refused += 1
    return refused, len(pending)


def test_connection_caps_refuse_the_extras_and_others_are_served(
    tiny_bundle, key_file, server_factory
):
    server = server_factory(
        tiny_bundle, "--device", "cpu", "--api-key-file", str(key_file),
        "--max-connections", "48", "--max-connections-per-client", "16",
        "--header-timeout-s", "60",  # the idle flood stays until the test closes it
    ).start()  # fmt: skip
    get: Callable[[], httpx.Response] = lambda: httpx.get(  # noqa: E731
        f"{server.url}/v1/models", headers=AUTH, timeout=10
    )
    # one address opens 100 idle connections: 16 are kept, the other 84 refused at once
    flood = [connect(server.port, "127.0.0.2") for _ in range(100)]
    refused, kept = _refused_and_open(flood[16:], 5.0)
    assert (refused, kept) == (84, 0)
    assert _refused_and_open(flood[:16], 0.5) == (0, 16)
    assert get().status_code == 200  # another client is served during the flood
    # two more addresses fill the total: 48 open; any new connection is refused
    more = [connect(server.port, f"127.0.0.{3 + i // 16}") for i in range(32)]
    assert _refused_and_open(more, 0.5) == (0, 32)
    extra = connect(server.port, "127.0.0.9")
    assert status_of(read_until_closed(extra, 5.0)[0]) == 503
    # and when the flood goes, the server is free again
    for sock in flood + more:
        sock.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if get().status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    assert get().status_code == 200
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'mlsignal_connections_closed_total{reason="max_connections_per_client"} 84.0' in metrics
    assert 'mlsignal_connections_closed_total{reason="max_connections"} 1.0' in metrics
    assert server.stop() == 0


# --- every worker -------------------------------------------------------------------------
def test_every_worker_applies_the_limits(tiny_bundle, key_file, server_factory):
    server = server_factory(
        tiny_bundle, "--device", "cpu", "--api-key-file", str(key_file), "--workers", "2",
        "--header-timeout-s", str(HEADER_TIMEOUT_S), "--max-header-kb", "16",
    ).start(timeout_s=120)  # fmt: skip

    def big(i: int) -> tuple[int | None, float]:
        return huge_header(server.port, "127.0.0.2", 1 << 20, key=True)

    with ThreadPoolExecutor(8) as pool:  # the kernel spreads them over the workers
        assert [status for status, _ in pool.map(big, range(8))] == [431] * 8
    three_lines = {f"X-{c}": "a" * 7000 for c in "PQR"}  # 21 KiB: over 16, under the default 32
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as client:
        assert client.get("/v1/models", headers=three_lines).status_code == 431
        assert client.get("/v1/models").status_code == 200
    stalled = [connect(server.port, "127.0.0.3") for _ in range(8)]
    for sock in stalled:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
    for sock in stalled:
        answer, seconds = read_until_closed(sock, HEADER_TIMEOUT_S + SLACK_S)
        assert status_of(answer) == 408 and seconds <= HEADER_TIMEOUT_S + SLACK_S
    assert server.stop() == 0
