"""Step 1: bars -> :class:`~mlsignal.pipeline.types.Prepared`, from any of three sources.

- :func:`prepare`: a DataFrame as users have it (normalised, validated, trimmed);
- :func:`prepare_arrays`: the wire's epoch-ms timestamps and ``(n, 5)`` OHLCV (the server;
  no pandas on clean bars, the DataFrame path's exact errors otherwise);
- :func:`prepare_stream`: a symbol's :class:`~mlsignal.features.FeatureStream`, whose bars
  were validated one at a time as they came (a live loop; no pandas);
- :func:`prepare_many`: :func:`prepare_arrays` and :func:`with_regime_vols` for all the items
  of a request at once (the server): validation, feature windows and the GARCH filter run
  across the symbols, not once per symbol;
- :func:`prepare_rows`: one symbol's validated bars, every bar at once (per-row scoring of a
  backtest): what :func:`prepare` gives for each prefix, windows and GARCH vectorised.

All of them end in :func:`_prepared`: the last ``bundle.min_bars`` bars as arrays and the
rule scores resolved once, the same way. Errors name the symbol.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from mlsignal.bundle import Bundle
from mlsignal.data import clean_arrays, clean_arrays_many, normalize_bars
from mlsignal.errors import DataError, InsufficientDataError
from mlsignal.features import FeatureStream, feature_windows_many, ohlcv_arrays
from mlsignal.models.garch import GarchParams, garch_forecast, garch_forecast_batch
from mlsignal.pipeline.types import Prepared, SignalRequest, naming
from mlsignal.rules import last_score

#: Up to this many symbols, :func:`regime_vol` one by one beats the vectorised GARCH pass.
SCALAR_GARCH_MAX = 4

#: One symbol as the wire gives it, :func:`prepare_arrays`'s arguments after the bundle:
#: ``(symbol, t_ms, ohlcv, ss, bs, frame)`` with epoch-ms ``t_ms`` (n,) int64, ``ohlcv``
#: (n, 5) float64, and ``frame()`` the same bars as a raw DataFrame (for the pandas path).
ArrayItem = tuple[
    str, np.ndarray, np.ndarray, float | None, float | None, Callable[[], pd.DataFrame]
]


def check_score(value: float | None, name: str) -> float:
    """A rule score as float in 0..100, or a :class:`DataError` naming it."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(f"{name} must be a number in 0..100, got {value!r}") from None
    if not np.isfinite(v) or not 0.0 <= v <= 100.0:
        raise DataError(f"{name} must be a number in 0..100, got {value!r}")
    return v


def _too_few(bundle: Bundle, n: int, what: str) -> InsufficientDataError:
    return InsufficientDataError(
        f"{n} {what}; the model needs at least {bundle.min_bars} "
        f"(feature window {bundle.schema.window} + warm-up {bundle.schema.warmup})"
    )


def _prepared(
    bundle: Bundle,
    symbol: str,
    t_ns: np.ndarray,
    ohlcv: np.ndarray,
    ss: float | None,
    bs: float | None,
) -> Prepared:
    """The one constructor: scores resolved on the last ``min_bars`` bars (given as such)."""
    with naming(symbol):
        if ss is None or bs is None:
            _, high, low, close, _ = ohlcv_arrays(ohlcv)
            rule_ss, rule_bs = last_score(high, low, close)
            ss = rule_ss if ss is None else ss
            bs = rule_bs if bs is None else bs
        ss, bs = check_score(ss, "ss"), check_score(bs, "bs")
    return Prepared(symbol, ss, bs, t_ns, ohlcv, bundle.schema)


def prepare(bundle: Bundle, req: SignalRequest) -> Prepared:
    """Normalise and validate a request's bars, keep the last ``min_bars``, resolve scores.

    The window is computed when first used. Data errors name the symbol.
    """
    with naming(req.symbol):
        bars = normalize_bars(req.bars)
        if len(bars) < bundle.min_bars:
            raise _too_few(bundle, len(bars), "bars given")
    tail = bars.iloc[-bundle.min_bars :]
    ohlcv = np.ascontiguousarray(tail.to_numpy(dtype=np.float64))
    return _prepared(bundle, req.symbol, tail.index.asi8.copy(), ohlcv, req.ss, req.bs)


def prepare_arrays(
    bundle: Bundle,
    symbol: str,
    t_ms: np.ndarray,
    ohlcv: np.ndarray,
    ss: float | None,
    bs: float | None,
    frame: Callable[[], pd.DataFrame],
) -> Prepared:
    """:func:`prepare` for bars given as arrays (the wire's epoch-ms ``t_ms`` and ``(n, 5)``
    ``ohlcv``), without pandas: the same numbers, errors and messages.

    Bars that :func:`~mlsignal.data.clean_arrays` does not pass, too few bars, or any data
    error go through :func:`prepare` on ``frame()`` (the same bars as a raw DataFrame), which
    normalises them or raises the error the pandas path raises. The window is computed here.
    """
    need = bundle.min_bars
    if len(t_ms) < need or not clean_arrays(t_ms, ohlcv):
        return _eager(prepare(bundle, SignalRequest(symbol, frame(), ss, bs)))
    t_ns = t_ms[-need:].astype(np.int64) * 1_000_000
    try:
        return _eager(_prepared(bundle, symbol, t_ns, np.ascontiguousarray(ohlcv[-need:]), ss, bs))
    except DataError:  # the pandas path raises it again, worded as it words it
        return _eager(prepare(bundle, SignalRequest(symbol, frame(), ss, bs)))


def _eager(p: Prepared) -> Prepared:
    p.window  # noqa: B018 (computed now: its data errors belong to this step)
    return p


def prepare_stream(
    bundle: Bundle, symbol: str, stream: FeatureStream, ss: float | None, bs: float | None
) -> Prepared:
    """:func:`prepare` from a stream's last ``min_bars`` bars: the same numbers, no pandas."""
    need = bundle.min_bars
    if len(stream) < need:
        who = f"{symbol}: " if symbol else ""
        err = _too_few(bundle, len(stream), "bars held")
        raise InsufficientDataError(f"{who}{err}; seed the symbol with history first")
    t_ns = stream.timestamps(need).copy()
    return _prepared(bundle, symbol, t_ns, stream.values(need), ss, bs)


def prepare_rows(
    bundle: Bundle,
    symbol: str,
    t_ns: np.ndarray,
    ohlcv: np.ndarray,
    ends: np.ndarray,
    ss: Sequence[float | None] | None = None,
    bs: Sequence[float | None] | None = None,
) -> list[Prepared]:
    """``prepare(bundle, SignalRequest(symbol, bars.iloc[: e + 1], ss[i], bs[i]))`` for each
    end ``e = ends[i]`` of one symbol's bars, at once: the same numbers, bit for bit.

    ``t_ns`` (n,) int64 and ``ohlcv`` (n, 5) C-contiguous float64 are bars that already
    passed :func:`~mlsignal.data.normalize_bars` as a whole (the caller validates once);
    each end needs ``bundle.min_bars`` bars up to it. ``ss``/``bs``: one score (or ``None``:
    the rule score of that bar) per end, or ``None`` for rule scores throughout. Windows come
    from one :func:`~mlsignal.features.feature_windows_many` call, ``regime_vol`` from one
    GARCH pass (:func:`with_regime_vols`); the rule scores, whose indicators start at each
    end's first bar, one end at a time. The :class:`Prepared` hold views of ``ohlcv``.
    A non-finite feature raises what :func:`prepare` raises for that end, naming the symbol.
    """
    need, lb = bundle.min_bars, bundle.schema.lookback
    ends = np.asarray(ends, dtype=np.int64)
    assert ohlcv.ndim == 2 and ohlcv.shape == (len(t_ns), 5) and ohlcv.flags.c_contiguous
    assert ends.size == 0 or (ends.min() >= need - 1 and ends.max() < len(t_ns))
    with naming(symbol):
        x, t = _lookbacks(ohlcv, t_ns, ends, lb)  # (N, lb, 5), (N, lb)
        windows = feature_windows_many(x, bundle.schema, t)  # (N, T, F)
    prepared = []
    for i, e in enumerate(ends.tolist()):
        s_i = None if ss is None else ss[i]
        b_i = None if bs is None else bs[i]
        rows = slice(e + 1 - need, e + 1)
        p = _prepared(bundle, symbol, t_ns[rows], ohlcv[rows], s_i, b_i)
        p._window = windows[i]
        prepared.append(p)
    return with_regime_vols(bundle, prepared)


def _lookbacks(
    ohlcv: np.ndarray, t_ns: np.ndarray, ends: np.ndarray, lb: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``lb`` bars up to each end as views: ohlcv ``(N, lb, 5)``, timestamps ``(N, lb)``."""
    sw = np.lib.stride_tricks.sliding_window_view
    starts = ends - (lb - 1)
    x, t = sw(ohlcv, lb, axis=0), sw(t_ns, lb)  # (n - lb + 1, 5, lb), (n - lb + 1, lb)
    if starts.size and np.array_equal(starts, np.arange(starts[0], starts[0] + starts.size)):
        starts = slice(int(starts[0]), int(starts[0]) + starts.size)  # a view, no copy
    return x[starts].transpose(0, 2, 1), t[starts]


def regime_vol(params: GarchParams, close: np.ndarray) -> float:
    """``garch_forecast`` of the log returns of ``close`` (its errors for non-finite ones)."""
    return garch_forecast(params, np.diff(np.log(close)))


def with_regime_vols(bundle: Bundle, prepared: list[Prepared]) -> list[Prepared]:
    """``prepared`` with ``regime_vol`` filled in: the same numbers finish computes one by
    one (a few symbols: one by one; many: one vectorised GARCH pass)."""
    returns = [np.diff(np.log(p.close)) for p in prepared]
    if len(prepared) <= SCALAR_GARCH_MAX or len({len(r) for r in returns}) != 1:
        vols = [regime_vol(bundle.garch, p.close) for p in prepared]
    elif len(returns[0]) == 0 or not all(np.isfinite(r).all() for r in returns):
        return prepared  # finish raises the error, symbol by symbol
    else:
        vols = garch_forecast_batch(bundle.garch, np.stack(returns)).tolist()
    for p, v in zip(prepared, vols, strict=True):
        p.regime_vol = float(v)
    return prepared


def prepare_many(bundle: Bundle, items: Sequence[ArrayItem]) -> list[Prepared]:
    """``with_regime_vols(bundle, [prepare_arrays(bundle, *item) for item in items])``,
    computed across the items at once: the same :class:`Prepared` (window and ``regime_vol``
    filled), the same numbers bit for bit, the same errors and messages.

    Items of at least ``bundle.min_bars`` bars are checked with one
    :func:`~mlsignal.data.clean_arrays_many` pass per length; the clean ones (trimmed to
    ``min_bars``) get their windows from one :func:`~mlsignal.features.feature_windows_many`
    call and, with the rest, one GARCH pass. Rule scores are computed only for items without
    ``ss``/``bs``. Every other item (too few bars, dirty bars, a bad score, a non-finite
    feature) goes through :func:`prepare_arrays` in its turn, so the first bad item (in
    order) raises exactly what the one-by-one path raises, naming its symbol.
    """
    rows, t_ns, ohlcv = _clean_tails(items, bundle.min_bars)  # (B,), (B, need), (B, need, 5)
    done: dict[int, Prepared] = {}
    try:
        windows = feature_windows_many(ohlcv, bundle.schema, check=False)  # (B, T, F)
    except DataError:  # a schema this mlsignal does not compute: said item by item
        rows = {}
    else:
        finite = np.isfinite(windows).all(axis=(1, 2)).tolist()  # (B,)
        for j, row in rows.items():
            if not finite[row]:  # prepare_arrays names the feature and bar
                continue
            symbol, _, _, ss, bs, _ = items[j]
            try:
                p = _prepared(bundle, symbol, t_ns[row], ohlcv[row], ss, bs)
            except DataError:  # a bad score: prepare_arrays words it
                continue
            p._window = windows[row]
            done[j] = p
    prepared = [done[j] if j in done else prepare_arrays(bundle, *it) for j, it in enumerate(items)]
    return _regime_vols(bundle, prepared, done, rows, ohlcv)


def _clean_tails(
    items: Sequence[ArrayItem], need: int
) -> tuple[dict[int, int], np.ndarray, np.ndarray]:
    """The items :func:`prepare_arrays` takes without pandas (at least ``need`` bars that
    :func:`~mlsignal.data.clean_arrays` passes), trimmed to their last ``need`` bars:
    ``({item position: row}, t_ns (B, need) int64, ohlcv (B, need, 5) float64)``."""
    by_len: dict[int, list[int]] = {}
    for j, (_, t_ms, ohlcv, _, _, _) in enumerate(items):
        n = len(t_ms)
        if (
            n >= need
            and isinstance(t_ms, np.ndarray)
            and isinstance(ohlcv, np.ndarray)
            and t_ms.shape == (n,)
            and ohlcv.shape == (n, 5)
            and t_ms.dtype == np.int64
            and ohlcv.dtype == np.float64
        ):
            by_len.setdefault(n, []).append(j)
    order: list[int] = []
    t_parts, x_parts = [], []
    for js in by_len.values():
        t_ms = np.stack([items[j][1] for j in js])  # (G, n)
        ohlcv = np.stack([items[j][2] for j in js])  # (G, n, 5)
        keep = clean_arrays_many(t_ms, ohlcv)  # (G,)
        if not keep.all():
            js = [j for j, k in zip(js, keep.tolist(), strict=True) if k]
            t_ms, ohlcv = t_ms[keep], ohlcv[keep]
        order += js
        t_parts.append(t_ms[:, -need:])
        x_parts.append(ohlcv[:, -need:])
    if not order:
        return {}, np.empty((0, need), np.int64), np.empty((0, need, 5))
    t_ms = t_parts[0] if len(t_parts) == 1 else np.concatenate(t_parts)
    ohlcv = x_parts[0] if len(x_parts) == 1 else np.concatenate(x_parts)
    # as prepare_arrays: epoch ms -> ns; each row of ohlcv is a contiguous (need, 5) block
    return {j: row for row, j in enumerate(order)}, t_ms * 1_000_000, ohlcv


def _regime_vols(
    bundle: Bundle,
    prepared: list[Prepared],
    done: dict[int, Prepared],
    rows: dict[int, int],
    ohlcv: np.ndarray,
) -> list[Prepared]:
    """:func:`with_regime_vols`, with the log returns of the ``done`` items (rows of
    ``ohlcv``) computed in one pass."""
    if len(prepared) <= SCALAR_GARCH_MAX or len({len(p.ohlcv) for p in prepared}) != 1:
        return with_regime_vols(bundle, prepared)
    returns = np.empty((len(prepared), len(prepared[0].ohlcv) - 1))  # (N, n - 1)
    at = list(done)
    if at:
        idx = [rows[j] for j in at]
        x = ohlcv if idx == list(range(len(ohlcv))) else ohlcv[idx]  # (K, n, 5)
        returns[at] = np.diff(np.log(x[:, :, 3]), axis=1)  # closes with stride 5, as p.close
    for j, p in enumerate(prepared):
        if j not in done:
            returns[j] = np.diff(np.log(p.close))
    if returns.shape[1] == 0 or not np.isfinite(returns).all():
        return prepared  # finish raises the error, symbol by symbol
    for p, v in zip(prepared, garch_forecast_batch(bundle.garch, returns).tolist(), strict=True):
        p.regime_vol = float(v)
    return prepared
