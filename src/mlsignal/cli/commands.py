"""``mlsignal train`` and ``mlsignal enhance``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from mlsignal.cli.options import cli_settings
from mlsignal.errors import DataError

if TYPE_CHECKING:
    from mlsignal.bench.paths import PathsConfig
    from mlsignal.bench.server_bench import ServerBenchConfig


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
        skill_alpha=args.skill_alpha,
    )
    print(
        "out-of-sample walk-forward metrics (stack: meta-learner fitted on earlier folds; "
        "logistic, boosting: baselines on the same windows and folds; ic: rank correlation "
        "with the forward return):"
    )
    print(format_metrics_table(result.metrics))
    print(f"verdict  {result.verdict['verdict'].upper()}: {result.verdict['why']}")
    cal = result.calibration
    print(
        f"shipped  stack + calibration on {cal['segment']['n']} windows "
        f"{cal['segment']['first'][:10]}..{cal['segment']['last'][:10]} that the final "
        f"models never saw; base rate {cal['base_rate']:.4f}; map {cal['map']}"
    )
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
        settings=cli_settings(args),
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
    from mlsignal.bundle import load_bundle
    from mlsignal.onnx_export import export_onnx as run_export

    section = run_export(args.bundle, opset=args.opset)
    bundle = load_bundle(args.bundle)
    print(
        f"model.onnx written to {args.bundle} (opset {section['opset']}, checked with "
        f"onnxruntime {section['onnxruntime_version']}, worst |diff| "
        f"{section['max_abs_diff']:.2g} vs torch); model version {bundle.model_version}, "
        f"contract hash {bundle.contract_hash}"
    )
    return 0


def bench(args: argparse.Namespace) -> int:
    """Run the benchmarks and print a table (or JSON); ``--plot`` writes the PNG."""
    from mlsignal.bench.machine import load_warning
    from mlsignal.bench.run import (
        FULL_BATCHES,
        QUICK_BATCHES,
        BenchConfig,
        available_paths,
        format_table,
        run_bench,
    )
    from mlsignal.bundle import load_bundle

    if (busy := load_warning()) is not None:
        print(busy, file=sys.stderr, flush=True)
    batches = QUICK_BATCHES if args.quick else FULL_BATCHES
    if args.batches:
        batches = _positive_ints(args.batches, "--batches")
    server = _server_config(args) if args.server else None
    serving = _paths_config(args) if args.paths else None
    cfg = BenchConfig(
        batches, 0.3 if args.quick else 1.0, tuple(available_paths()), server=server,
        serving=serving,
    )  # fmt: skip

    def echo(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = run_bench(load_bundle(args.bundle), cfg, echo)
    print(json.dumps(result.to_dict()) if args.json else format_table(result))
    if args.plot:
        from mlsignal.bench.plot import plot_forward

        written = plot_forward(result.to_dict(), args.plot)
        print(f"plot: {written}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _positive_ints(text: str, flag: str) -> tuple[int, ...]:
    """``"1,16"`` -> ``(1, 16)``, or a :class:`DataError` naming ``flag``."""
    try:
        values = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise DataError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise DataError(f"{flag} must be positive integers, got {text!r}")
    return values


def _paths_config(args: argparse.Namespace) -> PathsConfig:
    """The serving paths' settings from ``--quick``, ``--serve-workers``, ``--time-limit``..."""
    from dataclasses import replace

    from mlsignal.bench.paths import QUICK_PATHS, PathsConfig

    for flag in ("serve_workers", "load_processes"):
        if getattr(args, flag) < 1:
            raise DataError(f"--{flag.replace('_', '-')} must be at least 1")
    cfg = QUICK_PATHS if args.quick else PathsConfig()
    cfg = replace(cfg, workers=args.serve_workers, load_processes=args.load_processes)
    if args.time_limit is not None and args.time_limit > 0:
        cfg = replace(cfg, time_limit_s=args.time_limit)
    return cfg


def _server_config(args: argparse.Namespace) -> ServerBenchConfig:
    """The server benchmarks' settings from ``--quick``, ``--clients``, ``--requests``..."""
    from dataclasses import replace

    from mlsignal.bench.server_bench import QUICK_SERVER, ServerBenchConfig

    cfg = QUICK_SERVER if args.quick else ServerBenchConfig()
    cfg = replace(cfg, litserve=args.litserve)
    if args.clients:
        cfg = replace(cfg, clients=_positive_ints(args.clients, "--clients"))
    if args.requests is not None:
        if args.requests < 1:
            raise DataError(f"--requests must be at least 1, got {args.requests}")
        cfg = replace(cfg, requests=args.requests, single_requests=max(20, args.requests // 4))
    if args.time_limit is not None:
        if not args.time_limit > 0:
            raise DataError(
                f"--time-limit must be a positive number of seconds, got {args.time_limit}"
            )
        cfg = replace(cfg, time_limit_s=args.time_limit)
    return cfg
