"""The HTTP inference server: FastAPI app, dynamic batching, API keys, limits, metrics, V2.

``mlsignal serve`` (``mlsignal.cli.serve``) builds it with :func:`create_app` around a
:class:`ModelState` from :func:`load_model`. Imports wire, inference, runtime, bundle,
config and errors; never the client or the enhancer.
"""

from __future__ import annotations

from mlsignal.server.app import create_app
from mlsignal.server.state import ModelState, ServerConfig, load_model

__all__ = ["ModelState", "ServerConfig", "create_app", "load_model"]
