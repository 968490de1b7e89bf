"""The bar loop: feed -> scores (rules or hook) -> enhancer -> sink.

For each group of closed bars the feed delivers (the bars of one bar time, across symbols),
:class:`LiveRunner` appends each bar to its symbol's
:class:`~mlsignal.features.FeatureStream` (validating that bar alone), scores it, prepares
every symbol of the group from its stream (:func:`~mlsignal.pipeline.prepare_stream`: no
DataFrame), enhances them in one ``enhance_prepared`` call (one forward pass, or one
request to the server) and writes the group's records in one transaction.

Which bars are recorded: every bar that has at least ``enhancer.min_bars`` bars of history
(itself included) and is newer than the symbol's last recorded bar. Bars before that are
**warm-up**: they fill the buffer, are counted in the summary and are never recorded (no model
can score them). So after any number of restarts each bar with enough history is recorded
exactly once: the sink's primary key forbids a second row, and resuming after the last
recorded bar forbids a gap, because a group is committed as a whole, in time order.

Restart: :meth:`LiveRunner.run` reads the last recorded bar per symbol from the sink and
passes it to the feed with the context it needs (``history_bars``); bars at or before it only
refill the symbol's stream.

Quarantine: a line the feed could not read as a bar comes as a
:class:`~mlsignal.live.rows.Rejection` among the feed's ticks; a bar that fails validation
here (a NaN price, high below close: possible from an exchange or a frame in memory) becomes
one too, and is not added: the symbol's next good bar goes on from the bars before it. Both
are counted as ``rejected``, written to the sink's ``rejected`` table with the group they
came with, and logged once, when they are new there (a restart that reads the same line
again neither logs nor records it twice). A bar not later than the symbol's last is counted
as a duplicate and ignored.

Writing: each group goes through a :class:`~mlsignal.live.writer.SinkWriter` with the bar's
deadline (``bar_deadline_ms``, counted from the group's arrival, or
:data:`DEFAULT_WRITE_BUDGET_S`). A database locked by another connection past it keeps the
group queued in memory and the loop goes on; the queue is written, in order, before the next
group. At the end of the run what is still queued gets ``drain_s`` (after :meth:`stop`: the
bar's deadline). A sink that stays unusable ends the run with a
:class:`~mlsignal.live.sink.SinkError` naming what was not recorded.

Per-bar deadline: with ``bar_deadline_ms`` the forward pass runs on a worker thread (the
group is prepared before, on the loop's thread) and the loop waits at most that long.
Without an answer by then, the group is recorded with the fallback result
(:func:`~mlsignal.pipeline.finish` with no model output): the raw scores unchanged
(``enhanced_ss = ss``, ``enhanced_bs = bs``), ``bull_prob`` 0.5, ``kelly`` 0, the GARCH
regime, ``source = "rules"`` and ``fallback_reason`` starting with ``"deadline"``. The
first write wins: the late answer is discarded when it comes (counted as ``late_answers``),
never recorded. While a late call still occupies the worker, the next
call waits behind it within its own deadline. An enhancer error (a bug, a broken device) is
recorded the same way with ``fallback_reason = "error: ..."``: a bar is never dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mlsignal.errors import ConfigError, DataError
from mlsignal.features import FeatureStreams
from mlsignal.live.feeds import Bar, Feed, Resume, Tick
from mlsignal.live.rows import Rejection
from mlsignal.live.scores import ScoreFn, call_hook, rule_scores_hook
from mlsignal.live.sink import Record, Sink
from mlsignal.live.writer import Batch, SinkWriter
from mlsignal.pipeline import Prepared, SignalResult, finish, prepare_stream
from mlsignal.rules import last_score

log = logging.getLogger(__name__)

#: How long a group's write may wait for a busy database when there is no bar deadline.
DEFAULT_WRITE_BUDGET_S = 10.0
#: How long the queued groups may wait for a busy database when the feed has ended.
DEFAULT_DRAIN_S = 60.0
#: Quarantined lines logged one by one per run; past it, once, that more were.
LOG_REJECTIONS = 100


@dataclass
class LiveSummary:
    """What a run did: recorded bars per symbol and per source, and what it skipped."""

    recorded: Counter[str] = field(default_factory=Counter)  # per symbol
    sources: Counter[str] = field(default_factory=Counter)  # per ml_info source
    warmup: Counter[str] = field(default_factory=Counter)  # bars with too little history
    already_recorded: int = 0  # bars at or before the resume point (context only)
    duplicates: int = 0  # bars the feed repeated or the sink already had
    rejected: int = 0  # lines and bars quarantined (not added, not recorded)
    rejected_new: int = 0  # of those, new in the sink's rejected table
    queued: int = 0  # groups that waited in memory for a busy database (none lost)
    deadline_misses: int = 0
    errors: int = 0
    late_answers: int = 0  # enhancer answers that came after their bar was recorded
    seconds: float = 0.0

    @property
    def total(self) -> int:
        """Bars recorded in this run."""
        return sum(self.recorded.values())

    def progress_line(self) -> str:
        """One line of where a run stands: bars recorded so far, the rejected, the time."""
        return (
            f"{self.total} bars recorded so far ("
            + ", ".join(f"{s} {n}" for s, n in sorted(self.recorded.items()))
            + f"), {self.rejected} rejected, {self.seconds:.0f} s"
        )

    def lines(self) -> list[str]:
        """A human summary, one line per symbol then totals."""
        out = [f"{s}: {n} bars recorded" for s, n in sorted(self.recorded.items())]
        rate = self.total / self.seconds if self.seconds > 0 else 0.0
        out.append(
            f"total {self.total} bars in {self.seconds:.1f} s ({rate:.1f}/s); by source "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.sources.items())) or "none")
        )
        out.append(
            f"warm-up {sum(self.warmup.values())}, already recorded {self.already_recorded}, "
            f"duplicates {self.duplicates}, rejected {self.rejected} "
            f"({self.rejected_new} new in quarantine), queued for a busy sink {self.queued}, "
            f"deadline misses {self.deadline_misses}, "
            f"late answers discarded {self.late_answers}, enhancer errors {self.errors}"
        )
        return out


class _Worker:
    """One daemon thread running submitted calls in order (a stuck call never blocks exit)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="mlsignal-enhance", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], Any]) -> Future:
        fut: Future = Future()
        self._jobs.put((fn, fut))
        return fut

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, fut = job
            if not fut.set_running_or_notify_cancel():
                continue  # cancelled while queued: its bar already has its fallback
            try:
                fut.set_result(fn())
            except BaseException as e:  # handed to the waiting caller
                fut.set_exception(e)

    def close(self) -> None:
        self._jobs.put(None)


class LiveRunner:
    """Runs the bar loop until the feed ends or :meth:`stop` is called.

    Args:
        enhancer: an :class:`~mlsignal.enhancer.MLSignalEnhancer` (anything with
            ``bundle``, ``min_bars`` and ``enhance_prepared``).
        feed: a :class:`~mlsignal.live.feeds.Feed`.
        sink: a :class:`~mlsignal.live.sink.Sink`; its ``last_recorded`` is the resume point.
        scores: score hook ``(symbol, bars) -> (ss, bs)``; default the built-in rules.
        bar_deadline_ms: longest wait for the enhancer per bar group; ``None`` waits as long
            as the enhancer takes (its own remote timeout and fallback still apply).
        history_bars: bars kept per symbol and given to the score hook (at least
            ``min_bars``, the default).
        drain_s: how long the groups still queued for a busy sink may wait when the feed
            ends (see the module docstring).
        progress: called with the summary so far every ``progress_s`` seconds of the run
            (a replay's progress line); ``None``: nothing.
    """

    def __init__(
        self,
        enhancer: Any,
        feed: Feed,
        sink: Sink,
        *,
        scores: ScoreFn | None = None,
        bar_deadline_ms: float | None = None,
        history_bars: int | None = None,
        drain_s: float = DEFAULT_DRAIN_S,
        progress: Callable[[LiveSummary], None] | None = None,
        progress_s: float = 10.0,
    ) -> None:
        if bar_deadline_ms is not None and not bar_deadline_ms > 0:
            raise ConfigError(
                f"bar deadline must be a positive number of ms, got {bar_deadline_ms}"
            )
        self.enhancer = enhancer
        self.feed = feed
        self.sink = sink
        self.scores = scores or rule_scores_hook
        self.min_bars = int(enhancer.min_bars)
        self.keep = max(self.min_bars, history_bars or 0)
        self.deadline_s = None if bar_deadline_ms is None else bar_deadline_ms / 1e3
        self.write_budget_s = self.deadline_s or DEFAULT_WRITE_BUDGET_S
        self.drain_s = drain_s
        self.writer = SinkWriter(sink)
        self.summary = LiveSummary()
        self._stop = threading.Event()
        #: The last ``keep`` bars of each symbol (a run starts empty: resume refills them).
        self.streams = FeatureStreams(enhancer.bundle.schema, capacity=self.keep)
        self._last: dict[str, pd.Timestamp] = {}
        self._worker: _Worker | None = None
        self._failing: str | None = None
        self.progress, self.progress_s = progress, progress_s

    def stop(self) -> None:
        """Ask the loop to finish the current bar group and return (signal-handler safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    def run(self) -> LiveSummary:
        """Resume after the sink's last recorded bars and process bars until the end."""
        t0 = time.perf_counter()
        self._last = dict(self.sink.last_recorded())
        if self._last:
            log.info("resuming after %s", ", ".join(f"{s} {t}" for s, t in self._last.items()))
        resume = Resume(self._last.copy(), context_bars=self.keep)
        if self.deadline_s is not None:
            self._worker = _Worker()
        shown = t0
        try:
            for group in self.feed.ticks(self._stop, resume):
                self.process(group)
                if self.progress is not None and time.perf_counter() - shown >= self.progress_s:
                    shown = time.perf_counter()
                    self.summary.seconds = shown - t0
                    self.progress(self.summary)
                if self._stop.is_set():
                    log.info("stop requested: finished the current bar, shutting down")
                    break
            if self.writer.pending:
                budget = self.write_budget_s if self._stop.is_set() else self.drain_s
                self._count(self.writer.drain(budget))
        finally:
            self.feed.close()
            if self._worker is not None:
                self._worker.close()
            self.summary.seconds = time.perf_counter() - t0
            self.summary.queued = self.writer.queued_groups
            for line in self.summary.lines():
                log.info("live summary: %s", line)
        return self.summary

    # --- one group of bars -------------------------------------------------------------------
    def process(self, group: Tick) -> int:
        """Add, score, enhance and record one group of bars (and quarantine the rejections
        that came with it); returns the rows added to the sink now."""
        t0 = time.monotonic()
        rejections = [x for x in group if isinstance(x, Rejection)]
        bars = [x for x in group if not isinstance(x, Rejection)]
        due = [bar for bar in bars if self._admit(bar, rejections)]
        self.summary.rejected += len(rejections)
        records = self._records(due) if due else []
        if not records and not rejections and not self.writer.pending:
            return 0
        deadline = t0 + self.write_budget_s
        if not records and not rejections:
            written = self.writer.flush(deadline)
        else:
            written = self.writer.put(Batch(records, rejections), deadline)
        return self._count(written)

    def _records(self, due: list[Bar]) -> list[Record]:
        bundle = self.enhancer.bundle
        prepared = [
            prepare_stream(bundle, bar.symbol, self.streams[bar.symbol], *self._scores(bar.symbol))
            for bar in due
        ]
        results = self._enhance(prepared)
        return [
            Record(bar.symbol, bar.ts, bar.close, p.ss, p.bs, r.enhanced_ss, r.enhanced_bs,
                   r.ml_info)
            for bar, p, r in zip(due, prepared, results, strict=True)
        ]  # fmt: skip

    def _count(self, written: list[Batch]) -> int:
        """Account for the batches the sink has committed; returns the rows added."""
        added = 0
        for batch in written:
            added += batch.added
            self.summary.duplicates += len(batch.records) - batch.added
            for rec in batch.records:
                self._last[rec.symbol] = rec.bar_ts
                self.summary.recorded[rec.symbol] += 1
                self.summary.sources[rec.source] += 1
            for r in batch.new_rejections:
                self._log_rejection(r)
        return added

    def _log_rejection(self, r: Rejection) -> None:
        self.summary.rejected_new += 1
        n = self.summary.rejected_new
        if n <= LOG_REJECTIONS:
            log.warning("quarantined %s (not a bar, skipped): %s: %r", r.where, r.reason, r.raw)
        elif n == LOG_REJECTIONS + 1:
            log.warning("more lines quarantined: not logged one by one (see table 'rejected')")

    def _admit(self, bar: Bar, rejections: list[Rejection]) -> bool:
        """Add ``bar`` to its stream; True when it must be recorded (enough history, not yet
        recorded). A repeated bar is not added; an invalid one goes to ``rejections``."""
        stream = self.streams.stream(bar.symbol)
        ns = int(bar.ts.value)
        if stream.last_ns is not None and ns <= stream.last_ns:
            self.summary.duplicates += 1
            log.debug("%s bar %s delivered again; ignored", bar.symbol, bar.ts)
            return False
        try:
            stream.append_values(ns, *bar[2:])
        except DataError as e:
            reason = str(e).removeprefix(f"{stream.label(ns)}: ")
            rejections.append(Rejection(bar.symbol, None, bar_text(bar), reason, bar.symbol))
            return False
        if len(stream) < self.min_bars:
            self.summary.warmup[bar.symbol] += 1
            return False
        last = self._last.get(bar.symbol)
        if last is not None and bar.ts <= last:
            self.summary.already_recorded += 1
            return False
        return True

    def _scores(self, symbol: str) -> tuple[float, float]:
        """The raw ``(ss, bs)`` of the symbol's last bar over its last ``keep`` bars: the
        built-in rules on the stream's arrays, or the user's hook on a DataFrame of them."""
        stream = self.streams[symbol]
        if self.scores is rule_scores_hook:  # what the hook computes, without a DataFrame
            _, high, low, close, _ = stream.arrays(self.keep)
            return last_score(high, low, close)
        return call_hook(self.scores, symbol, stream.frame(self.keep))

    # --- the enhancer, under the deadline ----------------------------------------------------
    def _enhance(self, prepared: list[Prepared]) -> list[SignalResult]:
        t0 = time.perf_counter()
        if self._worker is None:
            return self._call_enhancer(prepared, t0)
        fut = self._worker.submit(lambda: self.enhancer.enhance_prepared(prepared, t0))
        try:
            results = fut.result(timeout=self.deadline_s)
        except FutureTimeout:
            queued = fut.cancel()  # True: it never started (an earlier late call holds the worker)
            if not queued:
                fut.add_done_callback(self._late)
            self.summary.deadline_misses += 1
            why = " (the enhancer was still busy with an earlier late call)" if queued else ""
            reason = f"deadline: no answer within {self.deadline_s * 1e3:g} ms{why}"
            self._note(reason.split(" (")[0])
            return self._fallback(prepared, t0, reason)
        except Exception as e:  # the enhancer itself failed: record the bar anyway
            return self._failed(prepared, t0, e)
        self._note(None)
        return results

    def _call_enhancer(self, prepared: list[Prepared], t0: float) -> list[SignalResult]:
        try:
            results = self.enhancer.enhance_prepared(prepared, t0)
        except Exception as e:  # the enhancer itself failed: record the bar anyway
            return self._failed(prepared, t0, e)
        self._note(None)
        return results

    def _failed(self, prepared: list[Prepared], t0: float, e: Exception) -> list[SignalResult]:
        self.summary.errors += 1
        reason = f"error: {type(e).__name__}: {e}"
        self._note(reason)
        return self._fallback(prepared, t0, reason)

    def _late(self, fut: Future) -> None:
        self.summary.late_answers += 1
        log.debug("a late enhancer answer was discarded: its bars were recorded with the fallback")

    def _fallback(self, prepared: list[Prepared], t0: float, reason: str) -> list[SignalResult]:
        """The rules-only result: raw scores unchanged, GARCH regime, bull_prob 0.5, kelly 0."""
        latency_ms = (time.perf_counter() - t0) * 1e3
        bundle = self.enhancer.bundle
        return [
            finish(bundle, p, None, device="none", backend="none", latency_ms=latency_ms,
                   reason=reason)
            for p in prepared
        ]  # fmt: skip

    def _note(self, reason: str | None) -> None:
        """Log a runner-level fallback once per state change, not once per bar."""
        if reason == self._failing:
            return
        if reason is not None:
            log.warning("recording bars with the rules-only fallback: %s", reason)
        else:
            log.info("enhancer answering in time again")
        self._failing = reason


def bar_text(bar: Bar) -> str:
    """``2024-01-05T00:00:00,1.0,2.0,0.5,1.5,100.0``: a bar as the ``raw`` of a rejection."""
    return ",".join([bar.ts.isoformat(), *(repr(float(x)) for x in bar[2:])])
