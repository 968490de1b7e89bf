"""``mlsignal serve --engine ray``: the same HTTP app, with the forward pass on Ray Serve replicas.

Two deployments make one Serve application:

- :class:`ModelReplica` (one per GPU, or a fraction of one): loads the bundle with
  :func:`~mlsignal.server.state.load_model`, so the hashes, the golden parity gate and the
  warm-up run in its constructor. A constructor that raises (say a :class:`ParityError`) is a
  replica that never starts: Serve never routes to it, and a first deployment fails as a
  whole. Windows of concurrent callers are batched by Serve's own ``@serve.batch``, counted
  in windows; ``check_health`` reruns one golden window (:mod:`mlsignal.server.health`, at
  the runtime's own parity tolerance) so a replica that stops agreeing with the bundle is
  replaced.
- :class:`Ingress`: our FastAPI app from :func:`~mlsignal.server.app.create_app`, unchanged:
  v1 and V2 routes, API keys, limits, health, metrics. The only difference is its
  ``forwarder``: a :class:`RayForwarder`, which sends each request's prepared windows
  to the model deployment with an async handle call instead of the in-process batcher. The
  ingress constructor waits until every model replica has passed the parity gate (the model
  deployment is HEALTHY), so ``/readyz`` answers 200 only after that.

Every answer of a model replica carries its contract hash; the ingress refuses (503) one that
is not its own bundle's, so a rolling update can cost a retry but never mixes two models.

Only this module and :mod:`mlsignal.cli.serve_ray` import ray.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from mlsignal.bundle import Bundle, load_bundle
from mlsignal.errors import (
    BundleError,
    ConfigError,
    DataError,
    DeadlineError,
    ReplicaUnavailableError,
)
from mlsignal.server.admission import RETRY_AFTER_S
from mlsignal.server.app import create_app
from mlsignal.server.forwarder import Predictor, admit
from mlsignal.server.health import GoldenProbe
from mlsignal.server.limits import note_error
from mlsignal.server.state import ModelState, ServerConfig, json_response, load_model

log = logging.getLogger(__name__)

MODEL_DEPLOYMENT = "mlsignal-model"
INGRESS_DEPLOYMENT = "mlsignal-ingress"
#: How long the ingress waits for every model replica to pass the parity gate.
READY_TIMEOUT_S = 900.0
RELOAD_REFUSED = (
    "hot reload is not available with --engine ray: start a second application with the new "
    "bundle (mlsignal serve --engine ray --app-name ... --route-prefix ...) and move the "
    "trading hosts to it, or redeploy this one (see docs/scaling.md)"
)


@dataclass(frozen=True)
class RayOptions:
    """How the model and ingress deployments are placed and scaled."""

    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max) replicas
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    ingress_replicas: int = 1
    #: Calls each ingress replica keeps out to the model replicas at once; the windows of
    #: requests that arrive meanwhile wait and go together in the next call. ``None``: enough
    #: for every model replica to have one call from the ingress tier (see calls_per_ingress).
    ingress_calls: int | None = None
    #: Autoscaling target of in-flight calls per model replica (each call: the coalesced
    #: windows of one or more requests). See docs/scaling.md for why it is well above
    #: Serve's default of 2, and how it goes with ``ingress_calls``.
    target_ongoing: float = 32.0
    app_name: str = "mlsignal"
    route_prefix: str = "/"

    def __post_init__(self) -> None:
        calls = 1 if self.ingress_calls is None else self.ingress_calls
        if self.replicas < 1 or self.ingress_replicas < 1 or calls < 1:
            raise ConfigError(
                "--replicas, --ingress-replicas and --ingress-calls must be at least 1"
            )
        if self.autoscale is not None and not 0 <= self.autoscale[0] <= self.autoscale[1] >= 1:
            raise ConfigError("--autoscale must be MIN:MAX with 0 <= MIN <= MAX, MAX >= 1")
        if self.gpus_per_replica < 0 or self.cpus_per_replica < 0 or self.target_ongoing <= 0:
            raise ConfigError(
                "--gpus-per-replica and --cpus-per-replica must be >= 0, --target-ongoing > 0"
            )

    @property
    def calls_per_ingress(self) -> int:
        """``ingress_calls``, or by default the model replicas (at most) over the ingress
        replicas, rounded up: every model replica can have a call from the ingress tier, and
        calls stay few and large. A model replica is bound by its one Python process, which
        pays for every call whatever it carries, not by its GPU (docs/BENCHMARKS.md, 2x H200:
        with 8 ingress replicas and 64 clients, one call each gave 2.2x the windows/s of four
        calls each at the same model-replica CPU; 0.9x with 16 clients)."""
        if self.ingress_calls is not None:
            return self.ingress_calls
        most = self.autoscale[1] if self.autoscale is not None else self.replicas
        return max(1, -(-most // self.ingress_replicas))


# --- the model replica --------------------------------------------------------------------
def _windows_in(items: list[np.ndarray]) -> int:
    """``@serve.batch`` size of a batch: windows, not calls."""
    return sum(len(w) for w in items)


@serve.deployment(name=MODEL_DEPLOYMENT, health_check_period_s=10, health_check_timeout_s=30)
class ModelReplica:
    """One runtime behind the parity gate; Serve batches the windows of concurrent calls."""

    def __init__(
        self, bundle_path: str, device: str | None, backend: str, max_batch: int, max_wait_ms: float
    ) -> None:
        # Raises BundleError/ParityError/ConfigError: the replica never reports healthy.
        self.state = load_model(bundle_path, device, backend, max_batch)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mlsignal-predict")
        self._batched.set_max_batch_size(max_batch)
        self._batched.set_batch_wait_timeout_s(max_wait_ms / 1e3)
        self._probe = GoldenProbe.from_bundle(self.state.bundle)
        b = self.state.bundle
        log.info(
            "model replica ready: pid=%d device=%s backend=%s model_version=%s contract_hash=%s "
            "parity_worst_diff=%.3g", os.getpid(), self.state.device, self.state.backend,
            b.model_version, b.contract_hash, self.state.parity_worst_diff,
        )  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """The ``GET /v1/models`` document of this replica, with its pid."""
        return {**self.state.describe(), "pid": os.getpid()}

    async def forward(self, windows: np.ndarray) -> tuple[str, np.ndarray]:
        """Windows ``(n, T, F)`` -> (contract hash, outputs ``(n, 3)``), batched with others."""
        out = await self._batched(windows)
        return self.state.bundle.contract_hash, out

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.002, batch_size_fn=_windows_in)
    async def _batched(self, items: list[np.ndarray]) -> list[np.ndarray]:
        windows = items[0] if len(items) == 1 else np.concatenate(items)
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(self._pool, self.state.runtime.predict, windows)
        bounds = np.cumsum([len(w) for w in items])[:-1]
        return np.split(out, bounds)

    async def check_health(self) -> None:
        """Serve's periodic probe: one golden window must still match the bundle, within
        the runtime's own parity tolerance (the one its load-time parity gate used)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._probe.check, self.state.runtime)


# --- the ingress's forward path -----------------------------------------------------------
class RemoteModel:
    """The runtime as the ingress's app sees it: the bundle, and where the forward runs.

    The app only reads ``bundle``, ``device`` and ``backend``; its forward goes through the
    :class:`RayForwarder`. ``predict`` works too, from a thread without an event loop.
    """

    def __init__(self, bundle: Bundle, device: str, backend: str, handle: DeploymentHandle) -> None:
        self.bundle = bundle
        self.device = device
        self.backend = backend
        self._handle = handle

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """Blocking forward on some model replica (not from the event loop)."""
        pinned, out = self._handle.forward.remote(np.asarray(windows, np.float32)).result()
        _check_hash(pinned, self.bundle.contract_hash)
        return out


def _check_hash(got: str, want: str) -> None:
    if got != want:
        raise ReplicaUnavailableError.serving_other(got, want)


class RayForwarder:
    """Takes the in-process :class:`~mlsignal.server.batcher.Batcher`'s place in the ingress.

    The same :class:`~mlsignal.server.forwarder.Forwarder` and the same admission
    (:func:`~mlsignal.server.forwarder.admit`): at most ``max_queue`` windows in flight per
    ingress replica (503 beyond), deadlines (504), no new work while draining (503).

    Windows are coalesced before they cross to a model replica: a Ray call costs the
    ingress about a millisecond of CPU whatever it carries, so while ``max_calls`` calls are
    out, the windows of requests that arrive meanwhile wait and go together in the next
    call (up to ``max_batch`` windows). A lone request never waits: with a call slot free it
    goes at once. The replicas batch again across ingress replicas (``@serve.batch``).
    """

    def __init__(
        self,
        handle: DeploymentHandle,
        contract_hash: str,
        max_batch: int,
        max_queue: int,
        max_calls: int = 4,
    ) -> None:
        self._handle = handle
        self._hash = contract_hash
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_calls = max_calls
        self._in_flight = 0
        self._calls = 0
        self._pending: collections.deque[tuple[np.ndarray, asyncio.Future]] = collections.deque()
        self._tasks: set[asyncio.Task] = set()
        self._idle: asyncio.Event | None = None
        self._closing = False

    @property
    def depth(self) -> int:
        """Windows sent to model replicas, or waiting to be, and not answered yet."""
        return self._in_flight

    def start(self) -> None:
        """Nothing to start: the replicas are Serve's."""
        self._idle = asyncio.Event()
        self._idle.set()

    async def submit(
        self, runtime: Predictor, windows: np.ndarray, deadline: float | None = None
    ) -> np.ndarray:
        """Forward ``windows`` ``(n, T, F)`` in calls of up to ``max_batch``; ``(n, 3)``."""
        loop = asyncio.get_running_loop()
        n, now = len(windows), loop.time()
        admit(
            n,
            self._in_flight,
            self.max_queue,
            closing=self._closing,
            deadline=deadline,
            now=now,
            state="in flight",
        )
        timeout = None if deadline is None else deadline - now
        futures = []
        for i in range(0, n, self.max_batch):
            future = loop.create_future()
            self._pending.append((windows[i : i + self.max_batch], future))
            futures.append(future)
        self._enter(n)
        self._pump()
        try:
            outs = await asyncio.wait_for(asyncio.gather(*futures), timeout)
        except TimeoutError:
            raise DeadlineError("the replicas answered") from None
        finally:
            self._leave(n)
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def _pump(self) -> None:
        """Start calls for the pending windows while call slots are free."""
        while self._pending and self._calls < self.max_calls:
            batch, total = [], 0
            while self._pending and total + len(self._pending[0][0]) <= self.max_batch:
                chunk, future = self._pending.popleft()
                if not future.done():  # its caller is gone (deadline): skip it
                    batch.append((chunk, future))
                    total += len(chunk)
            if not batch:
                continue
            self._calls += 1
            task = asyncio.get_running_loop().create_task(self._call(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call(self, batch: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        """One call for the batch's windows; each caller gets its rows (or the error)."""
        try:
            windows = batch[0][0] if len(batch) == 1 else np.concatenate([w for w, _ in batch])
            out = await self._one(windows)
        except Exception as e:  # every caller of this call gets it
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
        else:
            start = 0
            for chunk, future in batch:
                if not future.done():
                    future.set_result(out[start : start + len(chunk)])
                start += len(chunk)
        finally:
            self._calls -= 1
            self._pump()

    async def _one(self, chunk: np.ndarray) -> np.ndarray:
        try:
            pinned, out = await self._handle.forward.remote(chunk)
        except (DataError, asyncio.CancelledError):
            raise
        except Exception as e:  # a replica died, backpressure, a Ray error: transient
            raise ReplicaUnavailableError(f"model replica unavailable: {_brief(e)}") from None
        _check_hash(pinned, self._hash)
        return out

    def _enter(self, n: int) -> None:
        self._in_flight += n
        if self._idle is not None:
            self._idle.clear()

    def _leave(self, n: int) -> None:
        self._in_flight -= n
        if self._in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def close(self) -> None:
        """Take no new work; wait for the calls in flight."""
        self._closing = True
        if self._idle is not None:
            await self._idle.wait()


def _brief(e: BaseException) -> str:
    """The first line of an error, without Ray's multi-line traceback dump."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


# --- the ingress --------------------------------------------------------------------------
async def _unavailable(request: Request, exc: Exception) -> Response:
    note_error(request.scope, "replica_unavailable")
    return json_response({"error": str(exc)}, 503, {"Retry-After": RETRY_AFTER_S})


async def _reload_refused(request: Request) -> Response:
    note_error(request.scope, "reload_refused")
    return json_response({"error": RELOAD_REFUSED}, 409)


async def wait_model_healthy(app_name: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Wait until every target replica of the model deployment runs (passed the parity gate).

    Raises :class:`BundleError` with Serve's message when the deployment failed.
    """
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        status = await asyncio.to_thread(serve.status)
        app = status.applications.get(app_name)
        dep = app.deployments.get(MODEL_DEPLOYMENT) if app is not None else None
        if dep is not None and dep.status == "HEALTHY":
            return
        if dep is not None and dep.status == "DEPLOY_FAILED":
            raise BundleError(f"model replicas failed to start: {dep.message}")
        await asyncio.sleep(0.25)
    raise BundleError(f"model replicas not healthy after {timeout_s:.0f} s")


@serve.deployment(name=INGRESS_DEPLOYMENT)
@serve.ingress()
class Ingress:
    """Our FastAPI app; its forward pass goes to the model deployment."""

    async def __init__(
        self,
        model: DeploymentHandle,
        bundle_path: str,
        config: ServerConfig,
        max_calls: int = 1,
    ):
        bundle = await asyncio.to_thread(load_bundle, bundle_path)  # hashes verified here too
        await wait_model_healthy(serve.get_replica_context().app_name)
        desc = await model.describe.remote()
        _check_hash(desc["contract_hash"], bundle.contract_hash)
        runtime = RemoteModel(bundle, desc["device"], desc["backend"], model)
        state = ModelState(
            bundle, runtime, Path(bundle_path), desc["parity_worst_diff"], desc["warmup_ms"],
            desc["loaded_at"],
        )  # fmt: skip
        forwarder = RayForwarder(
            model, bundle.contract_hash, config.max_batch, config.max_queue, max_calls
        )
        app = create_app(config, state, forwarder=forwarder)
        self._app = with_ray_routes(app)
        log.info("ingress ready: model_version=%s device=%s", bundle.model_version, runtime.device)

    def __serve_build_asgi_app__(self) -> Any:
        return BelowPrefix(self._app)


class BelowPrefix:
    """Serve leaves an application's route prefix in ``path`` (and sets ``root_path``); our
    app matches routes, public probes and keys on the path, so it gets the path below it."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:  # Serve adds its exception handlers to the app
        return getattr(self.app, name)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        root, path = scope.get("root_path", ""), scope.get("path", "")
        if scope["type"] in ("http", "websocket") and root and path.startswith(root):
            scope = {**scope, "path": path[len(root) :] or "/", "root_path": ""}
        await self.app(scope, receive, send)


def with_ray_routes(app: FastAPI) -> FastAPI:
    """What differs from ``mlsignal serve``: 503 for a lost replica, no hot reload."""
    app.add_exception_handler(ReplicaUnavailableError, _unavailable)
    app.add_api_route("/v1/admin/reload", _reload_refused, methods=["POST"])
    app.router.routes.insert(0, app.router.routes.pop())  # before the app's own reload route
    return app


def build_app(
    bundle_path: str | os.PathLike[str],
    config: ServerConfig,
    options: RayOptions,
    device: str | None,
    backend: str,
) -> Any:
    """The bound Serve application (pass it to ``serve.run``)."""
    actor = {"num_cpus": options.cpus_per_replica, "num_gpus": options.gpus_per_replica}
    scale: dict[str, Any]
    if options.autoscale is None:
        scale = {"num_replicas": options.replicas}
    else:
        lo, hi = options.autoscale
        scale = {
            "autoscaling_config": {
                "min_replicas": lo,
                "initial_replicas": max(lo, 1),
                "max_replicas": hi,
                "target_ongoing_requests": options.target_ongoing,
            }
        }
    path = str(Path(bundle_path).resolve())
    first = options.replicas if options.autoscale is None else max(options.autoscale[0], 1)
    model = ModelReplica.options(
        ray_actor_options=actor,
        # A parity failure is deterministic: one more try than replicas, not Serve's 20.
        max_constructor_retry_count=first + 1,
        max_ongoing_requests=max(2 * config.max_batch, int(4 * options.target_ongoing)),
        **scale,
    ).bind(path, device, backend, config.max_batch, config.max_wait_ms)
    ingress = Ingress.options(
        num_replicas=options.ingress_replicas,
        ray_actor_options={"num_cpus": 0.5},
        max_ongoing_requests=max(config.max_queue, 100),
    )
    return ingress.bind(model, path, config, options.calls_per_ingress)
