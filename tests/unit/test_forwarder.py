"""The forward seam: one protocol, one admission, for the batcher and the Ray forwarder."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mlsignal.errors import DeadlineError, DrainingError, QueueFullError
from mlsignal.server.batcher import Batcher
from mlsignal.server.forwarder import Forwarder, admit

H = "c3" * 32


def test_admit_refuses_in_order_with_the_same_messages():
    with pytest.raises(DrainingError, match=r"^the server is shutting down$"):
        admit(1, 10, 8, closing=True, deadline=0.0, now=1.0)
    with pytest.raises(QueueFullError, match=r"^queue full \(5 windows waiting\)$"):
        admit(4, 5, 8, closing=False, deadline=0.0, now=1.0)
    with pytest.raises(QueueFullError, match=r"^queue full \(5 windows in flight\)$"):
        admit(4, 5, 8, closing=False, deadline=None, now=1.0, state="in flight")
    with pytest.raises(DeadlineError, match=r"^deadline exceeded before inference$"):
        admit(1, 0, 8, closing=False, deadline=1.0, now=1.0)
    admit(100, 0, 8, closing=False, deadline=None, now=1.0)  # an empty queue takes any request
    admit(3, 5, 8, closing=False, deadline=2.0, now=1.0)


def test_the_batcher_is_a_forwarder():
    assert isinstance(Batcher(), Forwarder)


class GatedHandle:
    """A stand-in for Ray's deployment handle: ``forward.remote`` answers once opened."""

    def __init__(self) -> None:
        self.forward = self
        self.gate = asyncio.Event()

    def remote(self, chunk: np.ndarray):
        return self._answer(chunk)

    async def _answer(self, chunk: np.ndarray) -> tuple[str, np.ndarray]:
        await self.gate.wait()
        return H, np.full((len(chunk), 3), 0.5, np.float32)


def test_the_ray_forwarder_admits_as_the_batcher_does():
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed")
    from mlsignal.server.ray_engine import RayForwarder  # imports ray; starts no cluster

    async def main() -> None:
        handle = GatedHandle()
        forwarder = RayForwarder(handle, H, max_batch=2, max_queue=4)
        assert isinstance(forwarder, Forwarder)
        forwarder.start()
        first = asyncio.create_task(forwarder.submit(None, np.zeros((3, 2, 2), np.float32)))
        await asyncio.sleep(0)
        assert forwarder.depth == 3
        with pytest.raises(QueueFullError, match=r"queue full \(3 windows in flight\)"):
            await forwarder.submit(None, np.zeros((2, 2, 2), np.float32))
        now = asyncio.get_running_loop().time()
        with pytest.raises(DeadlineError, match="before inference"):
            await forwarder.submit(None, np.zeros((1, 2, 2), np.float32), deadline=now)
        handle.gate.set()
        assert (await first).shape == (3, 3) and forwarder.depth == 0
        await forwarder.close()
        with pytest.raises(DrainingError):
            await forwarder.submit(None, np.zeros((1, 2, 2), np.float32))

    asyncio.run(main())
