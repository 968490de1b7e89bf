"""The remote path: calls to ``mlsignal serve`` with one absolute deadline, retry, hedged
fail-over and a circuit breaker per endpoint (probed in the background).

Imports neither torch, nor the server, nor training code: a trading host can run
remote-only with a small install.
"""

from __future__ import annotations

from mlsignal.client.breaker import BreakerConfig, CircuitBreaker
from mlsignal.client.policy import Deadline, HedgePolicy, RetryPolicy
from mlsignal.client.remote import RemoteClient, RemoteReply

__all__ = [
    "BreakerConfig",
    "CircuitBreaker",
    "Deadline",
    "HedgePolicy",
    "RemoteClient",
    "RemoteReply",
    "RetryPolicy",
]
