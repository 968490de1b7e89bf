"""``mlsignal evaluate``: an out-of-sample report (metrics, plots, backtest, controls)."""

from __future__ import annotations

import argparse

from mlsignal.cli.options import add_bundle_option


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``evaluate`` on the ``mlsignal`` subcommand parser."""
    p = sub.add_parser(
        "evaluate",
        help="out-of-sample report of a bundle on a data set (HTML, PNG, metrics.json)",
        description="Enhance every out-of-sample bar of the data (after the bundle's training "
        "span, purged) exactly as enhance_signal would, then report AUC, IC, Brier, log loss, "
        "reliability and a bull_prob histogram against the triple-barrier labels and forward "
        "returns, beside logistic and gradient-boosting baselines fitted on the bundle's "
        "training data, with block permutation nulls and a verdict in words (skill / no skill "
        "detected / worse than base rate); how far the model moved the scores; and a "
        "cost-aware backtest of raw against enhanced signals, each symbol annualised by its own "
        "bar interval, beside a shuffled control. Refuses bars inside the training period "
        "unless --allow-in-sample.",
    )
    add_bundle_option(p)
    p.add_argument(
        "--data",
        help="sample names and/or CSV/Parquet files, comma separated (default: the data set "
        "the bundle was trained on, whose held-out tail is then evaluated)",
    )
    p.add_argument("--out", required=True, help="report directory to write")
    p.add_argument(
        "--period",
        choices=["after", "before"],
        default="after",
        help="out-of-sample bars after the training span (forward, default) or before it",
    )
    p.add_argument(
        "--allow-in-sample",
        action="store_true",
        help="evaluate bars inside the training period too (the report says: not honest)",
    )
    p.add_argument("--start", help="first bar date to evaluate (e.g. 2018-01-01)")
    p.add_argument("--end", help="last bar date to evaluate")
    p.add_argument("--last", type=int, help="evaluate only the last N selected bars per symbol")
    p.add_argument(
        "--threshold",
        type=float,
        default=10.0,
        help="backtest: long when bs - ss > T, short when ss - bs > T (default: %(default)s)",
    )
    p.add_argument(
        "--cost-bps",
        type=float,
        default=5.0,
        help="cost per unit of turnover, basis points (default: %(default)s)",
    )
    p.add_argument(
        "--bars-per-year",
        type=float,
        help="for Sharpe, every symbol alike (default: each symbol measured from its own bars)",
    )
    p.add_argument(
        "--permutations",
        type=int,
        default=200,
        help="shuffles for the no-skill null distributions (default: %(default)s)",
    )
    p.add_argument(
        "--null-block",
        type=int,
        metavar="BARS",
        help="bars per block of the permutation nulls, at least the label horizon (default: "
        "max(20, 4 x horizon))",
    )
    p.add_argument(
        "--allow-timeframe-mismatch",
        action="store_true",
        help="score bars of another interval than the bundle's training data (the report "
        "warns: the model, GARCH and Kelly were fitted on the training interval)",
    )
    p.add_argument("--bins", type=int, default=10, help="reliability bins (default: %(default)s)")
    p.add_argument("--blocks", type=int, default=4, help="time blocks (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffles (default: 0)")
    p.add_argument("--batch-size", type=int, default=256, help="bars per forward pass")
    p.add_argument(
        "--device", help="auto, cpu, cuda or cuda:N (default: $ML_INFERENCE_DEVICE or auto)"
    )
    p.add_argument("--backend", help="torch, onnx or auto (default: $ML_INFERENCE_BACKEND)")
    p.set_defaults(func=evaluate)


def evaluate(args: argparse.Namespace) -> int:
    """Run the evaluation and print where the report went and its key numbers."""
    from mlsignal.evaluate import EvalOptions, evaluate_bundle

    opts = EvalOptions(
        period=args.period,
        allow_in_sample=args.allow_in_sample,
        start=args.start,
        end=args.end,
        last=args.last,
        threshold=args.threshold,
        cost_bps=args.cost_bps,
        bars_per_year=args.bars_per_year,
        seed=args.seed,
        permutations=args.permutations,
        block=args.null_block,
        bins=args.bins,
        blocks=args.blocks,
        batch_size=args.batch_size,
        device=args.device,
        backend=args.backend,
        allow_timeframe_mismatch=args.allow_timeframe_mismatch,
    )
    result = evaluate_bundle(args.bundle, args.data, args.out, opts, echo=print)
    print(summary(result.metrics))
    print(f"report: {result.out / 'index.html'} ({result.seconds:.1f} s)")
    print(verdict_lines(result.metrics))
    return 0


def summary(m: dict) -> str:
    """A few lines: honesty status, pooled AUC/IC against their block nulls and Brier per
    model, how far the model moved the scores, pooled Sharpe per strategy."""
    sel, cls, bt = m["selection"], m["classification"], m["backtest"]
    lines = [f"status: {sel['status']}" + ("" if sel["honest"] else "  (NOT a forward test)")]
    lines += [f"warning: {w}" for w in sel["warnings"]]
    nulls = cls["nulls"]
    lines.append(
        f"nulls: {nulls['method']} ({nulls['n_permutations']} permutations; p-values per model, "
        f"not corrected for testing {len(nulls['auc'])} of them)"
    )
    for name, v in cls["pooled"].items():
        auc, ic = nulls["auc"][name], nulls["ic"][name]
        lines.append(
            f"{name:<10} n={int(v['n'])} auc={v['auc']:.4f} (null 5-95% {_band(auc)}, "
            f"p={_num(auc['p_value'], '.3f')}) ic={_num(v['ic'], '+.4f')} (null {_band(ic)}, "
            f"p={_num(ic['p_value'], '.3f')}) brier={v['brier']:.4f} "
            f"(base {v['brier_base']:.4f})"
        )
    f = m["fusion_effect"]["pooled"]
    lines.append(
        f"fusion: mean |enhanced-raw| bs {f['mean_abs_delta_bs']:.2f} ss "
        f"{f['mean_abs_delta_ss']:.2f} points; kelly flat {f['kelly_flat']:.0%} long "
        f"{f['kelly_long']:.0%} short {f['kelly_short']:.0%}; mean bull_prob "
        f"{f['mean_bull_prob']:.4f} vs base rate {f['base_rate']:.4f}"
    )
    for name, s in bt["pooled"].items():
        lines.append(
            f"{name:<17} sharpe={_num(s['sharpe'], '+.2f')} return={s['total_return']:+.2%} "
            f"maxdd={s['max_drawdown']:.2%} hit={_num(s['hit_rate'], '.3f')} "
            f"turnover/yr={s['turnover_per_year']:.1f}"
            + ("  (never in the market)" if s["turnover_per_year"] == 0 else "")
        )
    return "\n".join(lines)


def _num(v: float | None, spec: str) -> str:
    """``v`` formatted, or ``n/a`` where there is none (a strategy that never held a position
    has no Sharpe ratio and no hit rate)."""
    return "n/a" if v is None or v != v else format(v, spec)


def verdict_lines(m: dict) -> str:
    """The verdict in words, its reason and its caveats (printed last)."""
    v = m["verdict"]
    lines = [f"VERDICT: {v['verdict']}", v["plain"], f"why ({v['model']}, pooled): {v['why']}"]
    lines += [f"caveat: {c}" for c in v["caveats"]]
    return "\n".join(lines)


def _num(x: float | None, fmt: str) -> str:
    return "n/a" if x is None or x != x else format(x, fmt)


def _band(t: dict) -> str:
    return f"{_num(t['null_q05'], '.3f')}..{_num(t['null_q95'], '.3f')}"
