"""The served model: bundle + verified, warmed runtime, and the atomic swap of a hot reload.

A request reads :attr:`ModelHolder.current` once and uses that :class:`ModelState` to the end,
so a reload never changes the model under a request in flight. Loading, the parity gate and
the warm-up of a new bundle run in a helper thread while the old model keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Request, Response

from mlsignal import wire
from mlsignal.bundle import GOLDEN_FILE, Bundle, load_bundle
from mlsignal.config import DEFAULT_MAX_WAIT_MS, Settings
from mlsignal.errors import ConfigError, ReloadBusyError, VersionPinError
from mlsignal.runtime import load_runtime
from mlsignal.runtime.base import check_parity
from mlsignal.server.batcher import Batcher
from mlsignal.server.forwarder import Forwarder
from mlsignal.server.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelState:
    """One loaded model: bundle, runtime (parity passed), warm-up done."""

    bundle: Bundle
    runtime: Any
    path: Path
    parity_worst_diff: float
    warmup_ms: float
    loaded_at: str
    #: What the runtime was loaded with (``None``: the environment's at load time).
    settings: Settings | None = field(default=None, repr=False)

    @property
    def device(self) -> str:
        """The runtime's resolved device, e.g. ``cpu`` or ``cuda:0``."""
        return str(self.runtime.device)

    @property
    def backend(self) -> str:
        """``torch`` (or ``onnx``)."""
        return str(self.runtime.backend)

    def describe(self) -> dict[str, Any]:
        """The ``GET /v1/models`` document."""
        b, schema = self.bundle, self.bundle.schema
        return {
            "model_version": b.model_version,
            "contract_hash": b.contract_hash,
            "device": self.device,
            "backend": self.backend,
            "schema": {
                "window": schema.window,
                "n_features": schema.n_features,
                "features": list(schema.names),
                "hash": schema.hash,
            },
            "min_bars": b.min_bars,
            "warmed_up": True,
            "warmup_ms": round(self.warmup_ms, 3),
            "parity_checked": True,
            "parity_worst_diff": self.parity_worst_diff,
            "loaded_at": self.loaded_at,
        }


def warm_up(runtime: Any, bundle: Bundle, max_batch: int) -> float:
    """Run the golden windows at batch sizes 1, golden and ``max_batch``; returns ms taken."""
    t0 = time.perf_counter()
    with np.load(bundle.file(GOLDEN_FILE)) as golden:
        inputs = golden["inputs"].astype(np.float32)
    reps = -(-max_batch // len(inputs))
    full = np.concatenate([inputs] * reps)[:max_batch]
    for windows in (inputs[:1], inputs, full):
        runtime.predict(windows)
    return (time.perf_counter() - t0) * 1e3


def load_model(
    path: str | os.PathLike[str],
    device: str | None,
    backend: str,
    max_batch: int,
    *,
    settings: Settings | None = None,
) -> ModelState:
    """Load and verify a bundle, load its runtime behind the parity gate, and warm it up.

    ``settings``: the runtime's knobs (:func:`~mlsignal.runtime.load_runtime`; default the
    environment's); a hot reload uses the same ones.
    """
    bundle = load_bundle(path)
    runtime = load_runtime(bundle, device, backend, verify=False, settings=settings)
    worst = check_parity(runtime)
    warm_ms = warm_up(runtime, bundle, max_batch)
    loaded_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return ModelState(bundle, runtime, Path(path), worst, warm_ms, loaded_at, settings)


class ModelHolder:
    """Holds the current :class:`ModelState`; :meth:`reload` swaps it atomically."""

    def __init__(
        self,
        state: ModelState,
        device: str | None,
        backend: str,
        max_batch: int,
        on_swap: Callable[[ModelState], None] | None = None,
    ) -> None:
        self.current = state
        self.device = device
        self.backend = backend
        self.max_batch = max_batch
        self._on_swap = on_swap or (lambda s: None)
        self._busy = False
        self._on_swap(state)

    async def reload(self, path: str | os.PathLike[str] | None = None) -> ModelState:
        """Load ``path`` (default: the current bundle's path) off the loop, then swap.

        On any failure the current model stays and the error propagates.
        """
        if self._busy:
            raise ReloadBusyError()
        self._busy = True
        try:
            target = Path(path) if path is not None else self.current.path
            new = await asyncio.to_thread(
                load_model,
                target,
                self.device,
                self.backend,
                self.max_batch,
                settings=self.current.settings,
            )
        finally:
            self._busy = False
        old, self.current = self.current, new  # atomic: one reference assignment
        self._on_swap(new)
        log.info(
            "model swapped: %s (%s) -> %s (%s) on %s/%s",
            old.bundle.model_version,
            old.bundle.contract_hash[:12],
            new.bundle.model_version,
            new.bundle.contract_hash[:12],
            new.device,
            new.backend,
        )
        return new


@dataclass(frozen=True)
class ServerConfig:
    """Limits and batching of one server; ``api_keys`` are never shown in its repr.

    Checked on construction: a bad value is a :class:`ConfigError` naming the field and its
    ``mlsignal serve`` flag.
    """

    max_batch: int = 256
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    max_queue: int = 4096
    #: Off by default: inline forwards have no await, so under load they serialise the
    #: server and the bounded queue (503) and batching never engage. See Batcher.
    inline_windows: int = 0
    max_symbols: int = 512
    max_bars: int = 5000
    max_body_bytes: int = 32 << 20
    #: Threads decoding and preparing big requests off the event loop (per process).
    threads: int = 2
    #: Work requests (enhance, predict, V2 infer) in flight in this process, from arrival
    #: to answer; past it a request gets 503 + Retry-After before its body is read.
    max_inflight: int = 512
    #: Deadline of a request that brings none (``deadline_ms``, ``X-Deadline-Ms``), from
    #: arrival; ``None``: no deadline.
    default_deadline_ms: float | None = None
    # The connection layer (:mod:`mlsignal.server.protocol`), per process; nginx-like.
    #: Request line + headers of one request (431 past it; nginx: 4 x 8 KiB buffers).
    max_header_bytes: int = 32 << 10
    #: One header line (name + value; 431) or the request target (414).
    max_header_line_bytes: int = 8 << 10
    #: Headers in one request (431 past it).
    max_headers: int = 100
    #: Line and headers must all arrive within this, from accept or the request's first
    #: byte (a total, not a time between reads); else 408 and close.
    header_timeout_s: float = 10.0
    #: The whole body must arrive within this of the end of the headers; else 408 and close.
    body_timeout_s: float = 30.0
    #: An idle kept-alive connection is closed after this (uvicorn's timeout_keep_alive).
    keep_alive_s: float = 5.0
    #: Open connections in this process; an extra one gets 503 and is closed at once.
    max_connections: int = 1024
    #: Open connections from one client address (IPv6: its /64); 0: no cap (behind a proxy).
    max_connections_per_client: int = 256
    #: Serve bars whose interval differs from the bundle's (422 by default).
    allow_timeframe_mismatch: bool = False
    api_keys: tuple[bytes, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        names = (
            "max_batch", "max_queue", "max_symbols", "max_bars", "threads", "max_inflight",
            "max_header_bytes", "max_header_line_bytes", "max_headers", "max_connections",
        )  # fmt: skip
        for name in names:
            _check_whole(name, getattr(self, name), 1)
        _check_whole("max_connections_per_client", self.max_connections_per_client, 0)
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s"):
            value = getattr(self, name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not (number and 0 < value < math.inf):
                raise ConfigError(f"{_named(name)} must be a positive number of s, got {value!r}")
        if self.max_header_line_bytes > self.max_header_bytes:
            raise ConfigError(
                f"{_named('max_header_line_bytes')} must be <= {_named('max_header_bytes')}, got "
                f"{self.max_header_line_bytes} > {self.max_header_bytes} bytes"
            )
        if not self.max_wait_ms >= 0:  # NaN too
            raise ConfigError(f"{_named('max_wait_ms')} must be >= 0, got {self.max_wait_ms!r}")
        ms = self.default_deadline_ms
        if ms is not None and not (isinstance(ms, int | float) and 0 < ms < math.inf):
            raise ConfigError(
                f"default_deadline_ms (--request-timeout-ms) must be a positive number of ms, "
                f"got {ms!r}"
            )
        if not self.max_body_bytes > 0:
            raise ConfigError(
                f"max_body_bytes (--max-body-mb) must be > 0, got {self.max_body_bytes!r} bytes"
            )
        if isinstance(self.inline_windows, bool) or not (
            isinstance(self.inline_windows, int) and self.inline_windows >= 0
        ):
            raise ConfigError(
                f"inline_windows must be a whole number >= 0, got {self.inline_windows!r}"
            )


#: Fields whose ``mlsignal serve`` flag is not the field's name (a unit differs).
_FLAGS = {"max_header_bytes": "max_header_kb", "max_header_line_bytes": "max_header_line_kb"}


def _named(field_name: str) -> str:
    """``max_batch`` -> ``max_batch (--max-batch)``: the API name and the CLI flag."""
    flag = _FLAGS.get(field_name, field_name)
    return f"{field_name} (--{flag.replace('_', '-')})"


def _check_whole(name: str, value: Any, least: int) -> None:
    """A :class:`ConfigError` unless ``value`` is a whole number >= ``least`` (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{_named(name)} must be a whole number >= {least}, got {value!r}")


def inline_safe(state: ModelState) -> bool:
    """Whether ``predict`` may also run on the event loop thread (see the batcher).

    onnxruntime on CPU: its thread pool belongs to the session, whatever thread calls.
    Not torch: its OpenMP pool belongs to the calling thread, so calls from two threads keep
    two spinning pools (measured: 5x the CPU per request on 2 cores). Not CUDA: one stream.
    """
    return state.backend == "onnx" and state.device == "cpu"


class Services:
    """What the routes share: config, model holder, forwarder, metrics, the feature pool.

    ``forwarder``: the forward seam (default: an in-process :class:`Batcher` sized by
    ``config``); the routes reach it as ``batcher``.
    """

    def __init__(
        self, config: ServerConfig, state: ModelState, forwarder: Forwarder | None = None
    ) -> None:
        self.config = config
        self.metrics = Metrics()
        self.holder = ModelHolder(
            state, state.device, state.backend, config.max_batch, self._on_swap
        )
        self.batcher: Forwarder = forwarder or Batcher(
            config.max_batch,
            config.max_wait_ms,
            config.max_queue,
            on_batch=self.metrics.batch_size.observe,
            on_depth=self.metrics.queue_depth.set,
            inline_windows=config.inline_windows if inline_safe(state) else 0,
        )
        self.pool = ThreadPoolExecutor(config.threads, thread_name_prefix="mlsignal-prepare")
        self.draining = False

    def _on_swap(self, s: ModelState) -> None:
        self.metrics.set_model(s.bundle.model_version, s.bundle.contract_hash, s.device, s.backend)

    async def blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run CPU work (parsing, features, fusion) in the pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    @property
    def ready(self) -> bool:
        """Loaded, parity-checked, warmed up (a :class:`ModelState` is all three) and serving."""
        return self.holder.current is not None and not self.draining


def services(request: Request) -> Services:
    """The :class:`Services` of the app serving ``request``."""
    return request.app.state.services


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response through orjson."""
    return Response(wire.dumps(doc), status, headers, media_type=wire.JSON_TYPE)


def check_pin(pinned: str | None, state: ModelState) -> None:
    """Raise :class:`VersionPinError` when ``pinned`` is not the served contract hash."""
    if pinned is not None and pinned != state.bundle.contract_hash:
        raise VersionPinError(state.bundle.contract_hash, pinned)


def model_fields(state: ModelState) -> dict[str, str]:
    """The model identity every v1 answer carries."""
    b = state.bundle
    return {
        "model_version": b.model_version,
        "contract_hash": b.contract_hash,
        "device": state.device,
        "backend": state.backend,
    }
