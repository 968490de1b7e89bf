"""Retry and hedging policies and the deadline of one remote call.

A :class:`Deadline` is the caller's whole budget (``GPU_INFERENCE_TIMEOUT``), set when the
caller enters ``enhance_*``: every connect, read, retry, hedge and fail-over of one call runs
inside it. A :class:`RetryPolicy` says which failures are transient (connect errors,
timeouts, 502/503/504: worth another try) and how long to wait before retrying the same
endpoint (full jitter, never past the deadline). A 4xx is never retried: the server is up
and said no. A :class:`HedgePolicy` says when a call that has not been answered yet also
asks the next endpoint.
"""

from __future__ import annotations

import math
import random
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from mlsignal import wire
from mlsignal.errors import ConfigError, WireError

Clock = Callable[[], float]
TEXT_CHARS = 200  # of a server's error text kept in a reason


class Deadline:
    """A fixed point in time ``budget_s`` seconds after construction, on ``clock``."""

    def __init__(self, budget_s: float, clock: Clock = time.monotonic) -> None:
        self.budget_s = budget_s
        self._clock = clock
        self._start = clock()
        self._end = self._start + budget_s

    @classmethod
    def since(cls, budget_s: float, spent_s: float, clock: Clock = time.monotonic) -> Deadline:
        """A deadline that started ``spent_s`` seconds ago (the caller entered ``enhance_*``
        then, and prepared its input since)."""
        deadline = cls(budget_s, clock)
        deadline._start -= max(0.0, spent_s)
        deadline._end = deadline._start + budget_s
        return deadline

    def remaining_s(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self._end - self._clock())

    def remaining_ms(self) -> float:
        """Milliseconds left, never negative."""
        return self.remaining_s() * 1e3

    def elapsed_s(self) -> float:
        """Seconds since the deadline was set."""
        return self._clock() - self._start

    def expired(self, margin_s: float = 0.0) -> bool:
        """True when no more than ``margin_s`` seconds are left."""
        return self.remaining_s() <= margin_s


@dataclass(frozen=True)
class RetryPolicy:
    """Which failures are retried, how often, and how long to wait in between.

    Attributes:
        max_attempts: HTTP attempts per call across all endpoints (2: one try, one retry).
            The retry prefers the next endpoint whose circuit allows a call (fail-over).
        backoff_s: base pause before a retry on the *same* endpoint; the ``k``-th such retry
            waits ``uniform(0, backoff_s * 2**k)`` (full jitter). Fail-over does not wait.
        retry_statuses: transient HTTP statuses (5xx only: a 4xx is never retried).
        min_attempt_s: no attempt starts with less than this left of the deadline.
    """

    max_attempts: int = 2
    backoff_s: float = 0.02
    retry_statuses: frozenset[int] = frozenset({502, 503, 504})
    min_attempt_s: float = 0.001

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if not self.backoff_s >= 0 or not self.min_attempt_s >= 0:
            raise ConfigError("backoff_s and min_attempt_s must be non-negative")
        bad = sorted(s for s in self.retry_statuses if not 500 <= s <= 599)
        if bad:
            raise ConfigError(f"retry_statuses must be 5xx (a 4xx is never retried), got {bad}")

    def should_retry(self, outcome: int | BaseException) -> bool:
        """Is this failure transient? ``outcome`` is an HTTP status or a raised exception.

        Retried: the statuses in ``retry_statuses``, timeouts, connect/read/write errors and
        a server that dropped the connection. Never: any 4xx, other 5xx, TLS verification
        failures (retrying cannot fix a certificate), local protocol errors.
        """
        if isinstance(outcome, int):
            return outcome in self.retry_statuses
        if isinstance(outcome, httpx.TimeoutException):
            return True
        if isinstance(outcome, httpx.NetworkError | httpx.RemoteProtocolError):
            return not is_tls_error(outcome)
        return False

    def backoff_for(self, retry_index: int, rng: random.Random | None = None) -> float:
        """Full-jitter pause before the ``retry_index``-th (0-based) same-endpoint retry."""
        cap = self.backoff_s * 2**retry_index
        return (rng or random).uniform(0.0, cap)

    def pause_before_retry(
        self, retry_index: int, deadline: Deadline, rng: random.Random | None = None
    ) -> float | None:
        """The pause before a same-endpoint retry, or None when the retry does not fit.

        A retry fits when, after the jittered pause, at least ``min_attempt_s`` of the
        deadline is left; otherwise the caller gives up at once (and falls back sooner)
        instead of sleeping towards a deadline it cannot use.
        """
        pause = self.backoff_for(retry_index, rng)
        if deadline.remaining_s() - pause < self.min_attempt_s:
            return None
        return pause


@dataclass(frozen=True)
class HedgePolicy:
    """When an unanswered attempt is joined by one to the next endpoint (a hedge).

    The first attempt of a call goes to the first endpoint whose circuit is closed. If it has
    not answered after :meth:`delay` seconds and another endpoint is available, the same
    request also goes there, and the first good answer wins (the other is cancelled). A hung
    endpoint thus costs a call its recent ``quantile`` latency, never more than its share of
    what is left of the budget or ``max_delay_s``. A hedge is an attempt: it counts towards
    ``RetryPolicy.max_attempts``.

    Attributes:
        quantile: of an endpoint's recent answer times, the one to wait before hedging.
        min_delay_s: never hedge sooner (on loopback p95 is a few ms; jitter is not a hang).
        max_delay_s: never wait longer than this before hedging.
        window: answer times kept per endpoint.
        min_samples: fewer answers than this: no quantile yet, wait the bound.
    """

    quantile: float = 0.95
    min_delay_s: float = 0.02
    max_delay_s: float = 0.5
    window: int = 64
    min_samples: int = 8

    def __post_init__(self) -> None:
        if not 0 < self.quantile <= 1:
            raise ConfigError(f"quantile must be in (0, 1], got {self.quantile}")
        if not 0 <= self.min_delay_s <= self.max_delay_s:
            raise ConfigError("hedge delays must satisfy 0 <= min_delay_s <= max_delay_s")
        if self.window < 1 or self.min_samples < 1:
            raise ConfigError("window and min_samples must be at least 1")

    def delay(self, recent_s: Sequence[float], share_s: float) -> float:
        """Seconds to wait for an endpoint with answer times ``recent_s`` before hedging;
        ``share_s``: its share of what is left of the budget."""
        bound = min(share_s, self.max_delay_s)
        if len(recent_s) < self.min_samples:
            return bound
        ordered = sorted(recent_s)
        q = ordered[min(len(ordered) - 1, math.ceil(self.quantile * len(ordered)) - 1)]
        return min(bound, max(self.min_delay_s, q))


def is_tls_error(exc: BaseException) -> bool:
    """True when ``exc`` was caused by a TLS/SSL failure (walks the exception chain)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ssl.SSLError):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def describe_failure(exc: httpx.HTTPError, base: str, timeout_s: float) -> str:
    """A short, stable reason for ``ml_info["fallback_reason"]`` (no addresses of objects,
    no countdowns: the same failure reads the same bar after bar)."""
    detail = str(exc)[:TEXT_CHARS]
    if isinstance(exc, httpx.PoolTimeout):
        return f"timeout after {timeout_s} s at {base} (no free pooled connection)"
    if isinstance(exc, httpx.TimeoutException):
        return f"timeout after {timeout_s} s at {base}"
    if is_tls_error(exc):
        return f"TLS error at {base}: {detail}"
    if isinstance(exc, httpx.ConnectError):
        if "refused" in detail.lower():
            return f"connection refused at {base}"
        return f"cannot connect to {base}: {detail}"
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        return f"connection to {base} dropped: {detail}"
    return f"{type(exc).__name__} at {base}: {detail}"


def error_text(raw: bytes, status: int) -> str:
    """The server's ``{"error": ...}`` text, else the body's first line, else the phrase."""
    try:
        doc = wire.loads(raw)
    except WireError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        text = doc["error"]
    else:
        text = raw.decode("utf-8", "replace").strip().splitlines()[0] if raw.strip() else ""
    return (text or httpx.codes.get_reason_phrase(status))[:TEXT_CHARS]
