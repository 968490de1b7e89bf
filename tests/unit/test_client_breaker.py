"""CircuitBreaker on a fake clock: closed -> open -> half-open -> closed / open again."""

from __future__ import annotations

import logging

import pytest

from mlsignal.client import BreakerConfig, CircuitBreaker
from mlsignal.errors import ConfigError

URL = "http://gpu-1:8000"


class FakeClock:
    def __init__(self, now: float = 50.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, s: float) -> None:
        self.now += s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock) -> CircuitBreaker:
    return CircuitBreaker(URL, BreakerConfig(failure_threshold=3, reset_after_s=5.0), clock)


def _open(breaker: CircuitBreaker) -> None:
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure("connection refused")


def test_opens_after_threshold_consecutive_failures(breaker):
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.record_success()  # resets the count: failures must be consecutive
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()


def test_half_open_after_reset_lets_one_probe_through_and_closes_on_success(breaker, clock):
    _open(breaker)
    clock.advance(4.99)
    assert not breaker.allow() and breaker.retry_in_s() == pytest.approx(0.01)
    clock.advance(0.01)
    assert breaker.allow()  # the probe
    assert breaker.state == "half_open"
    assert not breaker.allow() and not breaker.allow()  # only one probe at a time
    breaker.record_success()
    assert breaker.state == "closed" and breaker.failures == 0
    assert breaker.allow() and breaker.allow()


def test_a_failed_probe_reopens_for_another_full_reset_period(breaker, clock):
    _open(breaker)
    clock.advance(5.0)
    assert breaker.allow()
    breaker.record_failure("still refused")
    assert breaker.state == "open" and not breaker.allow()
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow() and breaker.state == "half_open"


def test_a_lost_probe_does_not_wedge_the_circuit(breaker, clock):
    _open(breaker)
    clock.advance(5.0)
    assert breaker.allow()  # this probe's caller never reports back
    clock.advance(2.0)
    assert not breaker.allow()
    clock.advance(3.0)
    assert breaker.allow()  # another probe after reset_after_s


def test_state_changes_are_logged_once(breaker, clock, caplog):
    caplog.set_level(logging.DEBUG, logger="mlsignal.client.breaker")
    for _ in range(20):
        breaker.record_failure("connection refused at http://gpu-1:8000")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "circuit open for http://gpu-1:8000" in warnings[0].getMessage()
    assert "connection refused" in warnings[0].getMessage()
    for _ in range(3):  # probe cycles while still down: no more warnings
        clock.advance(5.0)
        assert breaker.allow()
        breaker.record_failure("refused")
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
    clock.advance(5.0)
    assert breaker.allow()
    for _ in range(10):
        breaker.record_success()
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1 and "circuit closed" in infos[0].getMessage()


def test_success_in_closed_state_logs_nothing(breaker, caplog):
    caplog.set_level(logging.DEBUG, logger="mlsignal.client.breaker")
    for _ in range(10):
        assert breaker.allow()
        breaker.record_success()
    breaker.record_failure()
    assert caplog.records == []


@pytest.mark.parametrize("kwargs", [{"failure_threshold": 0}, {"reset_after_s": 0.0}])
def test_config_refuses_impossible_values(kwargs):
    with pytest.raises(ConfigError):
        BreakerConfig(**kwargs)
