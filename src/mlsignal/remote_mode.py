"""The enhancer's remote path: prepared symbols out to an inference server, results back.

Bars are validated, trimmed and scored locally first (:mod:`mlsignal.pipeline.prepare`: bad
data fails fast, locally, and never costs a round trip), so a fallback uses exactly the same
inputs, and the same :class:`~mlsignal.pipeline.Prepared` objects (a window computed for a
V2 server is not computed again by the fallback). Any
:class:`~mlsignal.errors.RemoteError` becomes ``(None, reason, attempts)`` and the enhancer
runs the same symbols locally.

- V2 (the default, ``GPU_INFERENCE_PROTOCOL=auto`` or ``v2``; ``mlsignal serve``, Triton,
  KServe): the feature windows go, as binary tensors where the server lists the extension
  (``ml_info["protocol"]`` ``v2-binary``) or as JSON tensors (``v2``); only the model
  forward runs there, and :func:`~mlsignal.pipeline.finish` runs here: the numbers of a
  local run given the server's outputs, which travel exactly.
- ``/v1/enhance`` (``GPU_INFERENCE_PROTOCOL=mlsignal``, or ``auto`` and a server that speaks
  only v1): the bars go as they are (their body is made only then); the server prepares,
  forwards and finishes; :func:`~mlsignal.pipeline.from_server` reads its answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from mlsignal import wire
from mlsignal.bundle import Bundle
from mlsignal.config import Settings
from mlsignal.errors import RemoteError
from mlsignal.pipeline import Prepared, SignalResult, annotate, finish, from_server

log = logging.getLogger(__name__)


class RemoteMode:
    """A :class:`~mlsignal.client.RemoteClient` pinned to the local bundle's contract hash.

    ``settings`` gives the protocol and the V2 model name (``GPU_INFERENCE_PROTOCOL``,
    ``GPU_INFERENCE_MODEL_NAME``; ``None``: read from the environment).
    """

    def __init__(
        self,
        bundle: Bundle,
        urls: Sequence[str],
        *,
        api_key: str | None,
        timeout_s: float,
        accept_mismatch: bool,
        tls_verify: bool | str,
        settings: Settings | None = None,
    ) -> None:
        from mlsignal.client import RemoteClient

        settings = settings or Settings.from_env()
        self.bundle = bundle
        self.client = RemoteClient(
            urls,
            api_key=api_key,
            timeout_s=timeout_s,
            contract_hash=bundle.contract_hash,
            accept_mismatch=accept_mismatch,
            verify=tls_verify,
            protocol=settings.protocol,
            model_name=settings.model_name,
        )
        self._reason: str | None = None  # current fallback reason; None while remote works

    def close(self) -> None:
        """Close pooled connections."""
        self.client.close()

    def enhance(
        self, prepared: Sequence[Prepared], t0: float
    ) -> tuple[list[SignalResult] | None, str | None, int]:
        """Remote results, or ``(None, reason, attempts)`` when the caller must fall back.

        ``t0`` (``time.perf_counter()``) is when the caller entered ``enhance_*``: the
        call's one deadline, ``timeout_s`` after it, covers the preparation already done
        and every connect, read, retry and fail-over; this returns by then, whatever the
        servers do, so the fallback starts by then.
        """
        from mlsignal.client import Deadline
        from mlsignal.client.v2 import V2_PROTOCOLS

        def body() -> dict[str, Any]:  # made only for an endpoint that speaks only v1
            arrays = [wire.BarArrays.from_ns(p.t_ns, p.ohlcv) for p in prepared]
            return wire.encode_enhance(
                [(p.symbol, a, p.ss, p.bs) for p, a in zip(prepared, arrays, strict=True)]
            )

        try:
            deadline = Deadline.since(self.client.timeout_s, time.perf_counter() - t0)
            reply = self.client.enhance(
                body, lambda: np.stack([p.window for p in prepared]), deadline=deadline
            )
            if reply.protocol in V2_PROTOCOLS:
                results = self._finish(prepared, reply, t0)
            else:
                results = self._results(reply, len(prepared), t0)
        except RemoteError as e:
            self._note(str(e))
            return None, str(e), e.attempts
        self._note(None)
        return results, None, reply.attempts

    def _results(self, reply: Any, n: int, t0: float) -> list[SignalResult]:
        """A ``/v1/enhance`` answer -> results, annotated as remote ones."""
        try:
            docs = reply.doc["results"]
            if len(docs) != n:
                raise ValueError(f"{len(docs)} results for {n} symbols")
            served = [from_server(d) for d in docs]
        except (KeyError, TypeError, ValueError) as e:
            raise RemoteError(f"malformed response from {reply.endpoint}: {e}") from None
        latency_ms = (time.perf_counter() - t0) * 1e3
        return [
            annotate(
                r,
                source="remote",
                latency_ms=latency_ms,
                endpoint=reply.endpoint,
                attempts=reply.attempts,
                reason=None,
                server_latency_ms=r.ml_info["latency_ms"],
                protocol="mlsignal",
                **self._mismatch(r.ml_info["contract_hash"]),
            )
            for r in served
        ]

    def _mismatch(self, theirs: Any) -> dict[str, str]:
        if theirs == self.bundle.contract_hash:
            return {}
        text = f"server {str(theirs)[:12]}, local {self.bundle.contract_hash[:12]}"
        return {"version_mismatch": f"{text} (accepted by setting)"}

    def _finish(self, prepared: Sequence[Prepared], reply: Any, t0: float) -> list[SignalResult]:
        """A V2 server's model outputs -> results finished here (regime, Kelly, fusion)."""
        from mlsignal.client.v2 import short

        doc = reply.doc
        outputs = doc["outputs"]
        if len(outputs) != len(prepared):
            raise RemoteError(f"malformed response from {reply.endpoint}: wrong batch size")
        latency_ms = (time.perf_counter() - t0) * 1e3
        extra: dict[str, Any] = {
            "server_latency_ms": None,
            "protocol": reply.protocol,
            "v2_model": doc["model_name"],
            "v2_version": doc["model_version"],
            "v2_version_check": doc["matched"],
        }
        if doc["matched"] == "accepted":
            extra["version_mismatch"] = (
                f"V2 server serves {doc['model_name']!r} version "
                f"{short(doc['model_version']) or '?'}, local {self.bundle.contract_hash[:12]} "
                "(accepted by setting)"
            )
        return [
            annotate(
                finish(
                    self.bundle,
                    p,
                    out,
                    device="remote",
                    backend=doc["platform"],
                    latency_ms=latency_ms,
                    source="remote",
                    attempts=reply.attempts,
                ),
                endpoint=reply.endpoint,
                **extra,
            )
            for p, out in zip(prepared, outputs, strict=True)
        ]

    def _note(self, reason: str | None) -> None:
        """Log once per state change: remote -> fallback, fallback -> remote."""
        if reason is None and self._reason is not None:
            log.warning("remote inference recovered; using the server again")
        elif reason is not None and self._reason is None:
            log.warning("remote inference unavailable, falling back locally: %s", reason)
        self._reason = reason
