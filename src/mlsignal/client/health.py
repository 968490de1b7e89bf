"""The health of each endpoint as one client sees it: a circuit breaker, recent answer times
(for hedging) and background probes of open circuits.

A trader's call only uses endpoints whose circuit is closed; it never takes the half-open
probe. When a circuit opens (on failures and timeouts alike, a hedged-away hang included),
a background thread probes the endpoint once ``reset_after_s`` has passed (``GET
/v2/health/ready`` within the client's timeout, on a worker thread: any answer below 500
closes the circuit, no answer or a 5xx keeps it open for another period). A hung server thus
costs its probes' time in the background, never a trader's call.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence

from mlsignal.client.breaker import CLOSED, OPEN, BreakerConfig, CircuitBreaker
from mlsignal.client.policy import Clock, HedgePolicy

log = logging.getLogger(__name__)

#: ``probe(url)``: ask ``url`` whether it answers; records the outcome itself.
Probe = Callable[[str], None]
#: ``submit(fn, *args)``: run on a worker thread (raises RuntimeError once shut down).
Submit = Callable[..., object]


class Health:
    """Breakers, answer times and the background prober of a client's endpoints.

    Args:
        urls: the endpoints.
        breaker: circuit breaker settings (one breaker per URL).
        hedge: how long to wait for an endpoint before hedging.
        clock: monotonic seconds for the breakers.
        probe: asks one endpoint (called on a worker thread through ``submit``).
        submit: runs a probe on a worker thread.
    """

    def __init__(
        self,
        urls: Sequence[str],
        breaker: BreakerConfig | None,
        hedge: HedgePolicy,
        clock: Clock,
        probe: Probe,
        submit: Submit,
    ) -> None:
        self.breakers = {u: CircuitBreaker(u, breaker, clock) for u in urls}
        self.hedge = hedge
        self._recent: dict[str, deque[float]] = {u: deque(maxlen=hedge.window) for u in urls}
        self._recent_lock = threading.Lock()  # calls on many threads record answer times
        self._probe, self._submit = probe, submit
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def available(self, url: str) -> bool:
        """May a call use ``url`` now (its circuit is closed)? Never takes a probe."""
        return self.breakers[url].state == CLOSED

    def hedge_delay(self, url: str, share_s: float) -> float:
        """Seconds to wait for ``url`` before asking the next endpoint too."""
        with self._recent_lock:
            recent = tuple(self._recent[url])
        return self.hedge.delay(recent, share_s)

    def record_success(self, url: str, seconds: float | None = None) -> None:
        """``url`` answered (in ``seconds``, for a good answer)."""
        if seconds is not None:
            with self._recent_lock:
                self._recent[url].append(seconds)
        self.breakers[url].record_success()

    def record_failure(self, url: str, reason: str) -> None:
        """``url`` failed or did not answer in time; an opened circuit gets probed."""
        breaker = self.breakers[url]
        breaker.record_failure(reason)
        if breaker.state == OPEN:
            self._start_prober()

    def close(self) -> None:
        """Stop probing."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()

    # --- the background prober ------------------------------------------------------------
    def _start_prober(self) -> None:
        with self._wake:
            if self._closed:
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="mlsignal-breaker-probes", daemon=True
                )
                self._thread.start()
            self._wake.notify_all()

    def _loop(self) -> None:
        """Probe each open circuit when it is due; sleep until the next one is."""
        with self._wake:
            while not self._closed:
                for url, breaker in self.breakers.items():
                    # a half-open one whose probe never reported is due again after the reset
                    if breaker.state != CLOSED and breaker.retry_in_s() <= 0 and breaker.allow():
                        self._launch(url)  # half-open now: its probe is in flight
                waits = [b.retry_in_s() for b in self.breakers.values() if b.state != CLOSED]
                self._wake.wait(max(0.001, min(waits)) if waits else None)

    def _launch(self, url: str) -> None:
        try:
            self._submit(self._probe, url)
        except RuntimeError:  # the client closed its workers
            self._closed = True
