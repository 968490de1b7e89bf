"""Hedged fail-over and the one deadline, on scripted endpoints (httpx.MockTransport).

A scripted endpoint may block (a hung server): the caller must still return by its deadline,
ask the next endpoint after the hedge delay, and take the first good answer. Real sockets and
real server processes: tests/integration/test_faults_client.py. Time bounds carry 0.3 s of
slack for a loaded 2-core box.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from mlsignal.client import BreakerConfig, Deadline, HedgePolicy, RemoteClient, RetryPolicy
from mlsignal.errors import ConfigError, RemoteError

A, B, C = "http://gpu-a.test:8000", "http://gpu-b.test:8000", "http://gpu-c.test:8000"
OURS = "a1" * 32
BODY = {"symbols": []}
SLACK_S = 0.3

Step = Callable[[httpx.Request], httpx.Response]


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"contract_hash": OURS, "results": []})


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at teardown: blocked endpoints return (their answers go nowhere)."""
    event = threading.Event()
    yield event
    event.set()


def hung(release: threading.Event) -> Step:
    def step(request: httpx.Request) -> httpx.Response:
        release.wait(30.0)
        return ok(request)

    return step


def after(seconds: float, then: Step) -> Step:
    def step(request: httpx.Request) -> httpx.Response:
        time.sleep(seconds)
        return then(request)

    return step


def status(code: int) -> Step:
    return lambda request: httpx.Response(code, json={"error": f"status {code}"})


class Endpoints:
    """Each URL answers with its step; calls are recorded (from worker threads)."""

    def __init__(self, steps: dict[str, Step]) -> None:
        self.steps = steps
        self.calls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        self.calls.append(base)
        return self.steps[base](request)

    def client(self, *urls: str, **kw: object) -> RemoteClient:
        kw.setdefault("contract_hash", OURS)
        kw.setdefault("rng", random.Random(0))
        return RemoteClient(list(urls), transport=httpx.MockTransport(self), **kw)


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    t0 = time.perf_counter()
    try:
        out: object = fn()
    except RemoteError as e:
        out = e
    return out, time.perf_counter() - t0


def test_a_blocked_endpoint_cannot_hold_the_caller_past_its_deadline(release):
    """The caller's wait ends at the deadline even when the attempt is stuck somewhere no
    socket timeout reaches (here: inside the transport)."""
    client = Endpoints({A: hung(release)}).client(A, timeout_s=0.3)
    err, elapsed = timed(lambda: client.enhance(BODY))
    assert isinstance(err, RemoteError) and str(err) == f"timeout after 0.3 s at {A}"
    assert err.attempts == 1 and elapsed < 0.3 + SLACK_S
    assert client._breakers[A].failures == 1  # a timeout counts against the endpoint


def test_a_hung_first_endpoint_is_hedged_and_the_second_answers(release):
    eps = Endpoints({A: hung(release), B: ok})
    client = eps.client(A, B, timeout_s=2.0, hedge=HedgePolicy(max_delay_s=0.2))
    reply, elapsed = timed(lambda: client.enhance(BODY))
    assert (reply.endpoint, reply.attempts) == (B, 2)
    assert 0.2 <= elapsed < 0.2 + SLACK_S  # A cost its bound, not the budget
    assert client._breakers[A].failures == 1  # lost the race after its hedge delay
    assert client._breakers[B].failures == 0


def test_hedging_waits_the_endpoints_recent_p95(release):
    steps = {A: ok, B: ok}
    eps = Endpoints(steps)
    client = eps.client(A, B, timeout_s=2.0, hedge=HedgePolicy(min_delay_s=0.05, max_delay_s=1))
    for _ in range(10):
        assert client.enhance(BODY).endpoint == A  # fast answers: p95 well under 50 ms
    assert client._health.hedge_delay(A, 1.0) == pytest.approx(0.05)
    steps[A] = hung(release)
    reply, elapsed = timed(lambda: client.enhance(BODY))
    assert reply.endpoint == B and elapsed < 0.05 + SLACK_S


def test_a_slow_first_endpoint_still_wins_if_it_answers_first(release):
    eps = Endpoints({A: after(0.15, ok), B: hung(release)})
    client = eps.client(A, B, timeout_s=2.0, hedge=HedgePolicy(max_delay_s=0.05))
    reply, elapsed = timed(lambda: client.enhance(BODY))
    assert (reply.endpoint, reply.attempts) == (A, 2)  # B was asked too, A answered first
    assert elapsed < 0.15 + SLACK_S
    assert client._breakers[B].failures == 0  # B was not given its hedge delay: no fault


def test_a_fast_failure_fails_over_at_once_without_waiting_for_the_hedge():
    eps = Endpoints({A: status(503), B: ok})
    client = eps.client(A, B, timeout_s=2.0, hedge=HedgePolicy(max_delay_s=1.0))
    reply, elapsed = timed(lambda: client.enhance(BODY))
    assert (reply.endpoint, reply.attempts) == (B, 2) and elapsed < SLACK_S


def test_a_final_answer_waits_for_the_attempt_in_flight(release):
    """B says 401 while A is still working: A's good answer wins; no new attempt starts."""
    eps = Endpoints({A: after(0.2, ok), B: status(401), C: ok})
    hedge, retry = HedgePolicy(max_delay_s=0.05), RetryPolicy(max_attempts=3)
    client = eps.client(A, B, C, timeout_s=2.0, hedge=hedge, retry=retry)
    reply, _ = timed(lambda: client.enhance(BODY))
    assert reply.endpoint == A and C not in eps.calls


def test_a_final_answer_is_the_reason_when_nothing_better_comes(release):
    eps = Endpoints({A: hung(release), B: status(401)})
    client = eps.client(A, B, timeout_s=0.4, hedge=HedgePolicy(max_delay_s=0.05))
    err, elapsed = timed(lambda: client.enhance(BODY))
    assert isinstance(err, RemoteError) and "auth failed" in str(err)
    assert elapsed < 0.4 + SLACK_S


def test_hedges_count_as_attempts(release):
    eps = Endpoints({A: hung(release), B: hung(release), C: ok})
    client = eps.client(A, B, C, timeout_s=0.5, hedge=HedgePolicy(max_delay_s=0.05))
    err, elapsed = timed(lambda: client.enhance(BODY))
    assert isinstance(err, RemoteError) and err.attempts == 2 and C not in eps.calls
    assert str(err) == f"timeout after 0.5 s at {A}; timeout after 0.5 s at {B} (2 attempts)"
    assert elapsed < 0.5 + SLACK_S


def test_the_open_circuit_of_a_hung_endpoint_is_probed_off_the_callers_call(release):
    eps = Endpoints({A: hung(release), B: ok})
    breaker = BreakerConfig(failure_threshold=2, reset_after_s=0.1)
    client = eps.client(A, B, timeout_s=1.0, breaker=breaker, hedge=HedgePolicy(max_delay_s=0.05))
    for _ in range(2):
        assert client.enhance(BODY).endpoint == B
    assert client.endpoint_states()[A] == "open"
    slowest = 0.0
    end = time.monotonic() + 1.0  # several probe periods: probes of A hang in the background
    while time.monotonic() < end:
        reply, elapsed = timed(lambda: client.enhance(BODY))
        assert (reply.endpoint, reply.attempts) == (B, 1)
        slowest = max(slowest, elapsed)
    assert slowest < 0.05  # no call waited for A, probe or not
    assert eps.calls.count(A) >= 3  # the two lost races and at least one background probe
    client.close()


@pytest.mark.parametrize(
    ("samples", "share", "expected"),
    [
        ([], 1.0, 0.5),  # no history: the bound
        ([0.001] * 7, 0.3, 0.3),  # too few: the bound, here the share
        ([0.001] * 20, 1.0, 0.02),  # fast: the floor
        ([0.03] * 19 + [0.2], 1.0, 0.03),  # one slow answer in 20 is above p95
        ([0.03] * 18 + [0.2, 0.3], 1.0, 0.2),
        ([0.9] * 10, 0.4, 0.4),  # slow: the share
    ],
)
def test_hedge_delay(samples, share, expected):
    assert HedgePolicy().delay(samples, share) == pytest.approx(expected)


@pytest.mark.parametrize(
    "kwargs",
    [{"quantile": 0}, {"min_delay_s": 1.0, "max_delay_s": 0.5}, {"window": 0}, {"min_samples": 0}],
)
def test_hedge_policy_refuses_impossible_values(kwargs):
    with pytest.raises(ConfigError):
        HedgePolicy(**kwargs)


def test_a_deadline_may_start_before_the_call():
    """The enhancer's starts when its caller entered enhance_*: preparation counts."""
    now = [100.0]
    deadline = Deadline.since(3.0, 0.5, lambda: now[0])
    assert deadline.remaining_s() == pytest.approx(2.5)
    assert deadline.elapsed_s() == pytest.approx(0.5)
    now[0] += 2.5
    assert deadline.expired()


def test_a_budget_spent_before_the_call_asks_nothing():
    eps = Endpoints({A: ok})
    client = eps.client(A, timeout_s=0.5)
    with pytest.raises(RemoteError, match=r"^timeout after 0.5 s before any request") as e:
        client.enhance(BODY, deadline=Deadline.since(0.5, 0.6))
    assert e.value.attempts == 0 and eps.calls == [] and client._breakers[A].failures == 0
