"""RetryPolicy and Deadline: what is retried, how long to wait, never past the deadline."""

from __future__ import annotations

import random
import ssl

import httpx
import pytest

from mlsignal.client import Deadline, RetryPolicy
from mlsignal.client.policy import describe_failure, error_text, is_tls_error
from mlsignal.errors import ConfigError

REQ = httpx.Request("POST", "http://a.test/v1/enhance")


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, s: float) -> None:
        self.now += s


def _tls_connect_error() -> httpx.ConnectError:
    try:
        try:
            raise ssl.SSLCertVerificationError(1, "certificate verify failed")
        except ssl.SSLError as e:
            raise httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED]", request=REQ) from e
    except httpx.ConnectError as e:
        return e


@pytest.mark.parametrize("status", [502, 503, 504])
def test_transient_statuses_are_retried(status):
    assert RetryPolicy().should_retry(status)


@pytest.mark.parametrize("status", [*range(400, 452), 500, 501, 505, 200])
def test_4xx_and_other_statuses_are_never_retried(status):
    assert not RetryPolicy().should_retry(status)


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("[Errno 111] Connection refused", request=REQ),
        httpx.ConnectTimeout("t", request=REQ),
        httpx.ReadTimeout("t", request=REQ),
        httpx.WriteTimeout("t", request=REQ),
        httpx.PoolTimeout("t", request=REQ),
        httpx.ReadError("reset", request=REQ),
        httpx.WriteError("broken pipe", request=REQ),
        httpx.RemoteProtocolError("Server disconnected", request=REQ),
    ],
)
def test_transport_errors_and_timeouts_are_retried(exc):
    assert RetryPolicy().should_retry(exc)


@pytest.mark.parametrize(
    "exc",
    [
        httpx.LocalProtocolError("bad header", request=REQ),
        httpx.UnsupportedProtocol("ftp", request=REQ),
        ValueError("not transport"),
        _tls_connect_error(),
    ],
)
def test_non_transient_errors_are_not_retried(exc):
    assert not RetryPolicy().should_retry(exc)


def test_tls_errors_are_recognised_through_the_chain():
    assert is_tls_error(_tls_connect_error())
    assert not is_tls_error(httpx.ConnectError("refused", request=REQ))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"backoff_s": -1.0},
        {"retry_statuses": frozenset({429, 503})},
        {"retry_statuses": frozenset({408})},
    ],
)
def test_policy_refuses_impossible_or_4xx_settings(kwargs):
    with pytest.raises(ConfigError):
        RetryPolicy(**kwargs)


def test_full_jitter_stays_within_bounds_and_is_seeded():
    policy = RetryPolicy(backoff_s=0.02)
    rng = random.Random(7)
    for k in range(5):
        samples = [policy.backoff_for(k, rng) for _ in range(500)]
        cap = 0.02 * 2**k
        assert all(0.0 <= s <= cap for s in samples)
        assert max(samples) > 0.8 * cap and min(samples) < 0.2 * cap  # really spread out
    again = [policy.backoff_for(1, random.Random(3)) for _ in range(3)]
    assert again == [policy.backoff_for(1, random.Random(3))] * 3


def test_backoff_never_sleeps_past_the_deadline():
    clock = FakeClock()
    policy = RetryPolicy(backoff_s=10.0)  # jitter up to 10 s, budget 1 s
    deadline = Deadline(1.0, clock)
    rng = random.Random(0)
    pauses = [policy.pause_before_retry(0, deadline, rng) for _ in range(500)]
    fitted = [p for p in pauses if p is not None]
    assert fitted and None in pauses
    assert all(p <= 1.0 - policy.min_attempt_s for p in fitted)


def test_no_retry_when_less_than_the_minimum_attempt_time_is_left():
    clock = FakeClock()
    policy = RetryPolicy(backoff_s=0.0)
    deadline = Deadline(0.5, clock)
    assert policy.pause_before_retry(0, deadline) == 0.0
    clock.advance(0.5 - 0.0005)  # 0.5 ms left, under the 1 ms minimum
    assert policy.pause_before_retry(0, deadline) is None


def test_deadline_on_a_fake_clock():
    clock = FakeClock(5.0)
    d = Deadline(3.0, clock)
    assert d.remaining_s() == 3.0 and d.remaining_ms() == 3000.0 and d.elapsed_s() == 0.0
    clock.advance(1.25)
    assert d.remaining_s() == pytest.approx(1.75) and d.elapsed_s() == pytest.approx(1.25)
    assert not d.expired() and d.expired(margin_s=2.0)
    clock.advance(10.0)
    assert d.remaining_s() == 0.0 and d.expired()


def test_failure_reasons_are_short_and_stable():
    base = "http://127.0.0.1:8001"
    assert describe_failure(httpx.ReadTimeout("x", request=REQ), base, 3.0) == (
        f"timeout after 3.0 s at {base}"
    )
    refused = httpx.ConnectError("[Errno 111] Connection refused", request=REQ)
    assert describe_failure(refused, base, 3.0) == f"connection refused at {base}"
    assert describe_failure(_tls_connect_error(), base, 3.0).startswith("TLS error at")
    dropped = httpx.RemoteProtocolError("Server disconnected", request=REQ)
    assert describe_failure(dropped, base, 3.0).startswith(f"connection to {base} dropped")


def test_error_text_prefers_the_servers_error_field():
    assert error_text(b'{"error": "queue full"}', 503) == "queue full"
    assert error_text(b"<html>bad gateway</html>\nmore", 502) == "<html>bad gateway</html>"
    assert error_text(b"", 504) == "Gateway Timeout"
    assert len(error_text(b"x" * 5000, 500)) == 200
