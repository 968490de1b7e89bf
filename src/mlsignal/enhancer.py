"""``MLSignalEnhancer``: rule scores + bars in, enhanced scores and ``ml_info`` out.

Drop-in for the user's existing live code::

    enhancer = MLSignalEnhancer("artifacts/quick")          # device from ML_INFERENCE_DEVICE
    enhanced_ss, enhanced_bs, ml_info = enhancer.enhance_signal(df, ss, bs)

``df`` holds the recent bars (at least ``enhancer.min_bars`` of them, oldest first). The
model sees exactly the last ``min_bars`` bars, so the answer does not depend on how much
older history is passed.

With ``GPU_INFERENCE_API_URL`` set (or ``remote_urls=``), each call goes to the inference
server first; when it is slow, down, refuses the key or serves another model version, the
same call falls back to the local runtime (on CPU unless told otherwise), and to the raw
rule scores if no model can run at all. ``ml_info["source"]`` says which
(``remote``, ``local``, ``fallback``, ``rules``) and ``fallback_reason`` why.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mlsignal.bundle import Bundle, load_bundle
from mlsignal.config import BUNDLE_ENV, Settings
from mlsignal.errors import ConfigError, DataError, MLSignalError
from mlsignal.inference import (
    Prepared,
    SignalRequest,
    SignalResult,
    finish,
    prepare,
    prepare_trimmed,
)
from mlsignal.remote_mode import RemoteMode

log = logging.getLogger(__name__)

__all__ = ["MLSignalEnhancer", "SignalRequest", "SignalResult"]

LOCAL_FALLBACK_CHOICES = ("eager", "lazy", "off")


class MLSignalEnhancer:
    """Runs the bundle's models (here or on a remote server) and fuses them with rule scores.

    Args:
        bundle: bundle directory or loaded :class:`Bundle`; ``None`` reads ``MLSIGNAL_BUNDLE``.
        device: local device (``auto``, ``cpu``, ``cuda``, ``cuda:N``); default
            ``ML_INFERENCE_DEVICE``, or ``cpu`` for the fallback runtime in remote mode.
        backend: ``torch`` (default ``ML_INFERENCE_BACKEND``).
        remote_urls: inference servers, tried in order (default ``GPU_INFERENCE_API_URL``).
        api_key: server API key (default ``GPU_INFERENCE_API_KEY``).
        timeout_s: total budget of one remote call, retry and fail-over included (default
            ``GPU_INFERENCE_TIMEOUT``, 3 s).
        accept_version_mismatch: use a server whose model contract hash differs from the
            local bundle's (recorded in ``ml_info``); by default such a server is not used.
        local_fallback: in remote mode, load the local runtime at start (``eager``), on the
            first fallback (``lazy``), or never (``off``: fall back to rule scores).
        tls_verify: ``True``, ``False`` or a CA bundle path for ``https`` servers.

    Construction loads the bundle (and, unless remote-only, the weights with the parity
    gate), so a bad bundle or an unavailable device fails here, not on the first bar.
    """

    def __init__(
        self,
        bundle: str | os.PathLike[str] | Bundle | None = None,
        device: str | None = None,
        backend: str | None = None,
        *,
        remote_urls: Sequence[str] | str | None = None,
        api_key: str | None = None,
        timeout_s: float | None = None,
        accept_version_mismatch: bool = False,
        local_fallback: str = "eager",
        tls_verify: bool | str = True,
        settings: Settings | None = None,
    ) -> None:
        settings = settings or Settings.from_env()
        if local_fallback not in LOCAL_FALLBACK_CHOICES:
            raise ConfigError(f"local_fallback={local_fallback!r}; choose eager, lazy or off")
        self.bundle = _load(bundle)
        urls = _urls(remote_urls) if remote_urls is not None else settings.api_urls
        self._device = device or ("cpu" if urls else settings.device)
        self._backend = backend or settings.backend
        self._runtime: Any = None
        self._runtime_error: str | None = None
        self._local_allowed = not urls or local_fallback != "off"
        self._failing: str | None = None  # last local failure, for once-per-change logs
        self.remote = (
            RemoteMode(
                self.bundle,
                urls,
                api_key=api_key if api_key is not None else settings.api_key,
                timeout_s=timeout_s if timeout_s is not None else settings.timeout_s,
                accept_mismatch=accept_version_mismatch,
                tls_verify=tls_verify,
            )
            if urls
            else None
        )
        if not urls or local_fallback == "eager":
            self._load_runtime(raise_errors=not urls)
        log.info(
            "enhancer ready: mode=%s device=%s backend=%s model=%s contract=%s",
            "remote" if urls else "local",
            self._device,
            self._backend,
            self.bundle.model_version,
            self.bundle.contract_hash[:12],
        )

    @property
    def runtime(self) -> Any:
        """The local runtime (loaded lazily in remote mode with ``local_fallback='lazy'``)."""
        if self._runtime is None and self._local_allowed:
            self._load_runtime(raise_errors=self.remote is None)
        return self._runtime

    @runtime.setter
    def runtime(self, value: Any) -> None:
        self._runtime = value

    @property
    def min_bars(self) -> int:
        """Fewest bars ``enhance_signal`` needs."""
        return self.bundle.min_bars

    def close(self) -> None:
        """Close the remote client's connections (local mode: nothing to do)."""
        if self.remote is not None:
            self.remote.close()

    def enhance_signal(
        self, df: pd.DataFrame, ss: float | None = None, bs: float | None = None
    ) -> tuple[float, float, dict[str, Any]]:
        """Enhance one symbol's scores for its last bar.

        Returns ``(enhanced_ss, enhanced_bs, ml_info)``. Bad bars raise a
        :class:`~mlsignal.errors.DataError` naming the problem; a slow or dead server
        never raises: the call falls back and says so in ``ml_info``.
        """
        (result,) = self.enhance_batch([SignalRequest("", df, ss, bs)])
        return result.enhanced_ss, result.enhanced_bs, result.ml_info

    def enhance_batch(self, requests: Sequence[SignalRequest]) -> list[SignalResult]:
        """Enhance many symbols in one call (one forward pass); results in request order."""
        t0 = time.perf_counter()
        if not requests:
            return []
        if self.remote is None:
            return self._local([prepare(self.bundle, r) for r in requests], t0, "local", None)
        trimmed = self.remote.trim(requests)
        results, reason, attempts = self.remote.enhance(trimmed, t0)
        if results is not None:
            return results
        prepared = [prepare_trimmed(self.bundle, r) for r in trimmed]
        return self._local(prepared, t0, "fallback", reason, attempts)

    # --- local path ------------------------------------------------------------------------
    def _local(
        self,
        prepared: list[Prepared],
        t0: float,
        source: str,
        reason: str | None,
        attempts: int = 0,
    ) -> list[SignalResult]:
        outputs, local_reason = self._predict(np.stack([p.window for p in prepared]))
        if local_reason is not None:
            reason = f"{reason}; {local_reason}" if reason else local_reason
        latency_ms = (time.perf_counter() - t0) * 1e3
        rt = self._runtime
        results = []
        for i, p in enumerate(prepared):
            r = finish(
                self.bundle,
                p,
                None if outputs is None else outputs[i],
                device=rt.device if rt is not None else "none",
                backend=rt.backend if rt is not None else "none",
                latency_ms=latency_ms,
                source=source,
                reason=reason,
            )
            r.ml_info.update(endpoint=None, attempts=attempts)
            r.ml_info.setdefault("fallback_reason", None)
            results.append(r)
        return results

    def _load_runtime(self, raise_errors: bool) -> None:
        from mlsignal.runtime import load_runtime

        try:
            self._runtime = load_runtime(self.bundle, self._device, self._backend)
            self._runtime_error = None
        except MLSignalError as e:
            if raise_errors:
                raise
            self._runtime_error = f"local runtime unavailable: {e}"
            log.error("%s", self._runtime_error)

    def _predict(self, windows: np.ndarray) -> tuple[np.ndarray | None, str | None]:
        rt = self.runtime
        if rt is None:
            return None, self._runtime_error or "local fallback is off"
        try:
            out = rt.predict(windows)
        except DataError:
            raise
        except Exception as e:  # a broken device must not stop the trading loop
            reason = f"{rt.backend} on {rt.device} failed: {type(e).__name__}: {e}"
            if self._failing != reason:
                log.error("model inference failed, returning rule scores: %s", reason)
            self._failing = reason
            return None, reason
        if self._failing is not None:
            log.warning("model inference recovered on %s", rt.device)
            self._failing = None
        return out, None


def _load(bundle: str | os.PathLike[str] | Bundle | None) -> Bundle:
    if isinstance(bundle, Bundle):
        return bundle
    bundle = bundle or os.environ.get(BUNDLE_ENV) or None
    if bundle is None:
        raise ConfigError(f"no bundle given: pass a bundle directory or set {BUNDLE_ENV}")
    return load_bundle(bundle)


def _urls(value: Sequence[str] | str) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    return tuple(u.strip() for u in items if u and u.strip())
