"""The enhancer's remote path: bars out to an inference server, ``ml_info`` back.

Bars are validated and trimmed here first (bad data fails fast, locally, and never costs a
round trip); rule scores are resolved here too, so a fallback uses exactly the same inputs.
Any :class:`~mlsignal.errors.RemoteError` becomes ``(None, reason, attempts)`` and the
enhancer runs the same requests locally.

Against a V2 server (``GPU_INFERENCE_PROTOCOL=v2``, or ``auto`` and a server that speaks
only V2: Triton, KServe) the feature windows are computed here, only the model forward runs
there, and GARCH regime, Kelly and fusion are finished here with
:func:`~mlsignal.inference.finish`: the numbers of a local run given the server's outputs.
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
from mlsignal.inference import (
    Prepared,
    SignalRequest,
    SignalResult,
    finish,
    prepare_trimmed,
    trim_request,
)

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

    def trim(self, requests: Sequence[SignalRequest]) -> list[SignalRequest]:
        """Validate, trim to ``min_bars`` and resolve scores; data errors name the symbol."""
        return [trim_request(self.bundle, r) for r in requests]

    def enhance(
        self, requests: Sequence[SignalRequest], t0: float
    ) -> tuple[list[SignalResult] | None, str | None, int]:
        """Remote results, or ``(None, reason, attempts)`` when the caller must fall back."""
        body = None
        if self.client.protocol != "v2":
            body = wire.encode_enhance([(r.symbol, r.bars, r.ss, r.bs) for r in requests])
        prepared: list[Prepared] = []

        def windows() -> np.ndarray:  # only for a V2 endpoint: features computed here
            prepared[:] = [prepare_trimmed(self.bundle, r) for r in requests]
            return np.stack([p.window for p in prepared])

        try:
            reply = self.client.enhance(body, windows)
            if reply.protocol == "v2":
                results = self._finish(prepared, reply, t0)
            else:
                results = self._results(reply, len(requests), t0)
        except RemoteError as e:
            self._note(str(e))
            return None, str(e), int(getattr(e, "attempts", 0) or 0)
        self._note(None)
        return results, None, reply.attempts

    def _results(self, reply: Any, n: int, t0: float) -> list[SignalResult]:
        try:
            docs = reply.doc["results"]
            if len(docs) != n:
                raise ValueError(f"{len(docs)} results for {n} symbols")
            results = [self._result(d, reply) for d in docs]
        except (KeyError, TypeError, ValueError) as e:
            raise RemoteError(f"malformed response from {reply.endpoint}: {e}") from None
        latency_ms = (time.perf_counter() - t0) * 1e3
        for r in results:
            r.ml_info["latency_ms"] = latency_ms
        return results

    def _finish(self, prepared: list[Prepared], reply: Any, t0: float) -> list[SignalResult]:
        """A V2 server's model outputs -> results finished here (regime, Kelly, fusion)."""
        from mlsignal.client.v2 import short

        doc = reply.doc
        outputs = doc["outputs"]
        if len(outputs) != len(prepared):
            raise RemoteError(f"malformed response from {reply.endpoint}: wrong batch size")
        latency_ms = (time.perf_counter() - t0) * 1e3
        extra: dict[str, Any] = {
            "endpoint": reply.endpoint,
            "attempts": reply.attempts,
            "server_latency_ms": None,
            "fallback_reason": None,
            "protocol": "v2",
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
        results = []
        for p, out in zip(prepared, outputs, strict=True):
            r = finish(
                self.bundle,
                p,
                out,
                device="remote",
                backend=doc["platform"],
                latency_ms=latency_ms,
                source="remote",
            )
            r.ml_info.update(extra)
            results.append(r)
        return results

    def _result(self, doc: dict[str, Any], reply: Any) -> SignalResult:
        info = dict(doc["ml_info"])
        info.update(
            source="remote",
            endpoint=reply.endpoint,
            attempts=reply.attempts,
            server_latency_ms=info.get("latency_ms"),
            fallback_reason=None,
            protocol="mlsignal",
        )
        if info.get("contract_hash") != self.bundle.contract_hash:
            info["version_mismatch"] = (
                f"server {str(info.get('contract_hash'))[:12]}, "
                f"local {self.bundle.contract_hash[:12]} (accepted by setting)"
            )
        return SignalResult(
            str(doc["symbol"]), float(doc["enhanced_ss"]), float(doc["enhanced_bs"]), info
        )

    def _note(self, reason: str | None) -> None:
        """Log once per state change: remote -> fallback, fallback -> remote."""
        if reason is None and self._reason is not None:
            log.warning("remote inference recovered; using the server again")
        elif reason is not None and self._reason is None:
            log.warning("remote inference unavailable, falling back locally: %s", reason)
        self._reason = reason
