"""A circuit breaker per endpoint: stop calling a server that keeps failing.

``closed`` (calls go through) -> ``open`` after ``failure_threshold`` consecutive failures
(calls skip the endpoint at once, no waiting on a dead server) -> ``half_open`` once
``reset_after_s`` has passed (exactly one probe call is let through) -> ``closed`` when the
probe succeeds, back to ``open`` when it fails. Thread-safe; the clock is injectable.

Timeouts count as failures like any other, a hedged-away hang included. The remote client
never lets a trader's call take the half-open probe: its calls use an endpoint only while
the circuit is closed, and :mod:`mlsignal.client.health` probes open ones in the background.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from mlsignal.client.policy import Clock
from mlsignal.errors import ConfigError

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True)
class BreakerConfig:
    """When a circuit opens and when it lets a probe through.

    Attributes:
        failure_threshold: consecutive failures that open the circuit.
        reset_after_s: seconds an open circuit waits before one probe call is allowed.
    """

    failure_threshold: int = 3
    reset_after_s: float = 5.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ConfigError(f"failure_threshold must be >= 1, got {self.failure_threshold}")
        if not self.reset_after_s > 0:
            raise ConfigError(f"reset_after_s must be positive, got {self.reset_after_s}")


class CircuitBreaker:
    """The health of one endpoint, as seen from this client.

    Call :meth:`allow` before a call and :meth:`record_success` or :meth:`record_failure`
    after it. A half-open probe that never reports (its caller died) is considered lost
    after ``reset_after_s`` and another probe is allowed. Logs once per state change:
    WARNING when the circuit opens, INFO when it closes, DEBUG for probe cycles.
    """

    def __init__(
        self, name: str, config: BreakerConfig | None = None, clock: Clock = time.monotonic
    ) -> None:
        self.name = name
        self.config = config or BreakerConfig()
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0  # consecutive
        self._since = 0.0  # when the circuit opened, or when the probe was let through

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"`` (as stored; :meth:`allow` moves it)."""
        return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures recorded since the last success."""
        return self._failures

    def allow(self) -> bool:
        """May a call go to this endpoint now? In half-open, True for one probe only."""
        with self._lock:
            if self._state == CLOSED:
                return True
            if self._clock() - self._since < self.config.reset_after_s:
                return False  # open and cooling down, or a probe is in flight
            if self._state == OPEN:
                self._state = HALF_OPEN
                log.debug("circuit half-open for %s: probing", self.name)
            self._since = self._clock()
            return True

    def record_success(self) -> None:
        """The endpoint answered (any non-5xx answer counts): close the circuit."""
        with self._lock:
            self._failures = 0
            if self._state != CLOSED:
                self._state = CLOSED
                log.info("circuit closed for %s: the endpoint answers again", self.name)

    def record_failure(self, reason: str = "") -> None:
        """The endpoint failed (transport error, timeout, 5xx); may open the circuit."""
        with self._lock:
            self._failures += 1
            if self._state == HALF_OPEN:
                self._open()
                log.debug("circuit re-opened for %s: probe failed: %s", self.name, reason)
            elif self._state == CLOSED and self._failures >= self.config.failure_threshold:
                self._open()
                log.warning(
                    "circuit open for %s after %d consecutive failures (%s); skipping it "
                    "for %.1f s",
                    self.name,
                    self._failures,
                    reason or "no reason given",
                    self.config.reset_after_s,
                )

    def retry_in_s(self) -> float:
        """Seconds until an open circuit lets a probe through (0 when it would now)."""
        if self._state == CLOSED:
            return 0.0
        return max(0.0, self.config.reset_after_s - (self._clock() - self._since))

    def _open(self) -> None:
        self._state = OPEN
        self._since = self._clock()
