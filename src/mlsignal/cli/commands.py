"""``mlsignal train`` and ``mlsignal enhance``."""

from __future__ import annotations

import argparse
import json
import sys

from mlsignal.errors import DataError


def train(args: argparse.Namespace) -> int:
    """Train and write a bundle; print the out-of-sample metrics table."""
    from mlsignal.training.metrics import format_metrics_table
    from mlsignal.training.pipeline import train_bundle

    def echo(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    result = train_bundle(
        args.data,
        args.out,
        preset=args.preset,
        device=args.device,
        seed=args.seed,
        progress=not args.no_progress and sys.stderr.isatty(),
        shuffle_labels=args.shuffle_labels,
        holdout_bars=args.holdout_bars,
        echo=echo,
        onnx=False if args.no_onnx else None,
    )
    print("out-of-sample walk-forward metrics (stack: meta-learner fitted on earlier folds):")
    print(format_metrics_table(result.metrics))
    print(f"bundle   {result.path}")
    print(f"version  {result.model_version}")
    print(f"contract {result.contract_hash}")
    print(f"took     {result.seconds:.1f} s")
    return 0


def load_bars_arg(spec: str):  # noqa: ANN201 - returns a DataFrame (pandas imported lazily)
    """Bars from a file path or a sample name (the first data set when several are given)."""
    from mlsignal.data import load_dataset

    data = load_dataset(spec)
    if len(data) != 1:
        raise DataError(f"--data must name one data set, got {len(data)}: {', '.join(data)}")
    return next(iter(data.values()))


def enhance(args: argparse.Namespace) -> int:
    """Enhance the last bar of ``--data`` and print it (a table, or JSON)."""
    from mlsignal.enhancer import MLSignalEnhancer

    bars = load_bars_arg(args.data)
    remote = ",".join(args.remote) if args.remote else None
    enhancer = MLSignalEnhancer(
        args.bundle,
        device=args.device,
        backend=args.backend,
        remote_urls=remote,
        timeout_s=args.timeout,
        accept_version_mismatch=args.accept_version_mismatch,
        tls_verify=args.cacert or True,
    )
    try:
        ess, ebs, info = enhancer.enhance_signal(bars, args.ss, args.bs)
    finally:
        enhancer.close()
    if args.json:
        print(json.dumps({"enhanced_ss": ess, "enhanced_bs": ebs, "ml_info": info}))
        return 0
    print(f"bar          {info['bar_ts']}")
    print(f"ss -> ess    {info['rule_ss']:.2f} -> {ess:.2f}")
    print(f"bs -> ebs    {info['rule_bs']:.2f} -> {ebs:.2f}")
    for key in ("bull_prob", "p_lstm", "p_tft", "regime_vol", "regime", "kelly", "kelly_side"):
        value = info[key]
        print(f"{key:<12} {value:.4f}" if isinstance(value, float) else f"{key:<12} {value}")
    for key in ("source", "endpoint", "attempts", "fallback_reason", "device", "backend"):
        if info.get(key):
            print(f"{key:<12} {info[key]}")
    print(f"{'model':<12} {info['model_version']}")
    print(f"latency_ms   {info['latency_ms']:.2f}")
    return 0


def export_onnx(args: argparse.Namespace) -> int:
    """Export model.onnx into the bundle and print what was recorded."""
    from mlsignal.onnx_export import export_onnx as run_export

    section = run_export(args.bundle, opset=args.opset)
    print(
        f"model.onnx written to {args.bundle} (opset {section['opset']}, checked with "
        f"onnxruntime {section['onnxruntime_version']}, worst |diff| "
        f"{section['max_abs_diff']:.2g} vs torch)"
    )
    return 0


def bench(args: argparse.Namespace) -> int:
    """Run the benchmarks and print a table (or JSON)."""
    from mlsignal.bench.run import (
        FULL_BATCHES,
        QUICK_BATCHES,
        BenchConfig,
        available_paths,
        format_table,
        run_bench,
    )
    from mlsignal.bundle import load_bundle

    batches = QUICK_BATCHES if args.quick else FULL_BATCHES
    if args.batches:
        try:
            batches = tuple(int(b) for b in args.batches.split(",") if b.strip())
        except ValueError:
            raise DataError(
                f"--batches must be comma-separated integers, got {args.batches!r}"
            ) from None
        if not batches or min(batches) < 1:
            raise DataError(f"--batches must be positive integers, got {args.batches!r}")
    cfg = BenchConfig(batches, 0.3 if args.quick else 1.0, tuple(available_paths()))
    result = run_bench(load_bundle(args.bundle), cfg)
    print(json.dumps(result.to_dict()) if args.json else format_table(result))
    return 0
