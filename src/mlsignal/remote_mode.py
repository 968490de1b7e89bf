"""The enhancer's remote path: bars out to an inference server, ``ml_info`` back.

Bars are validated and trimmed here first (bad data fails fast, locally, and never costs a
round trip); rule scores are resolved here too, so a fallback uses exactly the same inputs.
Any :class:`~mlsignal.errors.RemoteError` becomes ``(None, reason, attempts)`` and the
enhancer runs the same requests locally.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from mlsignal import wire
from mlsignal.bundle import Bundle
from mlsignal.errors import RemoteError
from mlsignal.inference import SignalRequest, SignalResult, trim_request

log = logging.getLogger(__name__)


class RemoteMode:
    """A :class:`~mlsignal.client.RemoteClient` pinned to the local bundle's contract hash."""

    def __init__(
        self,
        bundle: Bundle,
        urls: Sequence[str],
        *,
        api_key: str | None,
        timeout_s: float,
        accept_mismatch: bool,
        tls_verify: bool | str,
    ) -> None:
        from mlsignal.client import RemoteClient

        self.bundle = bundle
        self.client = RemoteClient(
            urls,
            api_key=api_key,
            timeout_s=timeout_s,
            contract_hash=bundle.contract_hash,
            accept_mismatch=accept_mismatch,
            verify=tls_verify,
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
        body = wire.encode_enhance([(r.symbol, r.bars, r.ss, r.bs) for r in requests])
        try:
            reply = self.client.enhance(body)
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

    def _result(self, doc: dict[str, Any], reply: Any) -> SignalResult:
        info = dict(doc["ml_info"])
        info.update(
            source="remote",
            endpoint=reply.endpoint,
            attempts=reply.attempts,
            server_latency_ms=info.get("latency_ms"),
            fallback_reason=None,
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
