"""Several server processes on one port (``--workers``) and admission before work: real
processes on loopback, real overload."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from test_server import symbol_doc  # tests/integration is on sys.path (rootdir conftest)

from mlsignal import wire


def _pids(url: str, connections: int = 24) -> set[int]:
    """The worker pids that answer ``/v1/models`` over fresh connections."""
    pids = set()
    for _ in range(connections):
        with httpx.Client(trust_env=False) as http:  # a new connection each time
            pids.add(http.get(f"{url}/v1/models", timeout=10).json()["pid"])
    return pids


def test_workers_share_the_port_reload_restart_and_drain(tiny_bundle, server_factory, sp500_bars):
    server = server_factory(tiny_bundle, "--device", "cpu", "--workers", "2").start(timeout_s=120)
    body = wire.dumps({"symbols": [symbol_doc(sp500_bars.iloc[-300:], "SPX", 30, 60)]})
    deadline = time.monotonic() + 60
    pids: set[int] = set()
    while len(pids) < 2 and time.monotonic() < deadline:  # the second worker may still load
        pids |= _pids(server.url)
    assert len(pids) == 2 and server.proc.pid not in pids, server.output()
    answers = {
        httpx.post(f"{server.url}/v1/enhance", content=body, timeout=30).content for _ in range(6)
    }
    results = [wire.loads(a)["results"][0] for a in answers]
    assert len({(r["enhanced_ss"], r["ml_info"]["bull_prob"]) for r in results}) == 1  # same model

    server.signal(signal.SIGHUP)  # every worker reloads its bundle
    deadline = time.monotonic() + 60
    while server.output().count("model swapped") < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.output().count("model swapped") == 2

    victim = min(pids)
    os.kill(victim, signal.SIGKILL)  # a crashed worker is started again
    deadline = time.monotonic() + 90
    new: set[int] = set()
    while time.monotonic() < deadline and len(new - pids) < 1:
        new = _pids(server.url, 8)
    assert new - pids, server.output()
    assert "was killed (SIGKILL); starting it again" in server.output()

    server.signal(signal.SIGTERM)
    assert server.wait(timeout_s=60) == 0
    assert "stopped: 2 workers drained" in server.output()


def test_a_worker_that_cannot_start_stops_the_supervisor(tiny_bundle, server_factory):
    server = server_factory(tiny_bundle, "--device", "cpu", "--workers", "2", "--backend", "tvm")
    server.start(wait_ready=False)
    assert server.wait(timeout_s=60) == 2
    assert "stopping every worker" in server.output()


def test_overload_is_refused_at_once_and_every_answer_keeps_its_deadline(
    tiny_bundle, server_factory, sp500_bars
):
    server = server_factory(
        tiny_bundle, "--device", "cpu", "--threads", "1", "--max-inflight", "4",
    ).start()  # fmt: skip
    doc = {"symbols": [symbol_doc(sp500_bars.iloc[-300 - i :], f"S{i}") for i in range(24)]}
    deadline_ms = 1500
    body = wire.dumps({**doc, "deadline_ms": deadline_ms})
    one = time.perf_counter()
    assert httpx.post(f"{server.url}/v1/enhance", content=body, timeout=30).status_code == 200
    capacity_s = time.perf_counter() - one  # about one request at a time fits

    def call(_: int) -> tuple[int, float, str | None]:
        t0 = time.perf_counter()
        r = httpx.post(f"{server.url}/v1/enhance", content=body, timeout=30)
        return r.status_code, time.perf_counter() - t0, r.headers.get("retry-after")

    def health(_: int) -> float:
        t0 = time.perf_counter()
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        return time.perf_counter() - t0

    clients = 40  # ten times the admission limit
    with ThreadPoolExecutor(clients + 1) as pool:
        answers = list(pool.map(call, range(clients * 3)))
        probes = list(pool.map(health, range(5)))
    statuses = [s for s, _, _ in answers]
    assert set(statuses) <= {200, 503, 504}, statuses
    assert 200 in statuses and 503 in statuses
    assert all(ra == "1" for s, _, ra in answers if s == 503)
    slowest = max(dt for _, dt, _ in answers)
    # every request got its answer (200, 503 or 504) by its deadline, with room for a
    # loaded 2-core machine's scheduling of these 40 client threads (the server answers
    # 504 at the deadline itself; without admission every request queues for the one
    # prepare thread and the last answers come seconds after their deadline)
    assert slowest < deadline_ms / 1e3 + 2.0 + capacity_s, (slowest, capacity_s)
    assert max(probes) < 2.0, probes  # liveness answers under overload
    # and it recovers at once
    assert httpx.post(f"{server.url}/v1/enhance", content=body, timeout=30).status_code == 200
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'kind="overloaded"' in metrics


@pytest.mark.parametrize("header", [True, False])
def test_the_deadline_counts_from_arrival_on_every_route(
    tiny_bundle, server_factory, sp500_bars, header
):
    extra = () if header else ("--request-timeout-ms", "1")
    server = server_factory(tiny_bundle, "--device", "cpu", *extra).start()
    windows = np.zeros((4, 64, 29), np.float32)
    headers = {"x-deadline-ms": "1"} if header else {}
    r = httpx.post(
        f"{server.url}/v1/predict", content=wire.dumps(wire.encode_windows(windows)),
        headers=headers, timeout=30,
    )  # fmt: skip
    assert r.status_code == 504 and "deadline exceeded" in r.json()["error"]
