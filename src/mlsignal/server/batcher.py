"""Dynamic batching: concurrent requests' windows share one forward pass.

Requests ``submit`` windows from the event loop; a collector task runs them through
``runtime.predict`` in ONE dedicated worker thread (one GPU stream; the event loop never
blocks), dropping work whose deadline already passed. Batching is adaptive: when the worker
is idle and one request is waiting, it runs at once (a lone request never waits for
company); windows that arrive while a batch runs accumulate and go together, up to
``max_batch``, as soon as the worker is free. Only when several requests are already waiting
for an idle worker (concurrent clients) does the collector wait up to ``max_wait_ms`` (from
the oldest arrival) for the batch to fill. The queue is bounded in windows: a request that
would overflow it is refused at once (:class:`~mlsignal.errors.QueueFullError`, a 503).

With ``inline_windows`` > 0, a request of at most that many windows that finds the worker
idle and the queue empty runs ``predict`` right there on the event loop: nothing is running
or waiting, so nobody waits for it, and the two thread hops (to the worker and back; on a
busy 2-core host each can cost more than the forward) are saved. Inline and worker calls
never overlap: both are started from the loop, and only when no batch runs. It is off by
default: a small request then goes through the server without one await, so under load
requests run one by one, never batch, and the bounded queue never fills (no 503).

Windows of different runtimes (a hot reload in progress) are never mixed in one batch, so a
request finishes on the model it started with.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from mlsignal.config import DEFAULT_MAX_WAIT_MS
from mlsignal.errors import DeadlineError
from mlsignal.server.forwarder import Predictor, admit

log = logging.getLogger(__name__)


@dataclass
class _Item:
    runtime: Predictor
    windows: np.ndarray  # (n, T, F) float32, n <= max_batch
    deadline: float | None  # loop.time() seconds, or None
    arrived: float
    future: asyncio.Future


class Batcher:
    """Gathers windows into batches for ``runtime.predict``; see the module docstring.

    The in-process :class:`~mlsignal.server.forwarder.Forwarder`.
    """

    def __init__(
        self,
        max_batch: int = 256,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        max_queue: int = 4096,
        on_batch: Callable[[int], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        inline_windows: int = 0,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0 or inline_windows < 0:
            raise ValueError(
                "max_batch and max_queue must be >= 1, max_wait_ms and inline_windows >= 0"
            )
        self.max_batch = max_batch
        self.inline_windows = min(inline_windows, max_batch)
        self._running = False  # a batch is in the worker thread
        self.max_wait_s = max_wait_ms / 1e3
        self.max_queue = max_queue
        self._on_batch = on_batch or (lambda n: None)
        self._on_depth = on_depth or (lambda n: None)
        self._queue: collections.deque[_Item] = collections.deque()
        self._queued = 0  # windows in the queue, not yet in a batch
        self._closing = False
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def depth(self) -> int:
        """Windows waiting for a batch."""
        return self._queued

    def start(self) -> None:
        """Start the collector on the running loop and the predict thread."""
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mlsignal-predict")
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="batcher")

    async def submit(
        self, runtime: Predictor, windows: np.ndarray, deadline: float | None = None
    ) -> np.ndarray:
        """Predict ``windows`` ``(n, T, F)`` in some batch; returns ``(n, 3)``.

        ``deadline`` is an absolute ``loop.time()``. Raises
        :class:`~mlsignal.errors.QueueFullError`, :class:`~mlsignal.errors.DrainingError` or
        :class:`~mlsignal.errors.DeadlineError`.
        """
        loop = asyncio.get_running_loop()
        n, now = len(windows), loop.time()
        closing = self._closing or self._task is None
        admit(n, self._queued, self.max_queue, closing=closing, deadline=deadline, now=now)
        if n <= self.inline_windows and not self._running and not self._queue:
            self._on_batch(n)
            return runtime.predict(windows)  # idle: run now, on the loop (module docstring)
        futures = []
        for start in range(0, n, self.max_batch):
            chunk = windows[start : start + self.max_batch]
            item = _Item(runtime, chunk, deadline, now, loop.create_future())
            self._queue.append(item)
            futures.append(item.future)
        self._set_queued(self._queued + n)
        self._wakeup.set()  # type: ignore[union-attr]
        outs = await asyncio.gather(*futures)
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    async def close(self) -> None:
        """Take no new work, finish what is queued, stop the worker thread."""
        self._closing = True
        if self._task is not None:
            self._wakeup.set()  # type: ignore[union-attr]
            await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # --- collector --------------------------------------------------------------------------
    async def _collect(self) -> None:
        wakeup = self._wakeup
        assert wakeup is not None
        while True:
            if not self._queue:
                if self._closing:
                    return
                wakeup.clear()
                await wakeup.wait()
                continue
            if self.max_wait_s > 0 and len(self._queue) > 1:  # concurrent callers: fill up
                await self._fill(self._queue[0].arrived + self.max_wait_s)
            batch = self._live(self._take())
            if batch:
                await self._run(batch)

    async def _fill(self, until: float) -> None:
        """Wait for more windows until the batch is full, ``until`` passes, or closing."""
        loop = asyncio.get_running_loop()
        wakeup = self._wakeup
        assert wakeup is not None
        while self._queued < self.max_batch and not self._closing:
            remaining = until - loop.time()
            if remaining <= 0:
                return
            wakeup.clear()
            try:
                await asyncio.wait_for(wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Item]:
        """Pop items of one runtime from the front, up to ``max_batch`` windows."""
        first = self._queue[0]
        batch, total = [], 0
        while self._queue:
            item = self._queue[0]
            if item.runtime is not first.runtime or total + len(item.windows) > self.max_batch:
                break
            batch.append(self._queue.popleft())
            total += len(item.windows)
        self._set_queued(self._queued - total)
        return batch

    def _live(self, batch: list[_Item]) -> list[_Item]:
        """Drop items whose caller is gone or whose deadline passed (answered 504)."""
        now = asyncio.get_running_loop().time()
        live = []
        for item in batch:
            if item.future.done():
                continue
            if item.deadline is not None and now >= item.deadline:
                item.future.set_exception(DeadlineError())
                continue
            live.append(item)
        return live

    async def _run(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        windows = np.concatenate([item.windows for item in batch])
        self._on_batch(len(windows))
        self._running = True
        try:
            out = await loop.run_in_executor(self._executor, batch[0].runtime.predict, windows)
        except Exception as e:  # delivered to every caller of this batch
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(e)
            return
        finally:
            self._running = False
        start = 0
        for item in batch:
            n = len(item.windows)
            if not item.future.done():
                item.future.set_result(out[start : start + n])
            start += n

    def _set_queued(self, n: int) -> None:
        self._queued = n
        self._on_depth(n)
