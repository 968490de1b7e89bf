"""The server's forward seam: what a route calls to run windows through the model.

:class:`Forwarder` is the protocol; the in-process
:class:`~mlsignal.server.batcher.Batcher` and the Ray engine's
:class:`~mlsignal.server.ray_engine.RayForwarder` implement it, and
:func:`~mlsignal.server.app.create_app` takes either. Both admit work the same way,
through :func:`admit`: nothing new while draining (503), a bound on the windows queued or in
flight (503 with Retry-After), and no work whose deadline already passed (504).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from mlsignal.errors import DeadlineError, DrainingError, QueueFullError


class Predictor(Protocol):
    """What a forwarder needs of a runtime: ``predict``."""

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """Feature windows ``(B, T, F)`` float32 -> outputs ``(B, 3)`` float32."""
        ...


@runtime_checkable
class Forwarder(Protocol):
    """Runs prepared windows through a runtime for the routes; one per app."""

    @property
    def depth(self) -> int:
        """Windows admitted and not yet answered (queued, or in flight)."""
        ...

    def start(self) -> None:
        """Start on the running event loop (the app's lifespan calls it)."""
        ...

    async def submit(
        self, runtime: Predictor, windows: np.ndarray, deadline: float | None = None
    ) -> np.ndarray:
        """Windows ``(n, T, F)`` -> outputs ``(n, 3)``; ``deadline`` is an absolute
        ``loop.time()``. Raises what :func:`admit` raises."""
        ...

    async def close(self) -> None:
        """Take no new work; finish what was admitted."""
        ...


def admit(
    n: int,
    queued: int,
    max_queue: int,
    *,
    closing: bool,
    deadline: float | None,
    now: float,
    state: str = "waiting",
) -> None:
    """Admit ``n`` windows before any work is done for them, or raise.

    ``queued``: windows already admitted and not answered (``state``: ``waiting`` for a
    batch, or ``in flight`` to model replicas). A request is refused when the forwarder is
    ``closing`` (:class:`~mlsignal.errors.DrainingError`), when it would take the queue past
    ``max_queue`` (:class:`~mlsignal.errors.QueueFullError`; an empty queue takes any one
    request), or when ``deadline`` is not after ``now`` (:class:`~mlsignal.errors.DeadlineError`).
    """
    if closing:
        raise DrainingError()
    if queued and queued + n > max_queue:
        raise QueueFullError(queued, state=state)
    if deadline is not None and now >= deadline:
        raise DeadlineError()
