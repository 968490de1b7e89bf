"""Writing the live loop's bar groups to the sink, in order, through a busy database.

The runner hands each bar group (its records, and the rejections that came with it) to a
:class:`SinkWriter` with the group's deadline. Groups are written whole and in order:

- **Busy** (:class:`~mlsignal.live.sink.SinkBusyError`: another connection holds SQLite's
  write lock). The write is retried after a jittered pause (10 ms, doubling up to 250 ms)
  until the group's deadline. Past it the group stays queued in memory, that is logged once
  (and once again when the database is free), and the loop goes on with the next bar; before
  each later group the queue is written first, oldest first. Nothing is lost: a queued group
  stays in memory until its commit, and a process killed meanwhile resumes, on restart,
  before it. Nothing is written twice: a write commits its whole group or nothing, and the
  primary key ignores a repeated bar.
- **Unusable** (:class:`~mlsignal.live.sink.SinkError`: disk full, a read-only file, a
  corrupt database). Retried the same way until the deadline; if it still fails, a
  ``SinkError`` ends the run, naming the file, what was not recorded and where a restart
  resumes. So does a lock that outlasts the queue's bound (``max_pending_bars``), rather than
  memory growing without end, and one still held when the run ends.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from mlsignal.live.rows import Rejection
from mlsignal.live.sink import Record, Sink, SinkBusyError, SinkError

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 0.01
MAX_BACKOFF_S = 0.25
#: Bars kept in memory while the database is locked (about 1 KB each) before the run ends.
MAX_PENDING_BARS = 100_000


@dataclass
class Batch:
    """One bar group to record: its records and the rejections that came with it."""

    records: list[Record]
    rejections: list[Rejection] = field(default_factory=list)
    new_rejections: list[Rejection] = field(default_factory=list)  # filled once written
    rejections_done: bool = False
    added: int = 0  # records new in the sink, once written


class SinkWriter:
    """Writes :class:`Batch` es to ``sink`` in order; see the module docstring.

    Args:
        sink: the :class:`~mlsignal.live.sink.Sink` (one without ``reject`` only logs
            rejections).
        max_pending_bars: bars queued in memory before a busy sink ends the run.
        clock, sleep: injectable monotonic clock and wait (seconds).
    """

    def __init__(
        self,
        sink: Sink,
        *,
        max_pending_bars: int = MAX_PENDING_BARS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.sink = sink
        self.max_pending_bars = max_pending_bars
        self._clock = clock
        self._sleep = sleep
        self._rng = random.Random()
        self._pending: deque[Batch] = deque()
        self._busy: SinkBusyError | None = None  # the error of the busy spell in progress
        self._busy_since = 0.0
        #: Groups that missed their deadline because the sink was busy (queued, not lost).
        self.queued_groups = 0

    @property
    def pending(self) -> int:
        """Groups waiting in memory."""
        return len(self._pending)

    def put(self, batch: Batch, deadline: float) -> list[Batch]:
        """Queue ``batch`` after the waiting ones and write what can be written by
        ``deadline`` (a :func:`time.monotonic` time); returns the batches written now."""
        self._pending.append(batch)
        bars = sum(len(b.records) for b in self._pending)
        if self._busy is not None and bars > self.max_pending_bars:
            raise SinkError(
                f"{self._busy}: still locked after {self._clock() - self._busy_since:.0f} s "
                f"with {bars} bars queued in memory, the limit; {self.unwritten()}"
            )
        return self.flush(deadline)

    def flush(self, deadline: float) -> list[Batch]:
        """Write the waiting batches, oldest first, until one is still busy at ``deadline``
        (it and the later ones stay queued); returns the batches written."""
        written: list[Batch] = []
        while self._pending:
            if not self._write(self._pending[0], deadline):
                self._queued()
                return written
            written.append(self._pending.popleft())
        if self._busy is not None:
            waited = self._clock() - self._busy_since
            log.info("the sink is free again after %.1f s: %d queued bar groups written",
                     waited, len(written))  # fmt: skip
            self._busy = None
        return written

    def drain(self, budget_s: float) -> list[Batch]:
        """Write everything still queued within ``budget_s``; a SinkError if it cannot."""
        written = self.flush(self._clock() + budget_s)
        if self._pending:
            raise SinkError(f"{self._busy}: still locked after {budget_s:g} s at the end of the "
                            f"run; {self.unwritten()}")  # fmt: skip
        return written

    def unwritten(self) -> str:
        """What the queue holds, for an error message: bars not recorded, where to resume."""
        records = [r for b in self._pending for r in b.records]
        lines = sum(len(b.rejections) for b in self._pending if not b.rejections_done)
        if not records:
            return f"{lines} quarantined lines not recorded" if lines else "nothing lost"
        first = records[0]
        return (
            f"{len(records)} bars not recorded (from {first.symbol} {first.bar_ts}); "
            "a restart resumes at them"
        )

    def _write(self, batch: Batch, deadline: float) -> bool:
        """Write ``batch``, retrying until ``deadline``; False if still busy then."""
        delay = FIRST_BACKOFF_S
        while True:
            try:
                self._attempt(batch)
                return True
            except SinkError as e:
                error = e
            left = deadline - self._clock()
            if left <= 0:
                if isinstance(error, SinkBusyError):
                    if self._busy is None:  # a busy spell starts: said once
                        self._busy, self._busy_since = error, self._clock()
                        log.warning(
                            "%s: bar groups wait in memory and are written in order once it "
                            "is free",
                            error,
                        )
                    return False
                raise SinkError(f"{error}; {self.unwritten()}") from error
            self._sleep(min(left, delay * self._rng.uniform(0.5, 1.0)))
            delay = min(2 * delay, MAX_BACKOFF_S)

    def _attempt(self, batch: Batch) -> None:
        if batch.rejections and not batch.rejections_done:
            reject = getattr(self.sink, "reject", None)
            new = batch.rejections if reject is None else reject(batch.rejections)
            batch.new_rejections = list(new)
            batch.rejections_done = True  # a retry of the records does not repeat them
        if batch.records:
            batch.added = self.sink.write(batch.records)

    def _queued(self) -> None:
        self.queued_groups += 1
