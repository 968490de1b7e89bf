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


class CountingHandle(GatedHandle):
    """Records each call's window count; answers each window with its own first value."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    async def _answer(self, chunk: np.ndarray) -> tuple[str, np.ndarray]:
        self.calls.append(len(chunk))
        await self.gate.wait()
        return H, np.repeat(chunk[:, :1, 0], 3, axis=1).astype(np.float32)


def test_the_ray_forwarder_coalesces_windows_while_calls_are_out():
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed")
    from mlsignal.server.ray_engine import RayForwarder

    async def main() -> None:
        handle = CountingHandle()
        forwarder = RayForwarder(handle, H, max_batch=8, max_queue=100, max_calls=1)
        forwarder.start()
        windows = [np.full((2, 2, 2), i, np.float32) for i in range(7)]
        tasks = [asyncio.create_task(forwarder.submit(None, w)) for w in windows]
        await asyncio.sleep(0.01)
        assert handle.calls == [2]  # the first request went at once, alone
        handle.gate.set()
        outs = await asyncio.gather(*tasks)
        # the other six (12 windows) waited for the call slot and went in two calls of <= 8
        assert handle.calls == [2, 8, 4]
        for i, out in enumerate(outs):  # every caller got its own rows back
            assert out.shape == (2, 3) and (out == i).all()
        await forwarder.close()

    asyncio.run(main())


def test_calls_per_ingress_by_default_give_each_model_replica_one_call():
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed")
    from mlsignal.errors import ConfigError
    from mlsignal.server.ray_engine import RayOptions  # imports ray; starts no cluster

    assert RayOptions().calls_per_ingress == 1
    assert RayOptions(replicas=2, ingress_replicas=8).calls_per_ingress == 1
    assert RayOptions(replicas=2, ingress_replicas=1).calls_per_ingress == 2  # none idle
    assert RayOptions(replicas=3, ingress_replicas=2).calls_per_ingress == 2
    assert RayOptions(autoscale=(1, 8), ingress_replicas=4).calls_per_ingress == 2
    assert RayOptions(replicas=2, ingress_replicas=8, ingress_calls=4).calls_per_ingress == 4
    with pytest.raises(ConfigError, match="--ingress-calls must be at least 1"):
        RayOptions(ingress_calls=0)
