"""One call's attempts: on worker threads, hedged, failed over and retried, all inside the
call's one deadline.

Why threads: the promise is that the caller has its answer or its fallback by the deadline,
whatever a server does. A caller blocked in a socket read can only be as punctual as that
read's timeout, and httpx's timeouts are per phase and per read. So each attempt runs on a
worker thread and the caller waits on a queue with a timeout: its wait ends at the deadline
by construction (a handoff costs about 25 µs). The same waiting gives hedging for free: when
the attempt in flight has not answered within its endpoint's recent p95 (bounded by its share
of the budget, :class:`~mlsignal.client.policy.HedgePolicy`), the next available endpoint is
asked too and the first good answer wins. Attempts the call no longer needs are cancelled
(:class:`~mlsignal.client.transport.IoGuard` shuts their sockets down), and every socket
operation is bounded by the deadline anyway, so no worker outlives its call by more than a
scheduling delay.

Rules, as before hedging: a transient failure (no answer, connect error, 502/503/504) moves
to the next available endpoint at once, or retries the same one after a jittered pause when
none is left and nothing else is in flight; a 500 or a broken answer may fail over but is
never retried on the same server; a 4xx is final (no new attempt starts; one already in
flight may still answer). Attempts, hedges included, are capped by ``max_attempts``. Every
failure, and every attempt that lost a race after its hedge delay or was still unanswered at
the deadline, counts against its endpoint's breaker.
"""

from __future__ import annotations

import queue
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from mlsignal.client.health import Health
from mlsignal.client.policy import Deadline, RetryPolicy
from mlsignal.client.routing import Send
from mlsignal.client.transport import IoGuard
from mlsignal.errors import RemoteError

#: ``attempt(url, deadline) -> (answer, send)``: one attempt, run on a worker thread under
#: its guard; raises :class:`EndpointFailure` or a final :class:`RemoteError`.
Attempt = Callable[[str, Deadline], tuple[dict[str, Any], Send]]
#: ``fail(cls, message, attempts, endpoint)``: the error the caller gets (key scrubbed).
Fail = Callable[[type[RemoteError], str, int, str | None], RemoteError]


class EndpointFailure(Exception):
    """An attempt failed in a way that counts against the endpoint's circuit."""

    def __init__(self, reason: str, transient: bool, status: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient  # worth retrying on the same endpoint
        self.status = status  # the HTTP status that failed (0: no answer, or a broken one)


@dataclass(frozen=True)
class Kit:
    """What every race of one client shares."""

    health: Health
    retry: RetryPolicy
    workers: Executor
    timeout_s: float  # the configured budget, as reasons name it
    forget: Callable[[str], None]  # the router forgets what ``url`` speaks
    fail: Fail
    sleep: Callable[[float], None]
    rng: random.Random
    clock: Callable[[], float]


@dataclass
class Won:
    """The winning attempt."""

    url: str
    answer: dict[str, Any]
    send: Send
    attempts: int


@dataclass
class _Outcome:
    index: int
    url: str
    seconds: float
    answer: dict[str, Any] | None = None
    send: Send | None = None
    failure: EndpointFailure | None = None
    final: RemoteError | None = None


@dataclass
class _Flight:
    url: str
    guard: IoGuard
    started: float
    hedge_after_s: float


@dataclass
class Race:
    """The attempts of one call; :meth:`run` returns the first good answer or raises."""

    kit: Kit
    attempt: Attempt
    deadline: Deadline
    candidates: Sequence[str]
    gate: bool  # consult the breakers (False: an explicitly named endpoint)
    attempts: int = 0
    same_retries: int = 0
    tried: set[str] = field(default_factory=set)
    reasons: list[str] = field(default_factory=list)
    final: RemoteError | None = None
    last_url: str | None = None
    hedge_at: float = float("inf")
    flights: dict[int, _Flight] = field(default_factory=dict)
    results: queue.SimpleQueue[_Outcome] = field(default_factory=queue.SimpleQueue)

    def run(self) -> Won:
        """Launch, wait, hedge, fail over; the winner, or the caller's RemoteError."""
        url = self._next()
        if url is None:
            raise self.kit.fail(RemoteError, self._all_open(), 0, None)
        if self.deadline.expired(self.kit.retry.min_attempt_s):
            text = f"timeout after {self.kit.timeout_s} s before any request (spent preparing)"
            raise self.kit.fail(RemoteError, text, 0, None)
        self._launch(url)
        while True:
            out = self._wait()
            if out is None:
                continue  # a hedge was launched, or the clock moved: wait again
            self.flights.pop(out.index)
            if out.answer is not None:
                return self._win(out)
            if out.final is not None:
                self._answered_no(out)
            else:
                self._failed(out)
            if not self.flights:
                raise self._lost()

    # --- waiting --------------------------------------------------------------------------
    def _wait(self) -> _Outcome | None:
        """The next outcome; None after launching a hedge. Raises at the deadline."""
        now = self.kit.clock()
        wait = min(self.deadline.remaining_s(), max(0.0, self.hedge_at - now))
        try:
            return self.results.get(timeout=wait) if wait > 0 else self.results.get_nowait()
        except queue.Empty:
            pass
        if self.deadline.expired():
            raise self._time_out()
        if self.kit.clock() >= self.hedge_at:
            self.hedge_at = float("inf")
            nxt = self._next() if self._may_launch() else None
            if nxt is not None:
                self._launch(nxt)
        return None

    def _launch(self, url: str) -> None:
        self.attempts += 1
        self.tried.add(url)
        self.last_url = url
        left = self.deadline.remaining_s()
        guard = IoGuard(time.monotonic() + left)
        others = sum(1 for u in self.candidates if u not in self.tried and self._usable(u))
        delay = self.kit.health.hedge_delay(url, left / (1 + others)) if others else float("inf")
        flight = _Flight(url, guard, self.kit.clock(), delay)
        self.flights[self.attempts] = flight
        self.hedge_at = flight.started + delay
        try:
            self.kit.workers.submit(self._work, self.attempts, url, guard)
        except RuntimeError:  # the client was closed under this call
            closed = EndpointFailure("remote client is closed", False, status=-1)
            self.results.put(_Outcome(self.attempts, url, 0.0, failure=closed))

    def _work(self, index: int, url: str, guard: IoGuard) -> None:
        """One attempt, on a worker thread; its outcome goes to the caller's queue."""
        t0 = self.kit.clock()
        out = _Outcome(index, url, 0.0)
        try:
            if guard.cancelled or guard.remaining_s() <= 0:  # queued behind busy workers
                raise EndpointFailure(f"timeout after {self.kit.timeout_s} s at {url}", False)
            with guard.active():
                out.answer, out.send = self.attempt(url, self.deadline)
        except EndpointFailure as f:
            out.failure = f
        except RemoteError as e:
            out.final = e
        except BaseException as e:  # never lose an outcome: the caller is waiting for it
            out.failure = EndpointFailure(f"{type(e).__name__} at {url}: {e}", False)
        out.seconds = self.kit.clock() - t0
        self.results.put(out)

    # --- outcomes -------------------------------------------------------------------------
    def _win(self, out: _Outcome) -> Won:
        health = self.kit.health
        health.record_success(out.url, out.seconds)
        now = self.kit.clock()
        for index, flight in self.flights.items():
            flight.guard.cancel()
            if index < out.index and now - flight.started >= flight.hedge_after_s:
                ms = flight.hedge_after_s * 1e3
                reason = f"no answer from {flight.url} in {ms:.0f} ms; {out.url} answered first"
                self._count_failure(flight.url, reason, forget=True)
        assert out.answer is not None and out.send is not None
        return Won(out.url, out.answer, out.send, self.attempts)

    def _answered_no(self, out: _Outcome) -> None:
        """A final answer (4xx, mismatch): the server is up; no new attempt starts."""
        self.kit.forget(out.url)  # ask again next time: it may have changed
        self.kit.health.record_success(out.url)
        if self.final is None:
            self.final, self.last_url = out.final, out.url
        self.hedge_at = float("inf")

    def _failed(self, out: _Outcome) -> None:
        f = out.failure
        assert f is not None
        self._count_failure(out.url, f.reason, forget=not f.status)
        self.reasons.append(f.reason)
        nxt = self._retry_to(out.url, f)
        if nxt is not None:
            self._launch(nxt)

    def _retry_to(self, url: str, failure: EndpointFailure) -> str | None:
        """Where the next attempt goes (after any pause), or None to launch nothing."""
        if not self._may_launch():
            return None
        other = self._next()
        if other is not None:
            return other  # fail-over: no pause
        if self.flights or not failure.transient:
            return None  # wait for the one in flight; a 500 is never retried on one server
        pause = self.kit.retry.pause_before_retry(self.same_retries, self.deadline, self.kit.rng)
        if pause is None or not self._usable(url):
            return None
        self.kit.sleep(pause)
        self.same_retries += 1
        return None if self.deadline.expired(self.kit.retry.min_attempt_s) else url

    def _time_out(self) -> RemoteError:
        """The deadline passed: every attempt in flight is a timeout of its endpoint."""
        for flight in self.flights.values():
            flight.guard.cancel()
            reason = f"timeout after {self.kit.timeout_s} s at {flight.url}"
            self._count_failure(flight.url, reason, forget=True)
            self.reasons.append(reason)
        self.flights.clear()
        return self._lost()

    def _lost(self) -> RemoteError:
        if self.final is not None:
            return self.kit.fail(type(self.final), str(self.final), self.attempts, self.last_url)
        text = "; ".join(dict.fromkeys(self.reasons))
        text = f"{text} ({self.attempts} attempts)" if self.attempts > 1 else text
        return self.kit.fail(RemoteError, text, self.attempts, self.last_url)

    # --- helpers --------------------------------------------------------------------------
    def _count_failure(self, url: str, reason: str, forget: bool) -> None:
        if forget:  # no answer: the server may come back as another one
            self.kit.forget(url)
        self.kit.health.record_failure(url, reason)

    def _may_launch(self) -> bool:
        return (
            self.final is None
            and self.attempts < self.kit.retry.max_attempts
            and not self.deadline.expired(self.kit.retry.min_attempt_s)
        )

    def _usable(self, url: str) -> bool:
        return not self.gate or self.kit.health.available(url)

    def _next(self) -> str | None:
        """The first untried endpoint whose circuit is closed."""
        for u in self.candidates:
            if u not in self.tried and self._usable(u):
                return u
        return None

    def _all_open(self) -> str:
        # Stable text (no countdown): it becomes ml_info["fallback_reason"] bar after bar.
        return f"circuit open for every endpoint: {', '.join(self.candidates)}"
