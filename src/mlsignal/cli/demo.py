"""``mlsignal demo`` (what ``make run`` runs): train if needed, replay bars, summarise."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from mlsignal.cli.options import cli_settings


def _ensure_bundle(args: argparse.Namespace) -> None:
    if (Path(args.bundle) / "manifest.json").is_file():
        print(f"using bundle {args.bundle}", flush=True)
        return
    from mlsignal.training.pipeline import train_bundle

    print(f"no bundle at {args.bundle}: training one ({args.preset} preset) ...", flush=True)
    result = train_bundle(
        args.data,
        args.bundle,
        preset=args.preset,
        device=args.device or "auto",
        progress=sys.stderr.isatty(),
        holdout_bars=args.bars,
        echo=lambda m: print(f"  {m}", flush=True),
    )
    print(f"trained in {result.seconds:.0f} s (last {args.bars} bars held out)", flush=True)


def _replay(enhancer: Any, bars: Any, n: int) -> list[dict[str, Any]]:
    """Feed the last ``n`` bars one at a time, as a live loop would."""
    from mlsignal.rules import last_rule_scores

    need = enhancer.min_bars
    rows = []
    for end in range(max(need, len(bars) - n), len(bars)):
        window = bars.iloc[end + 1 - need : end + 1]
        t0 = time.perf_counter()
        ss, bs = last_rule_scores(window)
        ess, ebs, info = enhancer.enhance_signal(window, ss, bs)
        rows.append(
            {
                **info,
                "close": float(window["close"].iloc[-1]),
                "ess": ess,
                "ebs": ebs,
                "bar_ms": (time.perf_counter() - t0) * 1e3,
            }
        )
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'bar':<11}{'close':>10}{'ss':>7}{'bs':>7}{'bull_p':>8}{'regime':>8}"
        f"{'vol':>8}{'kelly':>7}{'side':>6}{'e_ss':>7}{'e_bs':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['bar_ts'][:10]:<11}{r['close']:>10.2f}{r['rule_ss']:>7.1f}{r['rule_bs']:>7.1f}"
            f"{r['bull_prob']:>8.3f}{r['regime']:>8}{r['regime_vol']:>8.4f}{r['kelly']:>7.3f}"
            f"{r['kelly_side']:>6}{r['ess']:>7.1f}{r['ebs']:>7.1f}"
        )
    return "\n".join(lines)


def _summary(rows: list[dict[str, Any]]) -> str:
    bar_ms = np.array([r["bar_ms"] for r in rows])
    model_ms = np.array([r["latency_ms"] for r in rows])
    p = np.array([r["bull_prob"] for r in rows])
    regimes = {k: sum(r["regime"] == k for r in rows) for k in ("low", "normal", "high")}
    return (
        f"bars {len(rows)}  bull_prob mean {p.mean():.3f} (min {p.min():.3f}, max {p.max():.3f})  "
        f"regimes {regimes}\n"
        f"latency per bar: enhance_signal median {np.median(model_ms):.2f} ms, "
        f"p99 {np.percentile(model_ms, 99):.2f} ms; with rule scoring median "
        f"{np.median(bar_ms):.2f} ms"
    )


def demo(args: argparse.Namespace) -> int:
    """Train a quick bundle if missing, replay ``--bars`` bars per symbol, print a summary."""
    from mlsignal.data import load_dataset
    from mlsignal.enhancer import MLSignalEnhancer
    from mlsignal.training.metrics import format_metrics_table

    _ensure_bundle(args)
    enhancer = MLSignalEnhancer(args.bundle, device=args.device, settings=cli_settings(args))
    manifest = enhancer.bundle.manifest
    print(
        f"\nmodel {enhancer.bundle.model_version} on {enhancer.runtime.device} "
        f"({enhancer.runtime.backend}); trained on {manifest['training']['symbols']} "
        f"{manifest['training']['span'][0][:10]}..{manifest['training']['span'][1][:10]}"
    )
    print("out-of-sample walk-forward metrics:")
    print(format_metrics_table(manifest["metrics"]))
    if "verdict" in manifest:
        print(f"verdict: {manifest['verdict']['verdict'].upper()}: {manifest['verdict']['why']}")
        print(
            f"base rate {enhancer.bundle.fusion.base_rate:.4f}: bull_prob there changes "
            "nothing (scores as the rules gave them, Kelly flat)"
        )
    trained_until = manifest["training"]["span"][1]
    for symbol, bars in load_dataset(args.data).items():
        rows = _replay(enhancer, bars, args.bars)
        oos = sum(r["bar_ts"] > trained_until for r in rows)
        print(
            f"\n{symbol}: last {args.rows} of {len(rows)} replayed bars "
            f"({oos} of them after the training span: out of sample)"
        )
        print(_table(rows[-args.rows :]))
        print(_summary(rows))
    if args.remote_bars > 0:
        from mlsignal.cli.demo_remote import remote_demo

        bars = next(iter(load_dataset(args.data).values()))
        print()
        print(remote_demo(args.bundle, bars, args.remote_bars, enhancer))
    print(_next_steps(args.bundle))
    return 0


def _next_steps(bundle: str) -> str:
    """What to try after the demo, as commands that work on the bundle it used."""
    return "\n".join(
        [
            "",
            "next:",
            f"  mlsignal evaluate --bundle {bundle} --out reports/quick   "
            "# is it any good? (the held-out bars)",
            f"  mlsignal serve --bundle {bundle}                          "
            "# the HTTP API on 127.0.0.1:8000",
            f"  mlsignal live --bundle {bundle} --source replay:sp500 --db signals.db",
            "  make test                                                  # the whole suite",
        ]
    )
