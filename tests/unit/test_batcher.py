"""The dynamic batcher with a recording runtime (the ``predict`` swap point)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from mlsignal.errors import DeadlineError, DrainingError, QueueFullError
from mlsignal.server.batcher import Batcher


class Recorder:
    """A runtime whose output row is (window id, batch size, thread id)."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.threads: set[int] = set()

    def predict(self, windows: np.ndarray) -> np.ndarray:
        self.batches.append(len(windows))
        self.threads.add(threading.get_ident())
        out = np.zeros((len(windows), 3), np.float32)
        out[:, 0] = windows[:, 0, 0]
        out[:, 1] = len(windows)
        return out


def windows(ids: list[int]) -> np.ndarray:
    w = np.zeros((len(ids), 2, 2), np.float32)
    w[:, 0, 0] = ids
    return w


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_one_batch_and_get_their_own_rows():
    async def main():
        rt, b = Recorder(), Batcher(max_batch=16, max_wait_ms=50, max_queue=64)
        b.start()
        outs = await asyncio.gather(*(b.submit(rt, windows([i, i + 100])) for i in range(5)))
        await b.close()
        return rt, outs

    rt, outs = run(main())
    assert rt.batches == [10] and len(rt.threads) == 1
    for i, out in enumerate(outs):
        assert out[:, 0].tolist() == [i, i + 100]


def test_large_requests_are_split_at_max_batch():
    async def main():
        rt, b = Recorder(), Batcher(max_batch=4, max_wait_ms=1, max_queue=64)
        b.start()
        out = await b.submit(rt, windows(list(range(10))))
        await b.close()
        return rt, out

    rt, out = run(main())
    assert rt.batches == [4, 4, 2] and out[:, 0].tolist() == list(range(10))


def test_a_full_queue_refuses_at_once():
    async def main():
        rt, b = Recorder(), Batcher(max_batch=2, max_wait_ms=50, max_queue=3)
        b.start()
        first = asyncio.ensure_future(b.submit(rt, windows([1, 2])))
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            await b.submit(rt, windows([3, 4]))
        await first
        await b.close()
        with pytest.raises(DrainingError):
            await b.submit(rt, windows([5]))

    run(main())


def test_late_work_is_dropped_not_computed():
    async def main():
        rt, b = Recorder(), Batcher(max_batch=8, max_wait_ms=30, max_queue=64)
        b.start()
        loop = asyncio.get_running_loop()
        late = b.submit(rt, windows([1]), deadline=loop.time() + 0.005)
        on_time = b.submit(rt, windows([2]), deadline=loop.time() + 5)
        results = await asyncio.gather(late, on_time, return_exceptions=True)
        await b.close()
        return rt, results

    rt, (late, on_time) = run(main())
    assert isinstance(late, DeadlineError) and on_time[0, 0] == 2 and rt.batches == [1]


def test_runtimes_are_never_mixed_in_a_batch():
    async def main():
        old, new, b = Recorder(), Recorder(), Batcher(max_batch=16, max_wait_ms=20, max_queue=64)
        b.start()
        await asyncio.gather(b.submit(old, windows([1])), b.submit(new, windows([2])))
        await b.close()
        return old, new

    old, new = run(main())
    assert old.batches == [1] and new.batches == [1]


class Gated(Recorder):
    """A Recorder whose first ``predict`` blocks until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def predict(self, windows: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.gate.wait(10)
        return super().predict(windows)


def test_a_lone_request_never_waits_for_company():
    async def main():
        rt, b = Recorder(), Batcher(max_batch=16, max_wait_ms=60_000, max_queue=64)
        b.start()
        out = await asyncio.wait_for(b.submit(rt, windows([7])), 30)  # far below 60 s
        await b.close()
        return rt, out

    rt, out = run(main())
    assert rt.batches == [1] and out[0, 0] == 7


def test_windows_arriving_during_a_batch_go_together_in_the_next():
    async def main():
        rt, b = Gated(), Batcher(max_batch=16, max_wait_ms=0, max_queue=64)
        b.start()
        first = asyncio.ensure_future(b.submit(rt, windows([1])))
        await asyncio.to_thread(rt.entered.wait, 10)  # batch [1] is in the worker
        later = [asyncio.ensure_future(b.submit(rt, windows([i]))) for i in (2, 3, 4)]
        await asyncio.sleep(0)
        rt.gate.set()
        outs = await asyncio.gather(first, *later)
        await b.close()
        return rt, outs

    rt, outs = run(main())
    assert rt.batches == [1, 3]
    assert [o[0, 0] for o in outs] == [1, 2, 3, 4]


def test_inline_runs_on_the_loop_only_when_idle():
    async def main():
        rt, b = Gated(), Batcher(max_batch=16, max_wait_ms=0, max_queue=64, inline_windows=2)
        b.start()
        loop_thread = threading.get_ident()
        rt.gate.set()
        alone = await b.submit(rt, windows([1]))  # idle: inline, on this thread
        inline_threads = set(rt.threads)
        big = await b.submit(rt, windows([2, 3, 4]))  # over inline_windows: the worker
        rt.gate.clear()
        rt.entered.clear()
        busy = asyncio.ensure_future(b.submit(rt, windows([5, 6, 7])))
        await asyncio.to_thread(rt.entered.wait, 10)
        queued = asyncio.ensure_future(b.submit(rt, windows([8])))  # worker busy: queued
        await asyncio.sleep(0)
        rt.gate.set()
        outs = await asyncio.gather(busy, queued)
        await b.close()
        return loop_thread, inline_threads, rt, alone, big, outs

    loop_thread, inline_threads, rt, alone, big, (busy, queued) = run(main())
    assert busy[:, 0].tolist() == [5, 6, 7]
    assert inline_threads == {loop_thread} and alone[0, 0] == 1
    assert len(rt.threads - {loop_thread}) == 1  # every other batch: the one worker
    assert big[:, 0].tolist() == [2, 3, 4] and queued[0, 0] == 8
    assert rt.batches == [1, 3, 3, 1]
