"""The HTTP wire schema shared by client and server (plain dicts, JSON via orjson).

Neither side imports the other; both import this package. Nothing here imports torch.
This module holds the ``/v1`` schema and the JSON helpers; :mod:`mlsignal.wire.v2` holds the
Open Inference Protocol (KServe V2) infer bodies, JSON and binary.

``POST /v1/enhance`` request::

    {"symbols": [{"symbol": "SPX", "ss": 40.0, "bs": 70.0,          # ss/bs may be null: rules
                  "bars": {"t": [epoch_ms, ...], "open": [...], "high": [...],
                           "low": [...], "close": [...], "volume": [...]}}],
     "contract_hash": "3f2a…",     # optional pin: the server answers 409 if its model differs
     "deadline_ms": 800}           # optional budget from arrival; late work is dropped (504)

response::

    {"model_version": "...", "contract_hash": "...", "device": "cuda:0", "backend": "torch",
     "results": [{"symbol": "SPX", "enhanced_ss": 28.0, "enhanced_bs": 91.0, "ml_info": {...}}]}

``POST /v1/predict``: ``{"windows": [[[float] * F] * T] * B, "contract_hash": ...}`` ->
``{"names": ["p_lstm", "p_tft", "bull_prob"], "outputs": [[p_lstm, p_tft, bull_prob], ...],
"model_version": ..., "contract_hash": ...}``. Errors: ``{"error": "..."}`` with a 4xx/5xx.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pandas as pd

from mlsignal.data.validate import BAR_COLUMNS, T_MAX_MS, T_MIN_MS, TIME_RANGE
from mlsignal.errors import TimestampError, WireError

BAR_KEYS = BAR_COLUMNS
JSON_TYPE = "application/json"


def dumps(doc: Any) -> bytes:
    """JSON bytes; numpy scalars and arrays serialise natively."""
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def loads(body: bytes | str) -> Any:
    """Parse JSON, or raise :class:`WireError` on ``body``."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise WireError("body", f"not valid JSON ({e})") from None


# --- bars ---------------------------------------------------------------------------------
def encode_bars(bars: pd.DataFrame | BarArrays) -> dict[str, list]:
    """Canonical bars (a DataFrame, or :class:`BarArrays`) -> columnar JSON-able dict with
    epoch-millisecond timestamps."""
    if isinstance(bars, BarArrays):
        doc: dict[str, list] = {"t": bars.t_ms.tolist()}
        for i, key in enumerate(BAR_KEYS):
            doc[key] = bars.ohlcv[:, i].tolist()
        return doc
    ts = bars.index.values.astype("datetime64[ms]").astype(np.int64)
    doc = {"t": ts.tolist()}
    for key in BAR_KEYS:
        doc[key] = bars[key].to_numpy(dtype=np.float64).tolist()
    return doc


@dataclass(frozen=True)
class BarArrays:
    """Bars as they come off the wire: epoch-ms timestamps and an ``(n, 5)`` OHLCV matrix.

    Typed and shaped, not yet validated as bars (sorted timestamps, positive prices):
    the server checks that in one vectorised pass, and :meth:`frame` gives the DataFrame the
    pandas path validates (with its exact messages) when a check fails.
    """

    t_ms: np.ndarray  # (n,) int64 epoch milliseconds
    ohlcv: np.ndarray  # (n, 5) float64, columns BAR_KEYS

    @classmethod
    def from_ns(cls, t_ns: np.ndarray, ohlcv: np.ndarray) -> BarArrays:
        """Bars with int64 nanosecond timestamps, as the wire carries them (epoch ms)."""
        t_ms = t_ns.astype("datetime64[ns]").astype("datetime64[ms]").astype(np.int64)
        return cls(t_ms, ohlcv)

    def frame(self) -> pd.DataFrame:
        """The raw bars DataFrame, as :func:`decode_bars` returns it.

        A timestamp outside ``TIME_RANGE`` is a :class:`TimestampError` naming its row
        (converted to nanoseconds it would wrap around silently).
        """
        pos = _first_outside(self.t_ms)
        if pos is not None:
            raise TimestampError(
                f"row {pos + 1}: timestamp {int(self.t_ms[pos])} ms is outside {TIME_RANGE}"
            )
        ns = self.t_ms.astype("datetime64[ms]").astype("datetime64[ns]")
        index = pd.DatetimeIndex(ns).rename("timestamp")
        return pd.DataFrame(
            {k: self.ohlcv[:, i] for i, k in enumerate(BAR_KEYS)}, index=index, copy=True
        )


def decode_bar_arrays(doc: Any, where: str, max_bars: int) -> BarArrays:
    """Columnar dict -> :class:`BarArrays`; :class:`WireError` names a bad field or value."""
    if not isinstance(doc, Mapping):
        raise WireError(where, "must be an object with t, open, high, low, close, volume")
    t = _number_array(doc.get("t"), f"{where}.t", integer=True)
    if len(t) > max_bars:
        raise WireError(f"{where}.t", f"{len(t)} bars exceed the limit of {max_bars}")
    pos = _first_outside(t)
    if pos is not None:
        raise WireError(
            f"{where}.t[{pos}]", f"{int(t[pos])} ms is outside {TIME_RANGE} (epoch milliseconds)"
        )
    cols = [_number_array(doc.get(k), f"{where}.{k}") for k in BAR_KEYS]
    for k, v in zip(BAR_KEYS, cols, strict=True):
        if len(v) != len(t):
            raise WireError(f"{where}.{k}", f"has {len(v)} values but t has {len(t)}")
    return BarArrays(t, np.stack(cols, axis=1))


def _first_outside(t_ms: np.ndarray) -> int | None:
    """Position of the first epoch-ms timestamp outside ``TIME_RANGE``, or ``None``."""
    outside = (t_ms < T_MIN_MS) | (t_ms > T_MAX_MS)
    return int(np.argmax(outside)) if outside.any() else None


def decode_bars(doc: Any, where: str, max_bars: int) -> pd.DataFrame:
    """Columnar dict -> a raw bars DataFrame (validated later by ``normalize_bars``)."""
    return decode_bar_arrays(doc, where, max_bars).frame()


_NUMBER_TYPES = frozenset((int, float))
_INT_TYPES = frozenset((int,))


def _number_array(value: Any, where: str, integer: bool = False) -> np.ndarray:
    """A JSON list of numbers as int64 (``integer``) or float64; one C-speed type pass."""
    if not isinstance(value, list):
        raise WireError(where, "must be a list of numbers")
    if not set(map(type, value)) <= (_INT_TYPES if integer else _NUMBER_TYPES):
        _number_list(value, where, integer)  # names the first bad value (or allows subclasses)
    try:
        return np.array(value, dtype=np.int64 if integer else np.float64)
    except (OverflowError, TypeError, ValueError):
        raise WireError(where, "holds a number out of range") from None


def _number_list(value: Any, where: str, integer: bool = False) -> list:
    if not isinstance(value, list):
        raise WireError(where, "must be a list of numbers")
    kinds = (int,) if integer else (int, float)
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, kinds):
            raise WireError(f"{where}[{i}]", f"must be {'an integer' if integer else 'a number'}")
    return value


# --- enhance ------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnhanceItem:
    """One decoded symbol of a ``/v1/enhance`` request."""

    symbol: str
    arrays: BarArrays
    ss: float | None
    bs: float | None

    @functools.cached_property
    def bars(self) -> pd.DataFrame:
        """The bars as a raw DataFrame (built on first use)."""
        return self.arrays.frame()


@dataclass(frozen=True)
class EnhanceCall:
    """A decoded ``/v1/enhance`` request."""

    items: list[EnhanceItem]
    contract_hash: str | None
    deadline_ms: float | None


def encode_enhance(
    items: Sequence[tuple[str, pd.DataFrame | BarArrays, float | None, float | None]],
    contract_hash: str | None = None,
    deadline_ms: float | None = None,
) -> dict[str, Any]:
    """Build a ``/v1/enhance`` request from (symbol, bars, ss, bs) tuples."""
    return {
        "symbols": [
            {"symbol": s, "ss": ss, "bs": bs, "bars": encode_bars(b)} for s, b, ss, bs in items
        ],
        "contract_hash": contract_hash,
        "deadline_ms": deadline_ms,
    }


def decode_enhance(doc: Any, max_symbols: int, max_bars: int) -> EnhanceCall:
    """Validate and decode a ``/v1/enhance`` body; :class:`WireError` names the field."""
    if not isinstance(doc, Mapping):
        raise WireError("body", "must be a JSON object")
    symbols = doc.get("symbols")
    if not isinstance(symbols, list) or not symbols:
        raise WireError("symbols", "must be a non-empty list")
    if len(symbols) > max_symbols:
        raise WireError("symbols", f"{len(symbols)} symbols exceed the limit of {max_symbols}")
    items = [_decode_item(s, f"symbols[{i}]", max_bars) for i, s in enumerate(symbols)]
    return EnhanceCall(items, _opt_str(doc, "contract_hash"), _opt_budget(doc, "deadline_ms"))


def _decode_item(doc: Any, where: str, max_bars: int) -> EnhanceItem:
    if not isinstance(doc, Mapping):
        raise WireError(where, "must be an object with symbol, bars, ss, bs")
    symbol = doc.get("symbol", "")
    if not isinstance(symbol, str) or len(symbol) > 64:
        raise WireError(f"{where}.symbol", "must be a string of at most 64 characters")
    scores = [_opt_score(doc, k, where) for k in ("ss", "bs")]
    arrays = decode_bar_arrays(doc.get("bars"), f"{where}.bars", max_bars)
    return EnhanceItem(symbol, arrays, *scores)


def _opt_score(doc: Mapping[str, Any], key: str, where: str) -> float | None:
    v = doc.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 100:
        raise WireError(f"{where}.{key}", f"must be null or a number in 0..100, got {v!r}")
    return float(v)


def _opt_str(doc: Mapping[str, Any], key: str) -> str | None:
    v = doc.get(key)
    if v is not None and not isinstance(v, str):
        raise WireError(key, "must be a string or null")
    return v


def _opt_budget(doc: Mapping[str, Any], key: str) -> float | None:
    v = doc.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 3.6e6:
        raise WireError(key, f"must be null or a positive number of milliseconds, got {v!r}")
    return float(v)


# --- predict ------------------------------------------------------------------------------
def encode_windows(windows: np.ndarray) -> dict[str, Any]:
    """``/v1/predict`` request body for windows ``(B, T, F)``."""
    return {"windows": np.asarray(windows, dtype=np.float32)}


def number_tensor(
    value: Any, where: str, depth: int, error: type[WireError] = WireError
) -> np.ndarray:
    """A JSON list of numbers, nested up to ``depth`` lists deep, as a float32 array.

    Only JSON numbers count: ``true``, ``"1.5"`` or ``null`` anywhere is an ``error`` naming
    ``where`` and the value's row-major position (numpy would take them as 1.0, 1.5, NaN).
    The shape is the caller's to check.
    """
    if not isinstance(value, list):
        raise error(where, "must be a list of numbers")
    flat: list = value
    for _ in range(depth - 1):
        if not flat or not set(map(type, flat)) <= {list}:
            break
        flat = list(itertools.chain.from_iterable(flat))
    kinds = set(map(type, flat))
    if list in kinds:
        raise error(where, "must be a rectangular list of numbers")
    if not kinds <= _NUMBER_TYPES:
        i, v = next((i, v) for i, v in enumerate(flat) if type(v) not in _NUMBER_TYPES)
        shown = f"{type(v).__name__} {v!r}"[:60]
        raise error(where, f"must hold numbers only; value {i} (row-major) is {shown}")
    try:
        with np.errstate(over="ignore"):  # beyond float32 becomes inf: the caller refuses it
            return np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError, OverflowError):
        raise error(where, "must be a rectangular list of numbers") from None


def decode_windows(doc: Any, shape: tuple[int, int], max_batch: int) -> np.ndarray:
    """Validate ``{"windows": [[[...]]]}`` -> float32 ``(B, T, F)``; ``shape`` is (T, F).

    Only numbers are taken (not booleans, strings or null), finite, in the model's shape.
    """
    if not isinstance(doc, Mapping) or "windows" not in doc:
        raise WireError("windows", "is required: a list of (T, F) windows")
    arr = number_tensor(doc["windows"], "windows", depth=3)
    if arr.ndim != 3 or arr.shape[1:] != shape or arr.shape[0] == 0:
        raise WireError(
            "windows", f"has shape {list(arr.shape)}; expected [B, {shape[0]}, {shape[1]}]"
        )
    if arr.shape[0] > max_batch:
        raise WireError("windows", f"{arr.shape[0]} windows exceed the limit of {max_batch}")
    if not np.isfinite(arr).all():
        b, t, f = np.argwhere(~np.isfinite(arr))[0]
        raise WireError(f"windows[{b}][{t}][{f}]", "must be finite")
    return arr


def result_to_wire(symbol: str, ess: float, ebs: float, info: Mapping[str, Any]) -> dict:
    """One enhance result as JSON-able dict (NaN never appears: ml_info values are finite)."""
    clean = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in info.items()
    }
    return {"symbol": symbol, "enhanced_ss": ess, "enhanced_bs": ebs, "ml_info": clean}
