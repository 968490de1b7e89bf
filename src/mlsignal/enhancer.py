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

Every call runs the three steps of :mod:`mlsignal.pipeline`: prepare (here, from bars or a
stream), forward (:meth:`enhance_prepared`: the server, else the local runtime) and finish.

Streaming: a live loop that calls ``enhance_signal(df)`` with the previous call's bars plus
one new bar, or calls ``enhance_bar(symbol, bar)`` with each closed bar, skips pandas and
re-validation: the new bar alone is validated and the bars come from a
:class:`~mlsignal.features.FeatureStream`. The results are the full path's, bit for bit
(tests/unit/test_enhancer.py). ``enhance_signal`` takes the stream only when the last
``min_bars`` bars before the new one equal, bit for bit, the bars it holds (which were
validated when they came); otherwise, and for any new bar that fails validation, it runs the
full path, so its errors are the full path's. One difference: bars older than the last
``min_bars`` (which the model never sees) are not re-validated there. In remote mode the
streamed bars go to the server as they are (no DataFrame, no second validation).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mlsignal.bundle import Bundle, load_bundle
from mlsignal.config import BUNDLE_ENV, Settings
from mlsignal.data import BAR_COLUMNS, timeframe
from mlsignal.errors import ConfigError, DataError, MLSignalError
from mlsignal.features import FeatureStream, FeatureStreams
from mlsignal.features.streaming import BarLike
from mlsignal.frames import RowScores, score_rows
from mlsignal.pipeline import (
    Prepared,
    SignalRequest,
    SignalResult,
    finish,
    prepare,
    prepare_stream,
)
from mlsignal.remote_mode import RemoteMode
from mlsignal.runtime.base import Runtime

log = logging.getLogger(__name__)

__all__ = ["MLSignalEnhancer", "SignalRequest", "SignalResult"]

LOCAL_FALLBACK_CHOICES = ("eager", "lazy", "off")
Scores = Mapping[str, tuple[float | None, float | None]]


class MLSignalEnhancer:
    """Runs the bundle's models (here or on a remote server) and fuses them with rule scores.

    Args:
        bundle: bundle directory or loaded :class:`Bundle`; ``None`` reads ``MLSIGNAL_BUNDLE``.
        device: local device (``auto``, ``cpu``, ``cuda``, ``cuda:N``); default
            ``ML_INFERENCE_DEVICE``, or ``cpu`` for the fallback runtime in remote mode.
        backend: ``torch`` or ``onnx`` (default ``ML_INFERENCE_BACKEND``, else auto).
        remote_urls: inference servers, tried in order (default ``GPU_INFERENCE_API_URL``).
        api_key: server API key (default ``GPU_INFERENCE_API_KEY``).
        timeout_s: total budget of one remote call, counted from the moment the caller
            enters ``enhance_*``; it bounds every connect, read, retry, hedge and fail-over,
            and the fallback starts by then whatever the server does (default
            ``GPU_INFERENCE_TIMEOUT``, 3 s).
        accept_version_mismatch: use a server whose model contract hash differs from the
            local bundle's (recorded in ``ml_info``); by default such a server is not used.
        local_fallback: in remote mode, load the local runtime at start (``eager``), on the
            first fallback (``lazy``), or never (``off``: fall back to rule scores).
        tls_verify: ``True``, ``False`` or a CA bundle path for ``https`` servers.
        settings: the settings to use instead of reading the environment.
        streaming: let ``enhance_signal`` take the stream when its bars follow the previous
            call's (see the module docstring). ``False``: every ``enhance_signal`` call
            takes the full path. :meth:`enhance_bar` always streams.
        allow_timeframe_mismatch: score bars whose interval differs from the one the bundle
            was trained on (default ``ML_ALLOW_TIMEFRAME_MISMATCH``, off: a
            :class:`~mlsignal.errors.TimeframeError`).

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
        streaming: bool = True,
        allow_timeframe_mismatch: bool | None = None,
    ) -> None:
        settings = settings or Settings.from_env()
        self._settings = settings
        if local_fallback not in LOCAL_FALLBACK_CHOICES:
            raise ConfigError(f"local_fallback={local_fallback!r}; choose eager, lazy or off")
        self.bundle = _load(bundle)
        urls = _urls(remote_urls) if remote_urls is not None else settings.api_urls
        self._device = device or ("cpu" if urls else settings.device)
        self._backend = backend or settings.backend
        self._runtime: Runtime | None = None
        self._runtime_error: str | None = None
        self._local_allowed = not urls or local_fallback != "off"
        self._failing: str | None = None  # last local failure, for once-per-change logs
        self._streaming = streaming
        allow = allow_timeframe_mismatch
        allow = settings.allow_timeframe_mismatch if allow is None else allow
        self._timeframe = None if allow else timeframe.bundle_seconds(self.bundle.config)
        #: Per-symbol bars for :meth:`enhance_bar` (``min_bars`` kept per symbol).
        self.streams = FeatureStreams(self.bundle.schema, capacity=self.bundle.min_bars)
        self._follow = FeatureStream(self.bundle.schema, capacity=self.bundle.min_bars)
        self._lock = threading.Lock()  # streams are state: one call at a time mutates them
        self.remote = (
            RemoteMode(
                self.bundle,
                urls,
                api_key=api_key if api_key is not None else settings.api_key,
                timeout_s=timeout_s if timeout_s is not None else settings.timeout_s,
                accept_mismatch=accept_version_mismatch,
                tls_verify=tls_verify,
                settings=settings,
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
    def runtime(self) -> Runtime | None:
        """The local runtime (loaded lazily in remote mode with ``local_fallback='lazy'``)."""
        if self._runtime is None and self._local_allowed:
            self._load_runtime(raise_errors=self.remote is None)
        return self._runtime

    @runtime.setter
    def runtime(self, value: Runtime | None) -> None:
        self._runtime = value

    @property
    def min_bars(self) -> int:
        """Fewest bars ``enhance_signal`` needs."""
        return self.bundle.min_bars

    def close(self) -> None:
        """Close the remote client's connections (local mode: nothing to do)."""
        if self.remote is not None:
            self.remote.close()

    # --- the user's calls ----------------------------------------------------------------
    def enhance_signal(
        self, df: pd.DataFrame, ss: float | None = None, bs: float | None = None
    ) -> tuple[float, float, dict[str, Any]]:
        """Enhance one symbol's scores for its last bar.

        Returns ``(enhanced_ss, enhanced_bs, ml_info)``. Bad bars raise a
        :class:`~mlsignal.errors.DataError` naming the problem; a slow or dead server
        never raises: the call falls back and says so in ``ml_info``.
        """
        t0 = time.perf_counter()
        if not self._streaming:
            p = prepare(self.bundle, SignalRequest("", df, ss, bs))
        else:
            with self._lock:
                if self._follows(df):
                    p = prepare_stream(self.bundle, "", self._follow, ss, bs)
                else:
                    p = prepare(self.bundle, SignalRequest("", df, ss, bs))
                    self._follow.reset()  # hold what this call used, for the next call
                    self._follow.extend_valid(p.t_ns, p.ohlcv)
        (result,) = self.enhance_prepared([p], t0)
        return result.enhanced_ss, result.enhanced_bs, result.ml_info

    def enhance_bar(
        self, symbol: str, bar: BarLike, ss: float | None = None, bs: float | None = None
    ) -> tuple[float, float, dict[str, Any]]:
        """Add one closed bar to ``symbol``'s stream and enhance it: ``enhance_signal`` for a
        live loop that gets one bar at a time.

        ``bar``: a mapping with ``timestamp, open, high, low, close, volume`` (or a
        ``pd.Series`` named by its timestamp, or those 6 values in order). Only this bar is
        validated; its timestamp must be later than the symbol's last. The stream needs
        ``min_bars`` bars: :meth:`seed` it with history first (or feed that many bars; until
        then this raises :class:`~mlsignal.errors.InsufficientDataError`, the bar is kept).
        The result equals ``enhance_signal(bars)`` of the same bars.
        """
        (result,) = self.enhance_bars({symbol: bar}, {symbol: (ss, bs)})
        return result.enhanced_ss, result.enhanced_bs, result.ml_info

    def enhance_bars(
        self, bars: Mapping[str, BarLike], scores: Scores | None = None
    ) -> list[SignalResult]:
        """:meth:`enhance_bar` for many symbols at once: one forward pass, results in order.

        Every bar is validated before any is added, so a bad bar adds none (the error names
        its symbol). ``scores`` maps a symbol to its ``(ss, bs)``; missing: rule scores.
        """
        t0 = time.perf_counter()
        scores = scores or {}
        with self._lock:
            checked = [(sym, self.streams.stream(sym).check(bar)) for sym, bar in bars.items()]
            for sym, (ns, values) in checked:
                self.streams[sym].append_values(ns, *values)
            prepared = [
                prepare_stream(self.bundle, sym, self.streams[sym], *scores.get(sym, (None, None)))
                for sym in bars
            ]
        return self.enhance_prepared(prepared, t0)

    def seed(self, symbol: str, bars: pd.DataFrame) -> None:
        """Replace ``symbol``'s stream with the last ``min_bars`` of ``bars`` (history at
        start-up, validated as a whole like ``enhance_signal``'s input)."""
        with self._lock:
            self.streams.seed(symbol, bars)

    def score_frame(
        self,
        df: pd.DataFrame,
        ss: RowScores = None,
        bs: RowScores = None,
        *,
        symbol: str = "",
        batch_size: int = 256,
    ) -> pd.DataFrame:
        """Score every bar of ``df`` as a live loop would have (a backtest's input).

        Row ``t`` from ``min_bars - 1`` on holds what ``enhance_signal(df.iloc[: t + 1],
        ss[t], bs[t])`` gives, in :data:`~mlsignal.frames.FRAME_COLUMNS` (``bull_prob,
        base_rate, p_lstm, p_tft, regime, regime_vol, kelly, kelly_side, enhanced_ss,
        enhanced_bs, rule_ss, rule_bs, source``); earlier rows NaN (text columns ``None``);
        ``df``'s index and row order. ``ss``/``bs``: per row (a Series on ``df``'s index, an
        array), one number, or ``None`` (the built-in MACD rules of each bar). ``df`` is
        validated as a whole; windows and GARCH run vectorised ``batch_size`` bars at a time,
        one model pass per chunk, then the finish every path runs.

        Local runtime only: in remote mode the server is not asked (a backtest would flood
        it); the local runtime is loaded if needed, else a :class:`ConfigError` says why.
        Bars of another interval than the bundle's raise
        :class:`~mlsignal.errors.TimeframeError` unless ``allow_timeframe_mismatch``.
        """
        if self.runtime is None:
            raise ConfigError(
                "score_frame runs the local runtime, and this enhancer has none: "
                f"{self._runtime_error or 'local_fallback is off'}"
            )

        def forward(prepared: list[Prepared]) -> list[SignalResult]:
            timeframe.check(self._timeframe, prepared)
            return self._local(prepared, time.perf_counter(), "local", None)

        return score_rows(self.bundle, df, ss, bs, forward, symbol=symbol, batch_size=batch_size)

    def enhance_batch(self, requests: Sequence[SignalRequest]) -> list[SignalResult]:
        """Enhance many symbols in one call (one forward pass); results in request order."""
        t0 = time.perf_counter()
        return self.enhance_prepared([prepare(self.bundle, r) for r in requests], t0)

    # --- forward and finish ------------------------------------------------------------------
    def enhance_prepared(
        self, prepared: Sequence[Prepared], t0: float | None = None
    ) -> list[SignalResult]:
        """Forward prepared symbols (the server, else the local runtime, else the rule
        scores) and finish them; ``t0`` (``time.perf_counter()``) starts ``latency_ms``."""
        t0 = time.perf_counter() if t0 is None else t0
        if not prepared:
            return []
        timeframe.check(self._timeframe, prepared)
        if self.remote is None:
            return self._local(prepared, t0, "local", None)
        results, reason, attempts = self.remote.enhance(prepared, t0)
        if results is not None:
            return results
        return self._local(prepared, t0, "fallback", reason, attempts)

    def _local(
        self,
        prepared: Sequence[Prepared],
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
        device, backend = (rt.device, rt.backend) if rt is not None else ("none", "none")
        return [
            finish(
                self.bundle,
                p,
                None if outputs is None else outputs[i],
                device=device,
                backend=backend,
                latency_ms=latency_ms,
                source=source,
                reason=reason,
                attempts=attempts,
            )
            for i, p in enumerate(prepared)
        ]

    def _load_runtime(self, raise_errors: bool) -> None:
        from mlsignal.runtime import load_runtime

        try:
            self._runtime = load_runtime(
                self.bundle, self._device, self._backend, settings=self._settings
            )
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

    # --- the follow stream of enhance_signal --------------------------------------------------
    def _follows(self, df: Any) -> bool:
        """Whether ``df`` is the follow stream's bars plus at most one new, valid bar (then
        appended). Checks the last ``min_bars`` bars bit for bit; anything else: False."""
        st = self._follow
        cap = st.capacity
        if len(st) < cap or not isinstance(df, pd.DataFrame) or len(df) < cap:
            return False
        index = df.index
        if not isinstance(index, pd.DatetimeIndex) or index.tz is not None:
            return False
        if tuple(df.columns) != BAR_COLUMNS:
            return False
        values = df.to_numpy()
        if values.dtype != np.float64:
            return False
        ts, n = index.asi8, len(df)
        new = 0 if ts[-1] == st.last_ns else 1
        if n < cap + new or not st.holds(
            ts[n - new - cap : n - new], values[n - new - cap : n - new]
        ):
            return False
        if new:
            try:
                st.append_values(int(ts[-1]), *values[-1].tolist())
            except DataError:  # the full path raises it, worded as it words it
                return False
        return True


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
