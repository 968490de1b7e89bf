"""The two halves of the report: probability metrics and the backtest, each with its control."""

from __future__ import annotations

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
from mlsignal.evaluate.controls import rescore, shuffle_within
from mlsignal.evaluate.metrics import (
    PROB_COLUMNS,
    block_metrics,
    permutation_null,
    probability_metrics,
    reliability_bins,
)

#: Backtest curves, in table order; ``control_*`` use a shuffled bull_prob.
STRATEGIES = ("long_only", "raw", "enhanced", "enhanced_kelly", "control_enhanced", "control_kelly")


def _by_model(frame: pd.DataFrame, y: np.ndarray) -> dict[str, dict[str, float]]:
    return {m: probability_metrics(y, frame[m].to_numpy()) for m in PROB_COLUMNS}


def classification_section(table: pd.DataFrame, opts: Any) -> tuple[dict[str, Any], dict]:
    """Metrics of every model output against the labels, pooled and per symbol, beside the
    same with permuted labels; reliability bins; the AUC null distribution; time blocks."""
    lab = table[table["label"].notna()]
    if len(lab) < 2:
        raise DataError(
            f"{len(lab)} of the {len(table)} evaluated bars have a label (the last bars of a "
            "series have none: their label horizon runs past the data); evaluate more bars"
        )
    y = lab["label"].to_numpy(np.float64)
    sym = lab["symbol"].to_numpy()
    rng = np.random.default_rng(opts.seed)
    y_perm = shuffle_within(sym, y, rng)
    section: dict[str, Any] = {
        "pooled": _by_model(lab, y),
        "per_symbol": {
            s: _by_model(lab[sym == s], y[sym == s]) for s in dict.fromkeys(sym.tolist())
        },
        "control": {
            "what": f"labels permuted within each symbol (seed {opts.seed})",
            "pooled": _by_model(lab, y_perm),
        },
        "reliability": {m: reliability_bins(y, lab[m].to_numpy(), opts.bins) for m in PROB_COLUMNS},
        "control_reliability": reliability_bins(y_perm, lab["bull_prob"].to_numpy(), opts.bins),
        "blocks": block_metrics(
            lab["timestamp"].to_numpy(), y, lab["bull_prob"].to_numpy(), opts.blocks
        ),
    }
    nulls = {
        m: permutation_null(y, lab[m].to_numpy(), opts.permutations, opts.seed + 1)
        for m in PROB_COLUMNS
    }
    section["auc_null"] = {
        m: {k: v for k, v in d.items() if k != "null_auc"} for m, d in nulls.items()
    }
    extra = {
        "y": y,
        "bull_prob": lab["bull_prob"].to_numpy(),
        "null_auc": nulls["bull_prob"].get("null_auc", []),
        "observed_auc": nulls["bull_prob"]["observed_auc"],
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
    both = pd.concat(parts, axis=1, keys=range(len(parts)))
    mean = {c: both.xs(c, axis=1, level=1).mean(axis=1).to_numpy() for c in parts[0].columns}
    net = mean["net"]
    return Backtest(mean["position"], mean["turnover"], mean["gross"], net, np.cumprod(1 + net))


def _frame(bt: Backtest, ts: pd.Series) -> pd.DataFrame:
    cols = {"position": bt.position, "turnover": bt.turnover, "gross": bt.gross, "net": bt.net}
    return pd.DataFrame(cols, index=pd.DatetimeIndex(ts.to_numpy()))


def _tradable(table: pd.DataFrame) -> pd.DataFrame:
    return table[np.isfinite(table["next_ret"].to_numpy(np.float64))]


def trading_section(
    bundle: Bundle, table: pd.DataFrame, opts: Any, per_year: float
) -> tuple[dict[str, Any], dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]]:
    """Backtests of every strategy per symbol and pooled; the control's Sharpe null."""
    trade = _tradable(table)
    rng = np.random.default_rng(opts.seed + 2)
    p_shuf = shuffle_within(trade["symbol"].to_numpy(), trade["bull_prob"].to_numpy(), rng)
    per_symbol: dict[str, dict[str, Any]] = {}
    frames: dict[str, list[pd.DataFrame]] = {s: [] for s in STRATEGIES}
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for sym, g in trade.groupby("symbol", sort=False):
        mask = (trade["symbol"] == sym).to_numpy()
        pos = _positions(bundle, g, opts.threshold, p_shuf[mask])
        r = g["next_ret"].to_numpy()
        bts = {k: run_backtest(v, r, opts.cost_bps) for k, v in pos.items()}
        per_symbol[sym] = {k: backtest_stats(bt, per_year) for k, bt in bts.items()}
        curves[sym] = {k: (g["timestamp"].to_numpy(), bt.equity) for k, bt in bts.items()}
        for k, bt in bts.items():
            frames[k].append(_frame(bt, g["timestamp"]))
    pooled = {k: _pool(v) for k, v in frames.items()}
    ts_pooled = pd.concat(frames["raw"], axis=1).index.to_numpy()
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
        "pooled": {k: backtest_stats(bt, per_year) for k, bt in pooled.items()},
        "per_symbol": per_symbol,
        "sharpe_null": _sharpe_null(bundle, trade, opts, per_year, pooled),
    }
    return section, curves


def _sharpe_null(
    bundle: Bundle, trade: pd.DataFrame, opts: Any, per_year: float, pooled: dict[str, Backtest]
) -> dict[str, Any]:
    """Pooled Sharpe of the enhanced strategies over many shuffles of bull_prob."""
    n = min(opts.permutations, 100)  # each one re-runs fusion, Kelly and the backtests
    if n < 1:
        return {"n_permutations": 0}
    rng = np.random.default_rng(opts.seed + 3)
    sym = trade["symbol"].to_numpy()
    groups = list(trade.groupby("symbol", sort=False))
    null: dict[str, list[float]] = {"enhanced": [], "enhanced_kelly": []}
    for _ in range(n):
        p = shuffle_within(sym, trade["bull_prob"].to_numpy(), rng)
        frames: dict[str, list[pd.DataFrame]] = {"control_enhanced": [], "control_kelly": []}
        for s, g in groups:
            pos = _positions(bundle, g, opts.threshold, p[sym == s])
            for k in frames:
                bt = run_backtest(pos[k], g["next_ret"].to_numpy(), opts.cost_bps)
                frames[k].append(_frame(bt, g["timestamp"]))
        null["enhanced"].append(sharpe(_pool(frames["control_enhanced"]).net, per_year))
        null["enhanced_kelly"].append(sharpe(_pool(frames["control_kelly"]).net, per_year))
    out: dict[str, Any] = {"n_permutations": n}
    for k, values in null.items():
        v = np.asarray(values)
        v = v[np.isfinite(v)]
        obs = sharpe(pooled[k].net, per_year)
        out[k] = {
            "observed_sharpe": obs,
            "null_mean": float(v.mean()) if v.size else float("nan"),
            "null_q05": float(np.quantile(v, 0.05)) if v.size else float("nan"),
            "null_q95": float(np.quantile(v, 0.95)) if v.size else float("nan"),
            "p_value": float((1 + (v >= obs).sum()) / (1 + v.size)) if v.size else float("nan"),
        }
    return out
