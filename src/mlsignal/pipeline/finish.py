"""Step 3: model outputs -> GARCH regime, Kelly, fusion and ``ml_info``.

:func:`finish` is the only code that builds an ``ml_info``; :func:`annotate` the only code
that changes one afterwards (where it came from: source, endpoint, attempts, reason,
latency, and what a remote answer adds); :func:`from_server` reads a server's answer into
one. Every key that exists is listed here (and in docs/API.md):

- :data:`ML_INFO_KEYS`: in every ``ml_info``, whatever answered. ``fallback_reason`` and
  ``endpoint`` are ``None`` where they do not apply, ``attempts`` is 0 for a local answer.
- :data:`REMOTE_KEYS`: added by a remote answer (``server_latency_ms``, ``protocol``, one of
  :data:`PROTOCOLS`); :data:`V2_KEYS` by one from an Open Inference Protocol (V2) server.
- :data:`MISMATCH_KEY` (``version_mismatch``): only when a server with another model was
  used because ``accept_version_mismatch`` allowed it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mlsignal.bundle import Bundle
from mlsignal.models.fusion import fuse
from mlsignal.models.garch import classify_regime
from mlsignal.models.kelly import kelly_fraction
from mlsignal.pipeline.prepare import regime_vol
from mlsignal.pipeline.types import Prepared, SignalResult

#: Keys of every ``ml_info``, in order.
ML_INFO_KEYS = (
    "bull_prob", "regime_vol", "regime", "kelly", "kelly_side", "p_lstm", "p_tft",
    "rule_ss", "rule_bs", "model_version", "contract_hash", "source", "device", "backend",
    "latency_ms", "bar_ts", "fallback_reason", "endpoint", "attempts", "base_rate",
)  # fmt: skip
#: Keys a remote answer adds.
REMOTE_KEYS = ("server_latency_ms", "protocol")
#: ``ml_info["protocol"]``: what the remote call spoke: bars to ``/v1/enhance``
#: (``mlsignal``), windows as V2 JSON tensors (``v2``) or as V2 binary tensors
#: (``v2-binary``, the binary tensor data extension).
PROTOCOLS = ("mlsignal", "v2", "v2-binary")
#: Keys an answer from a V2 server adds: the model and version it answered with, and how
#: that version was matched to the local bundle.
V2_KEYS = ("v2_model", "v2_version", "v2_version_check")
#: Only when a server with another model was used by setting.
MISMATCH_KEY = "version_mismatch"
#: ``ml_info["source"]``: who answered.
SOURCES = ("local", "remote", "fallback", "rules")
#: What a server's answer must carry (the keys its own :func:`finish` set before it was
#: annotated; older servers send no ``fallback_reason``/``endpoint``/``attempts``).
_FROM_SERVER = ML_INFO_KEYS[:16]
_EXTRA_KEYS = frozenset((*REMOTE_KEYS, *V2_KEYS, MISMATCH_KEY))
_KEEP: Any = object()


def finish(
    bundle: Bundle,
    p: Prepared,
    out: np.ndarray | None,
    *,
    device: str,
    backend: str,
    latency_ms: float,
    source: str = "local",
    reason: str | None = None,
    attempts: int = 0,
) -> SignalResult:
    """Model outputs ``(3,)`` (``p_lstm, p_tft, bull_prob``), or ``None`` when no model ran
    (then ``source`` is ``rules``: scores unchanged, ``bull_prob`` the fusion centre, i.e.
    no information, Kelly flat) ->
    enhanced scores and ``ml_info`` with every key of :data:`ML_INFO_KEYS`."""
    vol = p.regime_vol if p.regime_vol is not None else regime_vol(bundle.garch, p.close)
    regime = classify_regime(bundle.garch, vol)
    bull = bundle.fusion.centre if out is None else float(out[2])
    if out is None:
        ess, ebs, kelly, side = p.ss, p.bs, 0.0, "flat"
    else:
        ess, ebs = fuse(p.ss, p.bs, bull, bundle.fusion)
        kelly, side = kelly_fraction(
            bull, regime, bundle.kelly_params, bundle.kelly_config, bundle.fusion.kelly_base_rate
        )
    info: dict[str, Any] = {
        "bull_prob": bull,
        "regime_vol": vol,
        "regime": regime,
        "kelly": float(kelly),
        "kelly_side": side,
        "p_lstm": None if out is None else float(out[0]),
        "p_tft": None if out is None else float(out[1]),
        "rule_ss": p.ss,
        "rule_bs": p.bs,
        "model_version": bundle.model_version,
        "contract_hash": bundle.contract_hash,
        "source": "rules" if out is None else _source(source),
        "device": device,
        "backend": backend,
        "latency_ms": latency_ms,
        "bar_ts": p.bar_ts,
        "fallback_reason": reason,
        "endpoint": None,
        "attempts": attempts,
        "base_rate": bundle.fusion.base_rate,
    }
    return SignalResult(p.symbol, float(ess), float(ebs), info)


def annotate(
    result: SignalResult,
    *,
    source: str | None = None,
    latency_ms: float | None = None,
    endpoint: str | None = _KEEP,
    attempts: int | None = None,
    reason: str | None = _KEEP,
    **extra: Any,
) -> SignalResult:
    """``result`` with where it came from recorded (a new ``ml_info``; arguments left out
    keep their value). ``extra``: keys of :data:`REMOTE_KEYS` (``protocol`` one of
    :data:`PROTOCOLS`), :data:`V2_KEYS` or :data:`MISMATCH_KEY` only."""
    unknown = set(extra) - _EXTRA_KEYS
    if unknown:
        raise ValueError(f"not ml_info keys: {sorted(unknown)}")
    if "protocol" in extra and extra["protocol"] not in PROTOCOLS:
        raise ValueError(f"protocol {extra['protocol']!r} is not one of {PROTOCOLS}")
    info = dict(result.ml_info)
    if source is not None:
        info["source"] = _source(source)
    if latency_ms is not None:
        info["latency_ms"] = latency_ms
    if endpoint is not _KEEP:
        info["endpoint"] = endpoint
    if attempts is not None:
        info["attempts"] = attempts
    if reason is not _KEEP:
        info["fallback_reason"] = reason
    info.update(extra)
    return SignalResult(result.symbol, result.enhanced_ss, result.enhanced_bs, info)


def from_server(doc: Mapping[str, Any]) -> SignalResult:
    """One result of a ``/v1/enhance`` answer, as the server's :func:`finish` built it.

    Only the keys of :data:`ML_INFO_KEYS` are kept. Raises ``KeyError``, ``TypeError`` or
    ``ValueError`` for a malformed one (the client turns that into a fallback).
    """
    info = doc["ml_info"]
    if not isinstance(info, Mapping):
        raise TypeError("ml_info is not an object")
    missing = [k for k in _FROM_SERVER if k not in info]
    if missing:
        raise ValueError(f"ml_info lacks {', '.join(missing)}")
    kept = {k: info.get(k) for k in ML_INFO_KEYS}
    kept["attempts"] = kept["attempts"] or 0
    kept["base_rate"] = kept["base_rate"] if kept["base_rate"] is not None else 0.5
    return SignalResult(
        str(doc["symbol"]), float(doc["enhanced_ss"]), float(doc["enhanced_bs"]), kept
    )


def _source(source: str) -> str:
    if source not in SOURCES:
        raise ValueError(f"source {source!r} is not one of {SOURCES}")
    return source
