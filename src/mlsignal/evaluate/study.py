"""The two halves of the report: probability metrics and the backtest, each with its control.

Every control and null moves whole blocks of bars within each symbol (see :mod:`.controls`
and :mod:`.nulls`); the block length is one number for the whole report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mlsignal.bundle import Bundle
from mlsignal.errors import DataError
from mlsignal.evaluate.backtest import (
    Backtest,
    backtest_stats,
    kelly_positions,
    positions_from_scores,
    run_backtest,
    sharpe,
)
from mlsignal.evaluate.controls import rescore, shuffle_blocks
from mlsignal.evaluate.metrics import (
    PROB_COLUMNS,
    block_metrics,
    probability_metrics,
    reliability_bins,
)
from mlsignal.evaluate.nulls import null_section
from mlsignal.training.baselines import BASELINES
from mlsignal.training.skill import information_coefficient

#: Backtest curves, in table order; ``control_*`` use a block-shuffled bull_prob.
STRATEGIES = ("long_only", "raw", "enhanced", "enhanced_kelly", "control_enhanced", "control_kelly")


def model_columns(table: pd.DataFrame) -> list[str]:
    """The probability columns of ``table``: the bundle's outputs, then any baselines."""
    return [c for c in (*PROB_COLUMNS, *BASELINES) if c in table.columns]


def _by_model(
    frame: pd.DataFrame, y: np.ndarray, fwd: np.ndarray, models: Sequence[str]
) -> dict[str, dict[str, float]]:
    out = {}
    for m in models:
        p = frame[m].to_numpy(np.float64)
        out[m] = probability_metrics(y, p) | {"ic": information_coefficient(p, fwd)}
    return out


def _labelled(table: pd.DataFrame) -> pd.DataFrame:
    lab = table[table["label"].notna() & np.isfinite(table["fwd"].to_numpy(np.float64))]
    if len(lab) < 2:
        raise DataError(
            f"{len(lab)} of the {len(table)} evaluated bars have a label (the last bars of a "
            "series have none: their label horizon runs past the data); evaluate more bars"
        )
    return lab


def classification_section(
    table: pd.DataFrame, opts: Any, block: int
) -> tuple[dict[str, Any], dict]:
    """Metrics (AUC, IC, Brier, ...) of every model output against the labels and forward
    returns, pooled and per symbol, beside the same with labels moved in blocks of ``block``
    bars; reliability bins; block permutation nulls of AUC and IC; time blocks."""
    lab = _labelled(table)
    models = model_columns(lab)
    y, fwd = lab["label"].to_numpy(np.float64), lab["fwd"].to_numpy(np.float64)
    sym = lab["symbol"].to_numpy()
    rng = np.random.default_rng(opts.seed)
    idx = shuffle_blocks(sym, np.arange(len(lab)), block, rng)
    y_perm = y[idx]
    section: dict[str, Any] = {
        "models": models,
        "pooled": _by_model(lab, y, fwd, models),
        "per_symbol": {
            s: _by_model(lab[sym == s], y[sym == s], fwd[sym == s], models)
            for s in dict.fromkeys(sym.tolist())
        },
        "control": {
            "what": f"labels and forward returns moved in blocks of {block} bars within each "
            f"symbol (seed {opts.seed})",
            "pooled": _by_model(lab, y_perm, fwd[idx], models),
        },
        "reliability": {m: reliability_bins(y, lab[m].to_numpy(), opts.bins) for m in models},
        "control_reliability": reliability_bins(y_perm, lab["bull_prob"].to_numpy(), opts.bins),
        "blocks": block_metrics(
            lab["timestamp"].to_numpy(), y, lab["bull_prob"].to_numpy(), opts.blocks
        ),
    }
    section["nulls"], null_auc = null_section(lab, models, block, opts)
    extra = {
        "y": y,
        "bull_prob": lab["bull_prob"].to_numpy(),
        "null_auc": null_auc,
        "observed_auc": section["nulls"]["auc"]["bull_prob"]["observed"],
        "block": block,
    }
    return section, extra


def _positions(bundle: Bundle, g: pd.DataFrame, thr: float, p_shuffled: np.ndarray) -> dict:
    raw = positions_from_scores(g["ss"], g["bs"], thr)
    enh = positions_from_scores(g["enhanced_ss"], g["enhanced_bs"], thr)
    ctl = rescore(bundle, g, p_shuffled)
    ctl_dir = positions_from_scores(ctl["enhanced_ss"], ctl["enhanced_bs"], thr)
    return {
        "long_only": np.ones(len(g)),
        "raw": raw,
        "enhanced": enh,
        "enhanced_kelly": kelly_positions(enh, g["kelly"].to_numpy(), g["kelly_side"].to_numpy()),
        "control_enhanced": ctl_dir,
        "control_kelly": kelly_positions(ctl_dir, ctl["kelly"].to_numpy(), ctl["kelly_side"]),
    }


def _pool(parts: list[pd.DataFrame]) -> Backtest:
    """Equal weight across symbols, per timestamp (over the symbols that have that bar)."""
    both = pd.concat(parts, axis=1, keys=range(len(parts)), sort=True)
    mean = {c: both.xs(c, axis=1, level=1).mean(axis=1).to_numpy() for c in parts[0].columns}
    net = mean["net"]
    return Backtest(mean["position"], mean["turnover"], mean["gross"], net, np.cumprod(1 + net))


def _frame(bt: Backtest, ts: pd.Series) -> pd.DataFrame:
    cols = {"position": bt.position, "turnover": bt.turnover, "gross": bt.gross, "net": bt.net}
    return pd.DataFrame(cols, index=pd.DatetimeIndex(ts.to_numpy()))


def _tradable(table: pd.DataFrame) -> pd.DataFrame:
    return table[np.isfinite(table["next_ret"].to_numpy(np.float64))]


def trading_section(
    bundle: Bundle,
    table: pd.DataFrame,
    opts: Any,
    per_year: float,
    block: int,
    symbol_per_year: Mapping[str, float] | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]]:
    """Backtests of every strategy per symbol and pooled; the control's Sharpe null.

    ``per_year`` annualises the pooled backtest, ``symbol_per_year`` each symbol's own
    (default: ``per_year``); the controls move bull_prob in blocks of ``block`` bars.
    """
    trade = _tradable(table)
    years = dict(symbol_per_year or {})
    rng = np.random.default_rng(opts.seed + 2)
    p_shuf = shuffle_blocks(trade["symbol"].to_numpy(), trade["bull_prob"].to_numpy(), block, rng)
    per_symbol: dict[str, dict[str, Any]] = {}
    frames: dict[str, list[pd.DataFrame]] = {s: [] for s in STRATEGIES}
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for sym, g in trade.groupby("symbol", sort=False):
        mask = (trade["symbol"] == sym).to_numpy()
        pos = _positions(bundle, g, opts.threshold, p_shuf[mask])
        r = g["next_ret"].to_numpy()
        bts = {k: run_backtest(v, r, opts.cost_bps) for k, v in pos.items()}
        own = years.get(sym, per_year)
        per_symbol[sym] = {k: backtest_stats(bt, own) for k, bt in bts.items()}
        curves[sym] = {k: (g["timestamp"].to_numpy(), bt.equity) for k, bt in bts.items()}
        for k, bt in bts.items():
            frames[k].append(_frame(bt, g["timestamp"]))
    pooled = {k: _pool(v) for k, v in frames.items()}
    ts_pooled = pd.concat(frames["raw"], axis=1, sort=True).index.to_numpy()
    curves = {"pooled": {k: (ts_pooled, bt.equity) for k, bt in pooled.items()}, **curves}
    section = {
        "rule": (
            f"long when bs - ss > {opts.threshold:g}, short when ss - bs > {opts.threshold:g}, "
            "flat otherwise (raw and enhanced scores alike); kelly: direction x kelly where the "
            "Kelly side agrees; the position taken at bar t's close earns t -> t+1; "
            f"cost {opts.cost_bps:g} bps per unit turnover; symbols pooled equal weight"
        ),
        "cost_bps": opts.cost_bps,
        "threshold": opts.threshold,
        "bars_per_year": per_year,
        "bars_per_year_per_symbol": {str(s): years.get(s, per_year) for s in per_symbol},
        "pooled": {k: backtest_stats(bt, per_year) for k, bt in pooled.items()},
        "per_symbol": per_symbol,
        "sharpe_null": _sharpe_null(bundle, trade, opts, per_year, block, pooled),
    }
    return section, curves


def _sharpe_null(
    bundle: Bundle,
    trade: pd.DataFrame,
    opts: Any,
    per_year: float,
    block: int,
    pooled: dict[str, Backtest],
) -> dict[str, Any]:
    """Pooled Sharpe of the enhanced strategies over many block shuffles of bull_prob."""
    n = min(opts.permutations, 100)  # each one re-runs fusion, Kelly and the backtests
    method = f"block permutation: bull_prob moved in blocks of {block} bars within each symbol"
    if n < 1:
        return {"n_permutations": 0, "method": method, "block": block}
    rng = np.random.default_rng(opts.seed + 3)
    sym = trade["symbol"].to_numpy()
    groups = list(trade.groupby("symbol", sort=False))
    null: dict[str, list[float]] = {"enhanced": [], "enhanced_kelly": []}
    for _ in range(n):
        p = shuffle_blocks(sym, trade["bull_prob"].to_numpy(), block, rng)
        frames: dict[str, list[pd.DataFrame]] = {"control_enhanced": [], "control_kelly": []}
        for s, g in groups:
            pos = _positions(bundle, g, opts.threshold, p[sym == s])
            for k in frames:
                bt = run_backtest(pos[k], g["next_ret"].to_numpy(), opts.cost_bps)
                frames[k].append(_frame(bt, g["timestamp"]))
        null["enhanced"].append(sharpe(_pool(frames["control_enhanced"]).net, per_year))
        null["enhanced_kelly"].append(sharpe(_pool(frames["control_kelly"]).net, per_year))
    out: dict[str, Any] = {"n_permutations": n, "method": method, "block": block}
    for k, values in null.items():
        out[k] = _null_stats(sharpe(pooled[k].net, per_year), np.asarray(values))

    return out


def _null_stats(obs: float, v: np.ndarray) -> dict[str, float]:
    v = v[np.isfinite(v)]
    nan = float("nan")
    return {
        "observed_sharpe": obs,
        "null_mean": float(v.mean()) if v.size else nan,
        "null_q05": float(np.quantile(v, 0.05)) if v.size else nan,
        "null_q95": float(np.quantile(v, 0.95)) if v.size else nan,
        "p_value": float((1 + (v >= obs).sum()) / (1 + v.size)) if v.size else nan,
    }
