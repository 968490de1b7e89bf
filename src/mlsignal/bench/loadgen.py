"""A bounded HTTP load generator for loopback servers: fixed request count AND a time limit.

``run_load(LoadSpec(...))`` opens ``clients`` keep-alive HTTP/1.1 connections to one loopback
URL and sends the same body over them, each client one request at a time (a closed loop),
until ``requests`` have been sent or ``time_limit_s`` has passed, whichever comes first.
Each request's latency is the wall time from writing the request to having read the whole
response. Non-2xx answers, broken connections, timeouts and answers that fail the optional
``expect`` check are counted as errors by kind, never raised.

The default client (``client="raw"``) speaks HTTP/1.1 over asyncio streams (uvloop when
installed): request head pre-built once, one ``write`` per request, ``Content-Length`` or
chunked responses. It adds much less per-request overhead than ``httpx.AsyncClient``
(``client="httpx"`` is kept for comparison; see :func:`client_overhead`).

With ``retries`` a transient failure (502/503/504, a dropped or refused connection) is sent
again after a short jittered pause, as the remote client does (one retry); the request then
counts by its last outcome, and ``LoadResult.retried`` says how many needed it. With
``timeline`` the wall-clock time of every good answer is kept (``LoadResult.done_at``), for a
throughput time series around an event (a replica killed under load).

Only loopback hosts are accepted (``127.0.0.0/8``, ``::1``, ``localhost``): this is a
benchmark tool, not a way to load somebody else's server. Plain ``http`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from mlsignal.errors import ConfigError

CLIENT_KINDS = ("raw", "httpx")
#: Failures the remote client retries (mlsignal.client.policy.RetryPolicy): these statuses
#: and a connection refused, reset or closed mid-answer. Never a 4xx, a timeout (its time is
#: spent) or a body that fails ``expect``.
RETRY_STATUSES = ("http_502", "http_503", "http_504")
NOT_RETRIED = ("timeout", "unexpected_body", "_ProtocolError")


@dataclass(frozen=True)
class LoadSpec:
    """One load: where, what, how much, how many at once.

    Args:
        url: ``http://127.0.0.1:PORT/path`` (loopback only).
        body: the request body (``None``: a GET).
        requests: how many timed requests to send in all (the run stops at this count).
        clients: concurrent connections, each sending one request at a time.
        time_limit_s: no request starts after this wall time (those not sent are reported
            in ``LoadResult.not_sent``), and one still running ``GRACE_S`` past it is cut off
            as a ``timeout``; the warm-up is bounded by it too.
        windows_per_request: model windows each request carries (for windows/s).
        warmup: untimed requests per client before the timed run (connection set-up,
            server caches).
        timeout_s: per-request limit; a request past it counts as a ``timeout`` error.
        content_type: the request's Content-Type.
        expect: bytes every good response body contains (``None``: any 2xx is good).
        client: ``raw`` (asyncio streams) or ``httpx`` (``httpx.AsyncClient``).
        headers: extra request headers (e.g. ``Inference-Header-Content-Length``).
        processes: load generator processes sharing ``clients`` and ``requests`` (one
            Python process cannot send a GPU server's worth of binary tensors).
        retries: times a transient failure is sent again (the remote client: 1), each after
            a pause drawn from ``uniform(0, retry_pause_s)``.
        timeline: keep the wall-clock time of every good answer (``LoadResult.done_at``)
            and of every retry and final error (``LoadResult.events``).
    """

    url: str
    body: bytes | None
    requests: int
    clients: int = 1
    time_limit_s: float = 60.0
    windows_per_request: int = 1
    warmup: int = 0
    timeout_s: float = 30.0
    content_type: str = "application/json"
    expect: bytes | None = None
    client: str = "raw"
    headers: tuple[tuple[str, str], ...] = ()
    processes: int = 1
    retries: int = 0
    retry_pause_s: float = 0.02
    timeline: bool = False


@dataclass
class LoadResult:
    """What one load run measured; latencies in milliseconds over successful requests."""

    clients: int
    requests: int  # timed requests completed (ok + errors)
    ok: int
    errors: int
    error_kinds: dict[str, int]
    not_sent: int  # requests the time limit cut off
    elapsed_s: float
    p50_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None
    req_per_s: float
    windows_per_s: float
    client: str
    retried: int = 0  # requests sent again after a transient failure (counted by the last try)
    retried_kinds: dict[str, int] = field(default_factory=dict)  # what the first try got
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    done_at: list[float] = field(default_factory=list, repr=False)  # with ``timeline``
    events: list[tuple[float, str]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (without the raw latencies and timeline)."""
        d = asdict(self)
        for raw in ("latencies_ms", "done_at", "events"):
            d.pop(raw)
        return d

    def per_second(self, origin: float, seconds: int) -> list[int]:
        """Good answers in each second ``[origin + k, origin + k + 1)`` (``timeline`` runs)."""
        counts = [0] * seconds
        for t in self.done_at:
            k = int(t - origin) if t >= origin else -1
            if 0 <= k < seconds:
                counts[k] += 1
        return counts


def check_loopback(url: str) -> tuple[str, int, str]:
    """``(host, port, path)`` of a plain-http loopback URL, or :class:`ConfigError`."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ConfigError(f"load generator: only http:// URLs are supported, got {url!r}")
    host = parts.hostname or ""
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConfigError(
                f"load generator: refusing non-loopback host {host!r} in {url!r}; "
                "it only loads servers on this machine (127.0.0.1, ::1, localhost)"
            )
    port = parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return ("127.0.0.1" if host == "localhost" else host), port, path


def check_spec(spec: LoadSpec) -> tuple[str, int, str]:
    """Validate ``spec``; returns the URL's ``(host, port, path)``."""
    target = check_loopback(spec.url)
    if spec.client not in CLIENT_KINDS:
        raise ConfigError(f"load generator: client must be one of {CLIENT_KINDS}")
    for name in ("requests", "clients", "windows_per_request", "processes"):
        if getattr(spec, name) < 1:
            raise ConfigError(f"load generator: {name} must be at least 1")
    if spec.processes > spec.clients:
        raise ConfigError("load generator: processes must not exceed clients")
    if spec.warmup < 0 or not spec.time_limit_s > 0 or not spec.timeout_s > 0:
        raise ConfigError("load generator: warmup >= 0, time_limit_s > 0 and timeout_s > 0")
    if spec.retries < 0 or not spec.retry_pause_s >= 0:
        raise ConfigError("load generator: retries >= 0 and retry_pause_s >= 0")
    return target


def run_load(spec: LoadSpec) -> LoadResult:
    """Run one bounded load (blocking); see the module docstring. With ``processes`` > 1
    the clients and requests are split over that many processes and the results merged."""
    target = check_spec(spec)
    if spec.processes > 1:
        return _merge(spec, _in_processes(_run_part, _split(spec)))
    return _event_loop(_run(spec, target))


def _run_part(part: tuple[LoadSpec, Any]) -> LoadResult:
    """One process's share: warm up, wait for every process at ``barrier``, run."""
    spec, barrier = part
    return _event_loop(_run(spec, check_spec(spec), barrier))


def _event_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _split(spec: LoadSpec) -> list[LoadSpec]:
    """``spec`` as ``processes`` single-process parts (clients and requests shared out)."""
    p = spec.processes
    return [
        replace(
            spec,
            clients=spec.clients // p + (i < spec.clients % p),
            requests=max(1, spec.requests // p + (i < spec.requests % p)),
            processes=1,
        )
        for i in range(p)
    ]


def _in_processes(fn: Callable[[Any], Any], parts: list[Any]) -> list[Any]:
    """``fn((part, barrier))`` for each part, each in its own (spawned) process; the timed
    runs start together (a shared barrier after every process's warm-up)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # a bench process may hold CUDA and threads
    with ctx.Manager() as manager, ctx.Pool(len(parts)) as pool:
        barrier = manager.Barrier(len(parts))
        return pool.map(fn, [(part, barrier) for part in parts])


def _merge(spec: LoadSpec, results: list[LoadResult]) -> LoadResult:
    """One result of a load run in parts (latencies pooled, errors summed, the longest
    elapsed time)."""
    tally = _Tally(spec.requests, 0.0)
    for r in results:
        tally.latencies.extend(ms / 1e3 for ms in r.latencies_ms)
        tally.errors.update(r.error_kinds)
        tally.retried.update(r.retried_kinds)
        tally.done_at.extend(r.done_at)
        tally.events.extend(r.events)
    return _summarise(spec, tally, max(r.elapsed_s for r in results))


# --- the run ------------------------------------------------------------------------------
@dataclass
class _Tally:
    """Shared state of the clients of one run (one event loop: no locks needed)."""

    left: int
    deadline: float
    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    retried: Counter = field(default_factory=Counter)  # first failures that were retried
    done_at: list[float] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)

    def take(self) -> bool:
        """One more request to send, if the count and the time limit allow."""
        if self.left <= 0 or time.perf_counter() >= self.deadline:
            return False
        self.left -= 1
        return True


#: A request still in flight this long after the time limit is cut off (a ``timeout``).
GRACE_S = 1.0


async def _run(spec: LoadSpec, target: tuple[str, int, str], barrier: Any = None) -> LoadResult:
    make = _RawClient if spec.client == "raw" else _HttpxClient
    clients = [make(spec, target) for _ in range(spec.clients)]
    try:
        warm_end = time.perf_counter() + spec.time_limit_s  # a hung server bounds this too
        await asyncio.gather(*(_warm(c, spec, warm_end) for c in clients))
        if barrier is not None:
            await asyncio.to_thread(barrier.wait, spec.time_limit_s + 60)
        tally = _Tally(spec.requests, 0.0)
        t0 = time.perf_counter()
        tally.deadline = t0 + spec.time_limit_s
        await asyncio.gather(*(_drive(c, tally, spec) for c in clients))
        elapsed = time.perf_counter() - t0
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    return _summarise(spec, tally, elapsed)


async def _warm(client: _Client, spec: LoadSpec, end: float) -> None:
    for _ in range(spec.warmup):
        if time.perf_counter() >= end:
            return
        await _one(client, spec, end)  # errors here surface again in the timed run


def transient(kind: str) -> bool:
    """Would the remote client retry a failure of this kind?"""
    if kind.startswith("http_"):
        return kind in RETRY_STATUSES
    return kind not in NOT_RETRIED


async def _drive(client: _Client, tally: _Tally, spec: LoadSpec) -> None:
    while tally.take():
        t0 = time.perf_counter()
        error = await _one(client, spec, tally.deadline)
        for _ in range(spec.retries):
            if error is None or not transient(error):
                break
            tally.retried[error] += 1
            if spec.timeline:
                tally.events.append((time.time(), "retry:" + error))
            await asyncio.sleep(random.uniform(0.0, spec.retry_pause_s))
            error = await _one(client, spec, tally.deadline)
        dt = time.perf_counter() - t0
        if error is None:
            tally.latencies.append(dt)
            if spec.timeline:
                tally.done_at.append(time.time())
        else:
            tally.errors[error] += 1
            if spec.timeline:
                tally.events.append((time.time(), "error:" + error))


async def _one(client: _Client, spec: LoadSpec, deadline: float) -> str | None:
    """One request; ``None`` when good, else the error's kind. It may run ``timeout_s``, and
    never past ``deadline + GRACE_S``."""
    limit = min(spec.timeout_s, deadline + GRACE_S - time.perf_counter())
    try:
        async with asyncio.timeout(max(limit, 0.0)):  # no extra task, unlike wait_for
            status, body = await client.request()
    except TimeoutError:
        await client.reset()
        return "timeout"
    except Exception as e:  # OSError, IncompleteReadError, _ProtocolError, httpx's errors
        await client.reset()
        return type(e).__name__
    if not 200 <= status < 300:
        return f"http_{status}"
    if spec.expect is not None and spec.expect not in body:
        return "unexpected_body"
    return None


def _summarise(spec: LoadSpec, tally: _Tally, elapsed: float) -> LoadResult:
    lat = np.asarray(tally.latencies) * 1e3
    ok, errors = len(lat), sum(tally.errors.values())
    done = ok + errors
    stat = (lambda f: float(f(lat))) if ok else (lambda f: None)
    rate = ok / elapsed if elapsed > 0 else 0.0
    return LoadResult(
        clients=spec.clients,
        requests=done,
        ok=ok,
        errors=errors,
        error_kinds=dict(tally.errors),
        not_sent=spec.requests - done,
        elapsed_s=elapsed,
        p50_ms=stat(np.median),
        p99_ms=stat(lambda a: np.percentile(a, 99)),
        mean_ms=stat(np.mean),
        max_ms=stat(np.max),
        req_per_s=rate,
        windows_per_s=rate * spec.windows_per_request,
        client=spec.client,
        retried=sum(tally.retried.values()),
        retried_kinds=dict(tally.retried),
        latencies_ms=lat.tolist(),
        done_at=tally.done_at,
        events=tally.events,
    )


# --- the clients --------------------------------------------------------------------------
class _ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 as we speak it."""


class _Client:
    async def request(self) -> tuple[int, bytes]:
        raise NotImplementedError

    async def reset(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class _RawClient(_Client):
    """One keep-alive HTTP/1.1 connection over asyncio streams; reconnects when needed."""

    def __init__(self, spec: LoadSpec, target: tuple[str, int, str]) -> None:
        self.host, self.port, path = target
        body = spec.body or b""
        method = "POST" if spec.body is not None else "GET"
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if spec.body is not None:
            head += f"Content-Type: {spec.content_type}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in spec.headers)
        self.message = (head + "\r\n").encode("latin-1") + body
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self) -> tuple[int, bytes]:
        if self.reader is None or self.reader.at_eof() or self.writer.is_closing():
            # new, or closed by the server while idle (keep-alive timeout): reconnect, as any
            # pooling client does, rather than count the server's idle close as an error
            await self.reset()
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.writer is not None
        self.writer.write(self.message)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status, length, chunked, close = _parse_head(head)
        if chunked:
            body = await _read_chunked(self.reader)
        elif length is not None:
            body = await self.reader.readexactly(length)
        else:  # no length: the body runs to the end of the connection
            body, close = await self.reader.read(), True
        if close:
            await self.reset()
        return status, body

    async def reset(self) -> None:
        await self.close()
        self.reader = self.writer = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()


def _parse_head(head: bytes) -> tuple[int, int | None, bool, bool]:
    """``(status, content_length, chunked, connection_close)`` of a response head."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise _ProtocolError(f"bad status line {lines[0]!r}")
    status, length, chunked, close = int(parts[1]), None, False, parts[0] == "HTTP/1.0"
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding":
            chunked = "chunked" in value
        elif name == "connection":
            close = value == "close"
    return status, length, chunked, close


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers from the servers we load
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


class _HttpxClient(_Client):
    """``httpx.AsyncClient`` with one keep-alive connection (for comparison)."""

    def __init__(self, spec: LoadSpec, target: tuple[str, int, str]) -> None:
        import httpx

        self.method = "POST" if spec.body is not None else "GET"
        self.url, self.body = spec.url, spec.body
        self.headers = {"content-type": spec.content_type} if spec.body is not None else {}
        self.headers.update(spec.headers)
        self.http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=1), timeout=None, trust_env=False
        )

    async def request(self) -> tuple[int, bytes]:
        r = await self.http.request(self.method, self.url, content=self.body, headers=self.headers)
        return r.status_code, r.content

    async def reset(self) -> None:
        pass  # httpx's pool drops a broken connection itself

    async def close(self) -> None:
        await self.http.aclose()


def client_overhead(
    url: str, requests: int = 300, clients: tuple[int, ...] = (1,)
) -> list[dict[str, Any]]:
    """The same GET load with each client kind: their p50 and req/s side by side.

    Against a trivial endpoint (``/healthz``) the difference is the client's own cost.
    """
    rows = []
    for n in clients:
        for kind in CLIENT_KINDS:
            r = run_load(LoadSpec(url, None, requests, clients=n, warmup=5, client=kind))
            rows.append({"client": kind, **r.to_dict()})
    return rows
