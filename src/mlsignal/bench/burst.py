"""A bar-close burst: every trading host sends all its symbols at the same instant.

At a bar close ``hosts`` trading hosts each send one request carrying their symbols
(``windows_per_request`` windows, or bars of that many symbols) at the same moment, then
wait. What matters is the time from that instant to the **last** answer of the burst: the
moment every host can act. :func:`run_burst` opens one keep-alive connection per host (over
``processes`` load processes, so sending the bytes is not the bound), warms them, then
fires ``bursts`` bursts ``period_s`` apart, each at an instant fixed in advance on the wall
clock every process shares, and reports the last-answer time of each burst and the
latency of every request.

Loopback only, like :mod:`mlsignal.bench.loadgen` (whose HTTP client it uses).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from mlsignal.bench.loadgen import LoadSpec, _event_loop, _RawClient, check_spec
from mlsignal.errors import ConfigError


@dataclass(frozen=True)
class BurstSpec:
    """One burst benchmark: who sends what, how often.

    Args:
        url: ``http://127.0.0.1:PORT/path`` (loopback only).
        body: one host's request (its ``windows_per_request`` symbols).
        hosts: connections, each one trading host.
        bursts: bursts to fire (each one sample of the last-answer time).
        windows_per_request: windows (symbols) in one host's request.
        period_s: seconds from one burst's start to the next (a burst still running then
            delays the next: bursts never overlap, and each is timed from its own start).
        headers: extra request headers; ``content_type`` the body's type.
        processes: load processes sharing the hosts.
        timeout_s: a request still unanswered after this counts as an error.
    """

    url: str
    body: bytes
    hosts: int = 16
    bursts: int = 20
    windows_per_request: int = 125
    period_s: float = 0.25
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json"
    processes: int = 1
    timeout_s: float = 10.0


@dataclass
class BurstResult:
    """Last-answer times per burst and request latencies, in milliseconds."""

    hosts: int
    bursts: int
    windows_per_burst: int
    ok: int
    errors: int
    last_answer_p50_ms: float | None
    last_answer_p99_ms: float | None
    last_answer_max_ms: float | None
    request_p50_ms: float | None
    request_p99_ms: float | None
    windows_per_s: float  # windows of a burst / its last-answer time, median over bursts

    def to_dict(self) -> dict[str, Any]:
        """JSON-able."""
        return asdict(self)


def _load_spec(spec: BurstSpec) -> LoadSpec:
    return LoadSpec(
        spec.url, spec.body, requests=1, clients=1, timeout_s=spec.timeout_s,
        content_type=spec.content_type, headers=spec.headers,
    )  # fmt: skip


def run_burst(spec: BurstSpec) -> BurstResult:
    """Run the bursts (blocking) and summarise them."""
    if spec.hosts < 1 or spec.bursts < 1 or spec.processes < 1 or spec.processes > spec.hosts:
        raise ConfigError("burst: hosts, bursts >= 1 and 1 <= processes <= hosts")
    check_spec(_load_spec(spec))
    parts = [_part((spec, None, None))] if spec.processes == 1 else _spawn(spec)
    return _summarise(spec, [row for part in parts for row in part])


def _spawn(spec: BurstSpec) -> list[list[tuple[int, float | None]]]:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    p = spec.processes
    shares = [spec.hosts // p + (i < spec.hosts % p) for i in range(p)]
    with ctx.Manager() as manager, ctx.Pool(p) as pool:
        barrier, origin = manager.Barrier(p), manager.Value("d", 0.0)
        jobs = [(replace(spec, hosts=n, processes=1), barrier, origin) for n in shares]
        return pool.map(_part, jobs)


def _part(job: tuple[BurstSpec, Any, Any]) -> list[tuple[int, float | None]]:
    """One process's hosts: ``(burst, seconds from the burst's instant to the answer)``,
    ``None`` for a failed request."""
    return _event_loop(_fire(*job))


async def _fire(spec: BurstSpec, barrier: Any, origin: Any) -> list[tuple[int, float | None]]:
    load = _load_spec(spec)
    target = check_spec(load)
    clients = [_RawClient(load, target) for _ in range(spec.hosts)]
    rows: list[tuple[int, float | None]] = []
    try:
        for _ in range(2):  # connect and warm every host
            await asyncio.gather(*(c.request() for c in clients), return_exceptions=True)
        start = await _agree_on_start(barrier, origin)
        for k in range(spec.bursts):
            await asyncio.sleep(max(0.0, start + k * spec.period_s - time.time()))
            at = time.time()  # the burst's instant (later than planned if the last one overran)
            done = await asyncio.gather(*(_timed(c, spec.timeout_s) for c in clients))
            rows.extend((k, None if t is None else t - at) for t in done)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    return rows


async def _agree_on_start(barrier: Any, origin: Any) -> float:
    """The wall-clock instant of burst 0, the same in every process."""
    if barrier is None:
        return time.time() + 0.2
    if await asyncio.to_thread(barrier.wait, 120) == 0:
        origin.value = time.time() + 0.5
    await asyncio.to_thread(barrier.wait, 120)
    return float(origin.value)


async def _timed(client: _RawClient, timeout_s: float) -> float | None:
    """The wall-clock time the answer was complete, or ``None`` on an error."""
    try:
        async with asyncio.timeout(timeout_s):
            status, _ = await client.request()
    except Exception:  # a timeout, a reset: counted as an error
        await client.reset()
        return None
    return time.time() if 200 <= status < 300 else None


def _stat(a: np.ndarray, f: Any) -> float | None:
    return float(f(a)) if len(a) else None


def _summarise(spec: BurstSpec, rows: list[tuple[int, float | None]]) -> BurstResult:
    ok = [(k, t) for k, t in rows if t is not None]
    lat = np.array([t for _, t in ok]) * 1e3
    by_burst: dict[int, float] = {}
    for k, t in ok:
        by_burst[k] = max(by_burst.get(k, 0.0), t)
    last = np.array(list(by_burst.values())) * 1e3
    windows = spec.hosts * spec.windows_per_request
    median_last = _stat(last, np.median)
    return BurstResult(
        hosts=spec.hosts,
        bursts=spec.bursts,
        windows_per_burst=windows,
        ok=len(ok),
        errors=len(rows) - len(ok),
        last_answer_p50_ms=median_last,
        last_answer_p99_ms=_stat(last, lambda a: np.percentile(a, 99)),
        last_answer_max_ms=_stat(last, np.max),
        request_p50_ms=_stat(lat, np.median),
        request_p99_ms=_stat(lat, lambda a: np.percentile(a, 99)),
        windows_per_s=windows / (median_last / 1e3) if median_last else 0.0,
    )
