"""The HTTP client of remote inference: one deadline, retry, fail-over, a breaker per URL.

A call tries the configured endpoints in order, skipping those whose circuit is open; a
transient failure (connect error, timeout, 502/503/504) moves to the next endpoint, or
retries the same one after a jittered pause when there is no other; a 500 may fail over but
is never retried on the same server; a 4xx is final. An endpoint that has not answered
within its recent p95 (bounded) is joined by a hedge to the next one, and the first good
answer wins. All of it runs inside one absolute deadline, ``timeout_s`` long (the caller's
when it passes one: the enhancer's starts when its caller entered ``enhance_*``); the call
returns by then whatever a server does (:mod:`mlsignal.client.race` says how: attempts on
worker threads, sockets bounded and cancelled by :mod:`mlsignal.client.transport`). Open
circuits are probed in the background (:mod:`mlsignal.client.health`), never on a caller's
call. Every failure reaches the caller as a :class:`~mlsignal.errors.RemoteError` whose
message is a short reason for ``ml_info["fallback_reason"]``, with ``attempts`` and
``endpoint`` attributes. The API key never appears in a message or a log line.

``protocol`` (``GPU_INFERENCE_PROTOCOL``) picks what an enhance call sends: by default
(``auto``), per endpoint, feature windows as binary V2 tensors to a server that lists the
binary tensor extension (``mlsignal serve``, Triton), as JSON V2 tensors to another V2
server, and bars to ``/v1/enhance`` only to a server that speaks only v1; ``v2`` sends
windows only, ``mlsignal`` bars only. :mod:`mlsignal.client.routing` finds out what each
endpoint speaks and what an attempt sends it, :mod:`mlsignal.client.v2` has the rules and
:mod:`mlsignal.wire.v2` the bodies. This module is the transport. Probes and metadata reads
at first contact run inside the same call's deadline, and their failures count against the
endpoint like any other.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from mlsignal import wire
from mlsignal.client import v2
from mlsignal.client.breaker import BreakerConfig
from mlsignal.client.endpoints import (
    base_url,
    check_key,
    check_urls,
    default_headers,
    tls_verify,
    warn_plain_http,
)
from mlsignal.client.health import Health
from mlsignal.client.policy import (
    Clock,
    Deadline,
    HedgePolicy,
    RetryPolicy,
    describe_failure,
    error_text,
)
from mlsignal.client.race import EndpointFailure, Kit, Race
from mlsignal.client.routing import Route, Router, Send, Wanted, v2_answer
from mlsignal.client.transport import GuardedTransport, IoGuard
from mlsignal.config import Settings
from mlsignal.errors import ConfigError, RemoteError, VersionMismatchError, WireError
from mlsignal.signature import MODEL_NAME
from mlsignal.wire.v2 import HEADER_LENGTH

log = logging.getLogger(__name__)

# A trading host: a few threads, one or a few servers. Idle connections are dropped after 4 s,
# below uvicorn's default 5 s keep-alive, so we never reuse one the server is closing.
LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=16, keepalive_expiry=4.0)
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: Most worker threads of one client (made as needed): attempts and probes in flight, each
#: ending by its deadline. A call whose attempt finds none free still returns by its deadline.
WORKERS = 128
#: What a background probe asks (mlsignal serve, Triton, KServe; any answer below 500 is up).
PROBE_PATH = "/v2/health/ready"


@dataclass(frozen=True)
class RemoteReply:
    """A successful remote call."""

    doc: dict[str, Any]  # the parsed JSON response
    endpoint: str  # base URL that answered
    attempts: int  # HTTP attempts made (1: the first try succeeded)
    latency_ms: float  # wall time of the whole call, retries and backoff included
    #: ``mlsignal``: ``doc`` is the server's JSON. ``v2`` (JSON tensors) or ``v2-binary``
    #: (binary tensors): ``doc`` holds ``outputs`` (float32 ``(B, 3)``: p_lstm, p_tft,
    #: bull_prob), ``model_name``, ``model_version``, ``platform``, ``matched`` (how the
    #: version was checked) and ``served``.
    protocol: str = "mlsignal"


class RemoteClient:
    """Calls ``mlsignal serve`` endpoints with a deadline, retry, fail-over and breakers.

    Args:
        urls: base URLs (``http(s)://host:port[/prefix]``), tried in this order.
        api_key: sent as ``Authorization: Bearer <key>``; never logged.
        timeout_s: the budget of one whole call, all attempts, hedges and pauses included.
        contract_hash: the local bundle's contract hash; pins the server's model.
        accept_mismatch: use a server whose model differs (no pin is sent).
        retry: the retry policy (default: 2 attempts, hedges included; 20 ms jittered
            backoff).
        breaker: the circuit breaker settings, one breaker per URL.
        verify: TLS verification: True, False or the path of a CA bundle.
        clock: monotonic seconds, for deadlines, breakers and latency.
        transport: an httpx transport (tests use ``httpx.MockTransport``); the default
            bounds every socket operation by the call's deadline.
        rng: the random source of backoff jitter.
        sleep: how to pause before a same-endpoint retry.
        hedge: when an unanswered attempt is joined by one to the next endpoint.
        protocol: ``mlsignal``, ``v2`` or ``auto`` (see the module docstring); the default
            here is ``mlsignal``, :meth:`from_settings` passes ``GPU_INFERENCE_PROTOCOL``.
        model_name: the V2 model name (``GPU_INFERENCE_MODEL_NAME``, default ``mlsignal``).
    """

    def __init__(
        self,
        urls: Sequence[str] | str,
        api_key: str | None = None,
        timeout_s: float = 3.0,
        contract_hash: str | None = None,
        accept_mismatch: bool = False,
        retry: RetryPolicy | None = None,
        breaker: BreakerConfig | None = None,
        verify: bool | str = True,
        clock: Clock = time.monotonic,
        transport: httpx.BaseTransport | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
        protocol: str = "mlsignal",
        model_name: str = MODEL_NAME,
        hedge: HedgePolicy | None = None,
    ) -> None:
        self.urls = check_urls(urls)
        self.protocol = v2.check_protocol(protocol)
        self.model_name = v2.check_model_name(model_name)
        if not (isinstance(timeout_s, int | float) and 0 < timeout_s < math.inf):
            raise ConfigError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self.contract_hash = contract_hash
        self.accept_mismatch = accept_mismatch
        self.retry = retry or RetryPolicy()
        self._key = check_key(api_key)
        self._clock, self._sleep, self._rng = clock, sleep, rng or random.Random()
        verified = tls_verify(verify)  # a bad CA bundle fails here, whatever the transport
        self._closed = False
        self._router = Router(self._get, self._judge)
        self._workers = ThreadPoolExecutor(WORKERS, thread_name_prefix="mlsignal-remote")
        self._health = Health(
            self.urls, breaker, hedge or HedgePolicy(), clock, self._probe, self._workers.submit
        )
        self._breakers = self._health.breakers
        self._kit = Kit(
            self._health,
            self.retry,
            self._workers,
            self.timeout_s,
            self._router.forget,
            self._fail,
            sleep,
            self._rng,
            clock,
        )
        self._http = httpx.Client(
            headers=default_headers(self._key),
            transport=transport or GuardedTransport(verified, LIMITS),
            trust_env=False,  # no proxy or CA bundle picked up silently from the environment
            follow_redirects=False,
        )
        warn_plain_http(self.urls, self._key)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> RemoteClient:
        """A client for ``GPU_INFERENCE_API_URL``/``_KEY``/``_TIMEOUT``/``_PROTOCOL``/
        ``_MODEL_NAME`` as read into settings."""
        kwargs = {"protocol": settings.protocol, "model_name": settings.model_name, **kwargs}
        return cls(
            settings.api_urls, api_key=settings.api_key, timeout_s=settings.timeout_s, **kwargs
        )

    @property
    def pinned(self) -> bool:
        """True when calls pin the server's model to ``contract_hash``."""
        return self.contract_hash is not None and not self.accept_mismatch

    def enhance(
        self,
        body: dict[str, Any] | Callable[[], dict[str, Any]] | None,
        windows: Callable[[], np.ndarray] | None = None,
        deadline: Deadline | None = None,
    ) -> RemoteReply:
        """One enhance call: the same symbols as ``/v1/enhance`` bars (``body``, or a
        callable making it when an endpoint needs it; not mutated) or as feature windows
        (``windows()``, called at most once), whichever each endpoint speaks.

        ``deadline``: the call's (the enhancer's starts when its caller entered
        ``enhance_*``); default: ``timeout_s`` from now. The call returns or raises by then.

        Protocol ``mlsignal``: ``POST /v1/enhance`` with ``body``, the pin and
        ``deadline_ms``. ``auto`` (default) and ``v2``: a V2 endpoint gets the windows at its
        ``infer`` (binary when it lists the extension) and the reply's ``protocol`` is
        ``v2-binary`` or ``v2``; with ``auto``, an endpoint that speaks only v1 gets the
        bars. An endpoint that needs windows when none are given is an error; ``body`` may
        be ``None`` with ``v2``.
        """
        if self.protocol == "mlsignal":
            if body is None:
                raise self._fail(
                    RemoteError, "enhance needs a body with protocol mlsignal", 0, None
                )
            doc = body() if callable(body) else body
            return self._call(
                "POST", "/v1/enhance", self._pin(dict(doc)), send_deadline=True, deadline=deadline
            )
        return self._routed(body, windows, deadline)

    def infer(self, windows: np.ndarray, deadline: Deadline | None = None) -> RemoteReply:
        """V2 ``infer`` of feature windows ``(B, T, F)`` at any endpoint (whatever
        ``protocol`` says): the model checked and pinned as for an enhance call."""
        return self._routed(None, lambda: windows, deadline)

    def endpoint_protocols(self) -> dict[str, str]:
        """URL -> what it was found to speak (``mlsignal``, ``v2``, ``v2-binary``) or
        ``unknown`` (not yet asked, or forgotten after a failure)."""
        return self._router.protocols(self.urls)

    def predict(self, windows: np.ndarray) -> RemoteReply:
        """``POST /v1/predict`` with feature windows ``(B, T, F)``."""
        try:
            body = wire.encode_windows(windows)
        except (TypeError, ValueError) as e:
            raise self._fail(RemoteError, f"cannot encode windows: {e}", 0, None) from None
        return self._call("POST", "/v1/predict", self._pin(body))

    def models(self, url: str | None = None) -> dict[str, Any]:
        """``GET /v1/models`` of ``url`` (asked even if its circuit is open), else of the
        first endpoint whose circuit allows a call. No version check: this is how to look."""
        if url is None:
            return self._call("GET", "/v1/models", None, check_pin=False).doc
        base = base_url(url)
        if base not in self._breakers:
            raise ConfigError(f"{base} is not one of the configured endpoints {self.urls}")
        return self._call("GET", "/v1/models", None, check_pin=False, only=base).doc

    def endpoint_states(self) -> dict[str, str]:
        """URL -> circuit state (``closed``, ``open``, ``half_open``)."""
        return {u: b.state for u, b in self._breakers.items()}

    def close(self) -> None:
        """Close pooled connections and stop probing; later calls raise
        :class:`RemoteError`."""
        self._closed = True
        self._health.close()
        self._workers.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    def __enter__(self) -> RemoteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:  # never show the key
        return f"RemoteClient(urls={self.urls!r}, timeout_s={self.timeout_s})"

    # --- one call: attempts, hedges, fail-over and backoff, all inside one deadline ---------
    def _call(
        self,
        method: str,
        path: str,
        doc: dict[str, Any] | None,
        *,
        send_deadline: bool = False,
        check_pin: bool = True,
        only: str | None = None,
        deadline: Deadline | None = None,
    ) -> RemoteReply:
        deadline = deadline or Deadline(self.timeout_s, self._clock)
        if self._closed:
            raise self._fail(RemoteError, "remote client is closed", 0, None)
        send = Send(method, path, *self._encode(doc, send_deadline))
        return self._run(lambda url, dl: send, deadline, check_pin=check_pin, only=only)

    def _run(
        self,
        route: Route,
        deadline: Deadline,
        *,
        check_pin: bool = True,
        only: str | None = None,
    ) -> RemoteReply:
        """Attempts, hedges, fail-over and backoff inside ``deadline``; ``route(url,
        deadline)`` says what to send to ``url`` (it may ask the endpoint first: probes,
        metadata). Runs the attempts on worker threads (:mod:`mlsignal.client.race`)."""

        def attempt(url: str, dl: Deadline) -> tuple[dict[str, Any], Send]:
            send = route(url, dl)
            return self._attempt(url, send, dl), send

        candidates = (only,) if only else self.urls
        won = Race(self._kit, attempt, deadline, candidates, gate=not only).run()
        ms = deadline.elapsed_s() * 1e3
        if won.send.target is not None:
            return RemoteReply(won.answer, won.url, won.attempts, ms, won.send.target.protocol)
        if check_pin:
            self._check_pin(won.answer, won.url, won.attempts)
        return RemoteReply(won.answer, won.url, won.attempts, ms)

    # --- protocols: the routed (auto, v2) call ----------------------------------------------
    def _routed(
        self,
        body: dict[str, Any] | Callable[[], dict[str, Any]] | None,
        windows: Callable[[], np.ndarray] | None,
        deadline: Deadline | None = None,
    ) -> RemoteReply:
        """One call that sends bars to mlsignal endpoints and windows to V2 endpoints; the
        bars' body is made only if an endpoint speaks mlsignal."""
        deadline = deadline or Deadline(self.timeout_s, self._clock)
        if self._closed:
            raise self._fail(RemoteError, "remote client is closed", 0, None)
        v1: Callable[[], Send] | None = None
        if body is not None and self.protocol != "v2":

            def make_v1() -> Send:
                doc = body() if callable(body) else body
                return Send("POST", "/v1/enhance", *self._encode(self._pin(dict(doc)), True))

            v1 = make_v1
        want = Wanted(self.model_name, self.contract_hash, self.accept_mismatch)
        return self._run(self._router.route(want, v1, windows), deadline)

    def _v2_answer(self, raw: bytes, length: str | None, send: Send, url: str) -> dict[str, Any]:
        """The reply document of a V2 infer; a malformed answer counts against ``url``."""
        assert send.target is not None
        try:
            return v2_answer(raw, length, send.target, send.n, url)
        except WireError as e:
            raise EndpointFailure(f"malformed V2 response from {url}: {e}", False) from None

    def _attempt(self, url: str, send: Send, deadline: Deadline) -> dict[str, Any]:
        """One HTTP exchange of ``send`` with ``url`` in what is left of ``deadline``; judged
        (a V2 infer's 2xx decoded as one)."""
        status, raw, length = self._exchange(url, send, deadline)
        if send.target is not None and 200 <= status < 300:
            return self._v2_answer(raw, length, send, url)
        return self._judge(status, raw, url, v2_infer=send.target is not None)

    def _exchange(self, url: str, send: Send, deadline: Deadline) -> tuple[int, bytes, str | None]:
        """One HTTP exchange: ``(status, body, Inference-Header-Content-Length)``, or
        :class:`EndpointFailure` without one."""
        budget = deadline.remaining_s()
        if budget <= 0:  # probes or local work (the windows) used it up: ask nothing more
            raise EndpointFailure(f"timeout after {self.timeout_s} s at {url}", False)
        body, headers = send.body, None
        if send.infer is not None:  # the server may drop work past our budget (µs)
            body, headers = send.infer.body(timeout_us=max(1, int(budget * 1e6)))
            headers["accept-encoding"] = "identity"  # float bytes do not compress: spare it
        elif body is not None:
            headers = {"content-type": wire.JSON_TYPE}
            if send.cap_ms > 0:  # tell the server our budget: it drops work nobody waits for
                body = _with_deadline(body, max(1, int(min(budget * 1e3, send.cap_ms))))
        try:
            request = self._http.build_request(
                send.method, url + send.path, content=body, headers=headers, timeout=budget
            )
            response = self._http.send(request, stream=True)
            try:
                raw = _read(response, deadline, url)
            finally:
                response.close()
        except httpx.HTTPError as e:
            reason = self._scrub(describe_failure(e, url, self.timeout_s))
            raise EndpointFailure(reason, self.retry.should_retry(e)) from None
        except EndpointFailure:
            raise
        except Exception as e:  # never crash the trading loop: fall back, say why
            log.debug("unexpected error calling %s", url, exc_info=True)
            reason = self._scrub(f"{type(e).__name__} at {url}: {e}")
            raise EndpointFailure(reason, False) from None
        return response.status_code, raw, response.headers.get(HEADER_LENGTH)

    def _probe(self, url: str) -> None:
        """A background probe of ``url`` (on a worker thread, within ``timeout_s``): any
        answer below 500 closes its circuit; none, or a 5xx, keeps it open."""
        deadline = Deadline(self.timeout_s, self._clock)
        try:
            with IoGuard(time.monotonic() + self.timeout_s).active():
                status = self._exchange(url, Send("GET", PROBE_PATH, None), deadline)[0]
        except EndpointFailure as f:
            self._router.forget(url)
            self._health.record_failure(url, f"probe: {f.reason}")
            return
        if status >= 500:
            self._health.record_failure(url, f"probe: HTTP {status} at {url}")
        else:
            self._health.record_success(url)

    def _get(self, url: str, path: str, deadline: Deadline) -> tuple[int, bytes]:
        """A probe or metadata read of the router, inside the call's deadline."""
        status, raw, _ = self._exchange(url, Send("GET", path, None), deadline)
        return status, raw

    def _judge(self, status: int, raw: bytes, url: str, v2_infer: bool = False) -> dict[str, Any]:
        """The parsed answer of a 2xx; otherwise the exception its status calls for."""
        if 200 <= status < 300:
            try:
                doc = wire.loads(raw)
            except WireError:
                doc = None
            if not isinstance(doc, dict):
                raise EndpointFailure(f"malformed response from {url}: not a JSON object", False)
            return doc
        text = self._scrub(error_text(raw, status))
        if status in (401, 403):
            raise RemoteError(f"auth failed at {url}: {status} {text}")
        if status == 409:
            prefix = "" if "mismatch" in text.lower() else "model version mismatch: "
            raise VersionMismatchError(f"{prefix}{text} ({url})")
        if status == 404 and v2_infer:  # the checked model or version is gone
            raise VersionMismatchError(f"model version mismatch: {text} ({url})")
        if 400 <= status < 500:
            raise RemoteError(f"{url} rejected the request: {status} {text}")
        if status >= 500:
            transient = self.retry.should_retry(status)
            raise EndpointFailure(f"HTTP {status} at {url}: {text}", transient, status)
        raise RemoteError(f"unexpected HTTP {status} from {url}")

    # --- helpers ---------------------------------------------------------------------------
    def _encode(
        self, doc: dict[str, Any] | None, send_deadline: bool
    ) -> tuple[bytes | None, float]:
        """JSON once per call, so bad input fails before any I/O. Returns the body and the
        cap on ``deadline_ms`` (0: none is sent; the caller's own value caps ours)."""
        if doc is None:
            return None, 0.0
        theirs = doc.pop("deadline_ms", None) if send_deadline else None
        cap = 0.0
        if send_deadline:
            ok = isinstance(theirs, int | float) and theirs > 0
            cap = float(theirs) if ok else math.inf
        try:
            return wire.dumps(doc), cap
        except TypeError as e:
            message = f"request is not JSON-serialisable: {e}"
            raise self._fail(RemoteError, message, 0, None) from None

    def _pin(self, doc: dict[str, Any]) -> dict[str, Any]:
        if self.pinned:
            doc["contract_hash"] = self.contract_hash
        elif self.accept_mismatch:
            doc.pop("contract_hash", None)
        return doc

    def _check_pin(self, doc: dict[str, Any], url: str, attempts: int) -> None:
        theirs = doc.get("contract_hash")
        if not self.pinned or theirs == self.contract_hash:
            return
        message = (
            f"model version mismatch: server {url} serves {str(theirs)[:12]} "
            f"(model_version {doc.get('model_version')}), "
            f"local bundle is {str(self.contract_hash)[:12]}"
        )
        raise self._fail(VersionMismatchError, message, attempts, url)

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _fail(
        self, cls: type[RemoteError], message: str, attempts: int, endpoint: str | None
    ) -> RemoteError:
        return cls(self._scrub(message), attempts=attempts, endpoint=endpoint)


def _read(response: httpx.Response, deadline: Deadline, url: str) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise EndpointFailure(f"response from {url} is over {MAX_RESPONSE_BYTES} B", False)
        chunks.append(chunk)
        if deadline.expired():  # a server trickling bytes does not stretch the deadline
            raise httpx.ReadTimeout("deadline passed while reading", request=response.request)
    return b"".join(chunks)


def _with_deadline(body: bytes, ms: int) -> bytes:
    """Append ``"deadline_ms"`` to an encoded JSON object (orjson ends one with ``}``)."""
    sep = b"" if body == b"{}" else b","
    return body[:-1] + sep + b'"deadline_ms":%d}' % ms
