"""RemoteClient against scripted endpoints (httpx.MockTransport) and a real slow socket.

No mocks of mlsignal's own server: each endpoint is a small script of HTTP behaviours.
"""

from __future__ import annotations

import logging
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import orjson
import pytest

from mlsignal.client import BreakerConfig, RemoteClient, RetryPolicy
from mlsignal.config import Settings
from mlsignal.errors import ConfigError, RemoteError, VersionMismatchError

A, B = "http://gpu-a.test:8000", "http://gpu-b.test:8000"
OURS = "a1" * 32
THEIRS = "b2" * 32
KEY = "s3cr3t-KEY-0123456789"

Step = Callable[[httpx.Request], httpx.Response]


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, s: float) -> None:
        self.now += s


def ok(contract_hash: str = OURS) -> Step:
    doc = {"model_version": "v-test", "contract_hash": contract_hash, "results": []}
    return lambda request: httpx.Response(200, json=doc)


def status(code: int, error: str = "nope") -> Step:
    return lambda request: httpx.Response(code, json={"error": error})


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


class Servers:
    """Scripted endpoints: each URL plays its steps in order, repeating the last one."""

    def __init__(
        self, plans: dict[str, list[Step]], clock: FakeClock | None = None, step_s: float = 0.0
    ) -> None:
        self.plans = {url: list(steps) for url, steps in plans.items()}
        self.calls: list[tuple[str, httpx.Request]] = []
        self.clock, self.step_s = clock, step_s

    def __call__(self, request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        self.calls.append((base, request))
        if self.clock is not None:
            self.clock.advance(self.step_s)  # time the server "takes"
        plan = self.plans[base]
        return (plan.pop(0) if len(plan) > 1 else plan[0])(request)

    def bodies(self) -> list[dict]:
        return [orjson.loads(r.content) for _, r in self.calls]

    def client(self, urls: tuple[str, ...] = (A,), **kw) -> RemoteClient:
        kw.setdefault("contract_hash", OURS)
        kw.setdefault("rng", random.Random(0))
        kw.setdefault("sleep", lambda s: None)
        if self.clock is not None:
            kw.setdefault("clock", self.clock)
        return RemoteClient(list(urls), transport=httpx.MockTransport(self), **kw)


BODY = {"symbols": [{"symbol": "SPX", "ss": 1.0, "bs": 2.0, "bars": {}}]}


def test_success_sends_json_auth_pin_and_deadline():
    servers = Servers({A: [ok()]})
    body = dict(BODY, contract_hash=None, deadline_ms=None)
    with servers.client(api_key=KEY) as client:
        reply = client.enhance(body)
    assert reply.endpoint == A and reply.attempts == 1 and reply.latency_ms >= 0
    assert reply.doc["model_version"] == "v-test"
    ((_, request),) = servers.calls
    assert request.url == A + "/v1/enhance" and request.method == "POST"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    sent = servers.bodies()[0]
    assert sent["contract_hash"] == OURS and 2900 < sent["deadline_ms"] <= 3000
    assert sent["symbols"] == BODY["symbols"]
    assert body == dict(BODY, contract_hash=None, deadline_ms=None)  # caller's dict untouched


def test_503_fails_over_to_the_next_endpoint():
    servers = Servers({A: [status(503, "queue full")], B: [ok()]})
    client = servers.client((A, B))
    reply = client.enhance(BODY)
    assert (reply.endpoint, reply.attempts) == (B, 2)
    assert [u for u, _ in servers.calls] == [A, B]
    assert client._breakers[A].failures == 1 and client.endpoint_states()[B] == "closed"


def test_503_on_the_only_endpoint_is_retried_after_a_jittered_pause():
    pauses: list[float] = []
    servers = Servers({A: [status(503), ok()]})
    reply = servers.client(sleep=pauses.append).enhance(BODY)
    assert reply.attempts == 2 and len(pauses) == 1 and 0 <= pauses[0] <= 0.02


def test_connect_error_on_a_then_b_answers():
    servers = Servers({A: [refused], B: [ok()]})
    reply = servers.client((A, B)).enhance(BODY)
    assert (reply.endpoint, reply.attempts) == (B, 2)


@pytest.mark.parametrize("code", [401, 403])
def test_auth_failure_is_final_and_not_a_breaker_failure(code):
    servers = Servers({A: [status(code, "missing or invalid API key")], B: [ok()]})
    client = servers.client((A, B), api_key="wrong")
    with pytest.raises(RemoteError, match=f"auth failed at {A}: {code}") as e:
        client.enhance(BODY)
    assert (e.value.attempts, e.value.endpoint) == (1, A)
    assert len(servers.calls) == 1 and client._breakers[A].failures == 0


@pytest.mark.parametrize("code", [400, 404, 413, 422, 429])
def test_other_4xx_are_final_with_the_servers_reason(code):
    servers = Servers({A: [status(code, "symbols[0].ss: must be a number")], B: [ok()]})
    with pytest.raises(RemoteError) as e:
        servers.client((A, B)).enhance(BODY)
    assert str(e.value) == f"{A} rejected the request: {code} symbols[0].ss: must be a number"
    assert len(servers.calls) == 1


def test_409_raises_version_mismatch_with_the_servers_text():
    text = "model version mismatch: server serves b2b2, request pins a1a1"
    servers = Servers({A: [status(409, text)], B: [ok()]})
    client = servers.client((A, B))
    with pytest.raises(VersionMismatchError) as e:
        client.enhance(BODY)
    assert str(e.value) == f"{text} ({A})"
    assert e.value.attempts == 1 and e.value.endpoint == A and len(servers.calls) == 1
    assert client.endpoint_states()[A] == "closed"


def test_a_409_without_the_word_still_says_mismatch():
    servers = Servers({A: [status(409, "contract hash differs")]})
    with pytest.raises(VersionMismatchError, match=r"^model version mismatch: contract hash"):
        servers.client().enhance(BODY)


def test_a_response_from_another_model_is_refused_unless_accepted():
    servers = Servers({A: [ok(THEIRS)]})
    client = servers.client()
    with pytest.raises(VersionMismatchError) as e:
        client.enhance(BODY)
    assert str(e.value) == (
        f"model version mismatch: server {A} serves {THEIRS[:12]} (model_version v-test), "
        f"local bundle is {OURS[:12]}"
    )
    assert client._breakers[A].failures == 0  # the server is healthy
    accepting = servers.client(accept_mismatch=True)
    reply = accepting.enhance(dict(BODY, contract_hash=OURS))
    assert reply.doc["contract_hash"] == THEIRS
    assert "contract_hash" not in servers.bodies()[-1]  # no pin sent


def test_500_on_the_only_endpoint_is_not_retried():
    servers = Servers({A: [status(500, "internal error")]})
    client = servers.client()
    with pytest.raises(RemoteError, match="HTTP 500") as e:
        client.enhance(BODY)
    assert e.value.attempts == 1 and len(servers.calls) == 1
    assert client._breakers[A].failures == 1


def test_500_fails_over_to_another_endpoint():
    servers = Servers({A: [status(500)], B: [ok()]})
    reply = servers.client((A, B)).enhance(BODY)
    assert (reply.endpoint, reply.attempts) == (B, 2)


def test_persistent_503_reports_both_attempts():
    servers = Servers({A: [status(503, "queue full")]})
    with pytest.raises(RemoteError) as e:
        servers.client().enhance(BODY)
    assert str(e.value) == f"HTTP 503 at {A}: queue full (2 attempts)"
    assert e.value.attempts == 2 and e.value.endpoint == A


def test_a_malformed_200_counts_against_the_endpoint():
    servers = Servers({A: [lambda r: httpx.Response(200, content=b"<html>")]})
    client = servers.client()
    with pytest.raises(RemoteError, match="malformed response"):
        client.enhance(BODY)
    assert len(servers.calls) == 1 and client._breakers[A].failures == 1


def test_an_oversized_response_is_refused(monkeypatch):
    monkeypatch.setattr("mlsignal.client.remote.MAX_RESPONSE_BYTES", 1000)
    big = lambda request: httpx.Response(200, json={"results": ["x" * 2000]})  # noqa: E731
    with pytest.raises(RemoteError, match=f"^response from {A} is over 1000 B$"):
        Servers({A: [big]}).client().enhance(BODY)


def test_an_unexpected_error_still_reaches_the_caller_as_a_remote_error():
    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("transport bug")

    servers = Servers({A: [broken], B: [ok()]})
    assert servers.client((A, B)).enhance(BODY).endpoint == B
    with pytest.raises(RemoteError, match=f"RuntimeError at {A}: transport bug"):
        Servers({A: [broken]}).client().enhance(BODY)


def test_all_circuits_open_fails_at_once_without_io():
    servers = Servers({A: [refused], B: [refused]})
    client = servers.client((A, B), breaker=BreakerConfig(failure_threshold=1, reset_after_s=60))
    with pytest.raises(RemoteError, match="connection refused"):
        client.enhance(BODY)
    assert client.endpoint_states() == {A: "open", B: "open"}
    n_calls = len(servers.calls)
    times = []
    for _ in range(1000):
        t0 = time.perf_counter()
        try:
            client.enhance(BODY)
        except RemoteError as e:
            times.append(time.perf_counter() - t0)
            err = e
    assert len(times) == 1000 and len(servers.calls) == n_calls  # no transport call at all
    assert statistics.median(times) * 1e3 < 0.5
    assert str(err) == f"circuit open for every endpoint: {A}, {B}"
    assert err.attempts == 0 and err.endpoint is None


def test_an_open_endpoint_is_skipped_and_probed_in_the_background():
    """The caller's call never takes the half-open probe (it did: a hung server's probe then
    stalled a trader's call for the whole budget); a background probe re-admits it."""
    servers = Servers({A: [refused, refused, ok()], B: [ok()]})
    client = servers.client((A, B), breaker=BreakerConfig(failure_threshold=2, reset_after_s=0.2))
    assert [client.enhance(BODY).attempts for _ in range(2)] == [2, 2]  # A refused, B answered
    assert client.endpoint_states()[A] == "open"
    end = time.monotonic() + 10
    while client.endpoint_states()[A] != "closed" and time.monotonic() < end:
        reply = client.enhance(BODY)
        assert (reply.endpoint, reply.attempts) == (B, 1)  # straight to B, probe or not
        time.sleep(0.01)
    assert client.endpoint_states()[A] == "closed"
    to_a = [r for url, r in servers.calls if url == A]
    assert [(r.method, r.url.path) for r in to_a[2:]] == [("GET", "/v2/health/ready")]
    assert client.enhance(BODY).endpoint == A  # re-admitted
    client.close()


def test_deadline_ms_is_sent_and_decreases_and_bounds_each_attempt():
    clock = FakeClock()
    servers = Servers({A: [status(503)], B: [ok()]}, clock=clock, step_s=0.5)
    reply = servers.client((A, B)).enhance(dict(BODY, deadline_ms=None))
    assert reply.attempts == 2 and reply.latency_ms == pytest.approx(1000.0)
    assert [b["deadline_ms"] for b in servers.bodies()] == [3000, 2500]
    timeouts = [r.extensions["timeout"] for _, r in servers.calls]
    assert [t["read"] for t in timeouts] == [3.0, 2.5]
    assert [t["connect"] for t in timeouts] == [3.0, 2.5]


def test_the_callers_own_smaller_deadline_ms_is_kept():
    servers = Servers({A: [ok()]})
    servers.client().enhance(dict(BODY, deadline_ms=250))
    assert servers.bodies()[0]["deadline_ms"] == 250


def test_no_attempt_starts_with_less_than_a_millisecond_left():
    clock = FakeClock()
    servers = Servers({A: [status(503)], B: [ok()]}, clock=clock, step_s=3.0 - 0.0005)
    with pytest.raises(RemoteError, match="HTTP 503") as e:
        servers.client((A, B)).enhance(BODY)
    assert e.value.attempts == 1 and len(servers.calls) == 1


def test_a_backoff_never_sleeps_past_the_deadline():
    slept = 0
    for seed in range(30):
        clock = FakeClock()
        start = clock.now

        def sleep(s: float, clock: FakeClock = clock, start: float = start) -> None:
            nonlocal slept
            assert clock.now + s <= start + 3.0 - 0.001  # at least 1 ms left after it
            slept += 1
            clock.advance(s)

        servers = Servers({A: [refused]}, clock=clock, step_s=0.4)
        policy = RetryPolicy(max_attempts=10, backoff_s=1.0)
        client = servers.client(retry=policy, rng=random.Random(seed), sleep=sleep)
        with pytest.raises(RemoteError, match="connection refused"):
            client.enhance(BODY)
        assert 1 <= len(servers.calls) <= 10
    assert slept > 30  # the pauses did happen


def test_the_key_never_appears_in_errors_or_logs(caplog):
    caplog.set_level(logging.DEBUG)
    leaky = status(401, f"invalid API key {KEY}")  # even a server that echoes it back
    servers = Servers({A: [leaky, status(503, KEY), refused, refused, refused]})
    client = servers.client(api_key=KEY, breaker=BreakerConfig(failure_threshold=2))
    messages = []
    for _ in range(4):
        with pytest.raises(RemoteError) as e:
            client.enhance(BODY)
        messages.append(str(e.value))
    assert "auth failed" in messages[0] and "***" in messages[0]
    assert "circuit open" in messages[-1]
    assert KEY not in repr(client)
    logged = [r.getMessage() for r in caplog.records]
    assert any("circuit open" in m for m in logged)
    assert not any(KEY in m for m in messages + logged)


def test_breaker_logs_once_per_state_change_not_per_call(caplog):
    caplog.set_level(logging.DEBUG, logger="mlsignal.client")
    servers = Servers({A: [refused]})
    client = servers.client()
    for _ in range(30):
        with pytest.raises(RemoteError):
            client.enhance(BODY)
    records = [r for r in caplog.records if r.name.startswith("mlsignal.client")]
    assert len(records) == 1 and records[0].levelno == logging.WARNING


def test_a_slow_real_server_is_cut_off_at_the_deadline(slow_server):
    client = RemoteClient([slow_server], timeout_s=0.3)
    t0 = time.perf_counter()
    with pytest.raises(RemoteError) as e:
        client.enhance(BODY)
    elapsed = time.perf_counter() - t0
    client.close()
    assert elapsed < 0.3 + 0.25, elapsed
    assert str(e.value).startswith(f"timeout after 0.3 s at {slow_server}")
    assert e.value.endpoint == slow_server


def test_predict_sends_windows_and_the_pin():
    servers = Servers({A: [ok()]})
    reply = servers.client().predict(np.zeros((2, 3, 4), dtype=np.float32))
    assert reply.attempts == 1 and servers.calls[0][1].url.path == "/v1/predict"
    sent = servers.bodies()[0]
    assert np.asarray(sent["windows"]).shape == (2, 3, 4) and sent["contract_hash"] == OURS
    with pytest.raises(RemoteError, match="cannot encode windows"):
        servers.client().predict([[1.0], [1.0, 2.0]])


def test_models_asks_a_named_endpoint_even_when_its_circuit_is_open():
    servers = Servers({A: [refused, ok(THEIRS)], B: [ok()]})
    client = servers.client((A, B), breaker=BreakerConfig(failure_threshold=1, reset_after_s=60))
    assert client.models()["contract_hash"] == OURS  # A refused, B answered; no pin check
    assert client.endpoint_states()[A] == "open"
    assert client.models(A + "/")["contract_hash"] == THEIRS
    assert client.endpoint_states()[A] == "closed"
    assert servers.calls[-1][1].method == "GET"
    with pytest.raises(ConfigError):
        client.models("http://elsewhere:1")


@pytest.mark.parametrize(
    "urls", [[], ["ftp://gpu:21"], ["gpu-a:8000"], ["http://"], ["http://h:1/?q=1"]]
)
def test_bad_urls_are_config_errors(urls):
    with pytest.raises(ConfigError):
        RemoteClient(urls)


def test_urls_are_normalised_and_credentials_refused():
    client = RemoteClient(f"{A}/, {B}, {A}")
    assert client.urls == (A, B)
    client.close()
    with pytest.raises(ConfigError) as e:
        RemoteClient(["http://user:hunter2@gpu:8000"])
    assert "hunter2" not in str(e.value)
    with pytest.raises(ConfigError):
        RemoteClient([A], timeout_s=0)
    with pytest.raises(ConfigError):
        RemoteClient([A], verify="/no/such/ca.pem")


def test_from_settings_and_a_closed_client():
    settings = Settings(api_urls=(A,), api_key=KEY, timeout_s=1.5)
    client = RemoteClient.from_settings(settings, transport=httpx.MockTransport(ok()))
    assert client.timeout_s == 1.5 and client.enhance(BODY).endpoint == A
    client.close()
    with pytest.raises(RemoteError, match="closed"):
        client.enhance(BODY)


def test_importing_the_client_does_not_import_torch():
    code = (
        "import mlsignal.client, sys; "
        "bad = {'torch', 'mlsignal.server', 'mlsignal.training', 'fastapi'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- a real slow socket server -------------------------------------------------------------
@pytest.fixture
def slow_server() -> Iterator[str]:
    """A loopback HTTP server that waits (at most 3 s, or until torn down) before answering."""
    release = threading.Event()

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            release.wait(3.0)
            try:
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
            except OSError:
                pass  # the client gave up long ago

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
