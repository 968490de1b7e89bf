"""``mlsignal``: train, enhance, demo, doctor. Errors print one line and exit 2."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mlsignal import __version__
from mlsignal.cli.options import (
    DEFAULT_DATA,
    add_bundle_option,
    add_enhancer_options,
    add_server_limit_options,
    add_timeframe_option,
    resolve_bundle,
)
from mlsignal.errors import ConfigError, MLSignalError


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the LSTM + TFT + stack on real data and write a bundle",
        description="Train on sample data sets (sp500, nasdaq) or CSV/Parquet files with "
        "purged walk-forward validation, print the out-of-sample metrics, write a bundle.",
    )
    p.add_argument(
        "--data",
        default=DEFAULT_DATA,
        help="sample names and/or files, comma separated (default: %(default)s)",
    )
    p.add_argument("--out", required=True, help="bundle directory to write (atomically)")
    p.add_argument(
        "--preset",
        default="quick",
        choices=["tiny", "quick", "full"],
        help="quick: minutes on 2 CPU cores; full: for a GPU box; tiny: tests",
    )
    p.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (deterministic on CPU)")
    p.add_argument(
        "--shuffle-labels",
        action="store_true",
        help="control run on permuted labels: must show no skill",
    )
    p.add_argument(
        "--holdout-bars",
        type=int,
        default=None,
        help="keep the last N bars of each symbol out of training, for `mlsignal evaluate` "
        "(default: 10%% of the shortest symbol's bars; 0: train on everything)",
    )
    p.add_argument(
        "--skill-alpha",
        type=_probability,
        default=0.05,
        help="the calibration segment must show ranking skill at this level (block "
        "permutation null) for a fitted calibration map to ship; otherwise bull_prob is the "
        "base rate on every bar, which leaves scores unchanged; 1 always ships the fitted map "
        "(default: %(default)s)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-onnx", action="store_true", help="do not export model.onnx")
    p.set_defaults(func=_cmd_train)


def _probability(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be within (0, 1], got {text}")
    return v


def _add_enhance(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "enhance",
        help="enhance the last bar of a data file and print the result",
        description="Enhance the last bar of CSV/Parquet bars (or a sample name). Without "
        "--ss/--bs the built-in MACD rule scores are used.",
    )
    add_bundle_option(p)
    p.add_argument("--data", required=True, help="CSV/Parquet file of OHLCV bars, or a sample name")
    p.add_argument("--ss", type=float, help="your sell score, 0..100")
    p.add_argument("--bs", type=float, help="your buy score, 0..100")
    add_enhancer_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_enhance)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train a quick bundle if needed, then replay recent bars through rules + models",
        description="What `make run` runs: trains a quick bundle if none exists, replays the "
        "last bars of the sample data bar by bar and prints a summary.",
    )
    add_bundle_option(p)
    p.add_argument("--data", default=DEFAULT_DATA, help="data sets (default: %(default)s)")
    p.add_argument(
        "--bars", type=int, default=300, help="bars to replay per symbol (default: %(default)s)"
    )
    p.add_argument(
        "--rows", type=int, default=12, help="rows of the table per symbol (default: %(default)s)"
    )
    p.add_argument(
        "--device", help="auto, cpu, cuda or cuda:N (default: $ML_INFERENCE_DEVICE or auto)"
    )
    p.add_argument(
        "--preset",
        default="quick",
        choices=["tiny", "quick", "full"],
        help="preset if training is needed",
    )
    p.add_argument(
        "--remote-bars",
        type=int,
        default=60,
        help="bars to send through a loopback server that is killed half way; 0 skips it "
        "(default: %(default)s)",
    )
    p.set_defaults(func=_cmd_demo)


def _add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor",
        help="report torch, CUDA, GPUs, ONNX Runtime, what `auto` picks; advise; time the paths",
        description="Report the inference environment of this machine, advise on driver, "
        "CUDA, torch and ONNX Runtime, and time the bundle on every path here.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    from mlsignal.cli.doctor import add_options  # cheap: no torch, no onnxruntime

    add_options(p)
    p.set_defaults(func=_cmd_doctor)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a bundle over HTTP (v1 JSON API and KServe V2), with batching and API keys",
        description="The inference server for trading hosts: POST /v1/enhance, /v1/predict, "
        "GET /v1/models, /healthz, /readyz, /metrics and the Open Inference Protocol (V2).",
    )
    add_bundle_option(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument(
        "--grpc-port",
        type=int,
        metavar="PORT",
        help="also serve the KServe V2 gRPC API (inference.GRPCInferenceService, as "
        "tritonclient.grpc calls it) on this port, same host, keys and TLS (default: off)",
    )
    p.add_argument(
        "--api-key-file",
        help="file with one API key per line (or set MLSIGNAL_API_KEYS, comma separated)",
    )
    p.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback address without API keys"
    )
    p.add_argument("--ssl-certfile", help="TLS certificate (PEM)")
    p.add_argument("--ssl-keyfile", help="TLS private key (PEM)")
    p.add_argument(
        "--device", help="auto, cpu, cuda or cuda:N (default: $ML_INFERENCE_DEVICE or auto)"
    )
    p.add_argument("--backend", help="torch, onnx or auto (default: $ML_INFERENCE_BACKEND or auto)")
    add_server_limit_options(p)
    add_timeframe_option(p)
    p.add_argument(
        "--engine",
        default="uvicorn",
        choices=["uvicorn", "ray"],
        help="uvicorn: this process; ray: a Ray Serve application, same API (default: uvicorn)",
    )
    g = p.add_argument_group("Ray Serve (--engine ray; needs mlsignal[ray])")
    g.add_argument("--replicas", type=int, help="model replicas, fixed (default: 1)")
    g.add_argument("--autoscale", metavar="MIN:MAX", help="autoscale model replicas in MIN..MAX")
    g.add_argument(
        "--gpus-per-replica", type=float, help="GPUs per model replica, fractions allowed (0)"
    )
    g.add_argument("--cpus-per-replica", type=float, help="CPUs per model replica (default: 1)")
    g.add_argument(
        "--ingress-replicas", type=int, help="HTTP ingress replicas (features, fusion; 1)"
    )
    g.add_argument(
        "--ingress-calls",
        type=int,
        help="calls each ingress replica keeps out to the model replicas; requests arriving "
        "meanwhile go together in the next call (default: model replicas / ingress replicas, "
        "rounded up)",
    )
    g.add_argument(
        "--target-ongoing", type=float, help="autoscaling target of calls per replica (32)"
    )
    g.add_argument(
        "--address", help="Ray cluster to join (e.g. auto, ray://head:10001); default: local"
    )
    g.add_argument("--ray-num-cpus", type=int, help="CPUs of a local Ray cluster (default: fit)")
    g.add_argument("--app-name", help="Serve application name (default: mlsignal)")
    g.add_argument("--route-prefix", help="URL prefix of the application (default: /)")
    p.set_defaults(func=_cmd_serve)


def _add_export_onnx(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-onnx",
        help="export the bundle's model to model.onnx (checked with ONNX Runtime) in the bundle",
        description="Export the SignalModel to ONNX with a dynamic batch axis, check it against "
        "PyTorch with ONNX Runtime, and add it to the bundle's manifest. The contract hash covers "
        "model.onnx, so the bundle gets a new contract hash and model version (the same when "
        "the graph's bytes are unchanged). Also upgrades a format-1 bundle.",
    )
    add_bundle_option(p)
    p.add_argument(
        "--opset", type=int, help="ONNX opset (default: the exporter's choice, recorded)"
    )
    p.set_defaults(func=_cmd_export_onnx)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure the model, enhance_signal and the server against baselines, on this machine",
        description="Median and p99 latency and windows/s of runtime.predict at several batch "
        "sizes and of enhance_signal, for torch and onnx on cpu and cuda (what is available), "
        "with speedup_vs_torch_eager and speedup_vs_onnx_default (ONNX Runtime, default "
        "settings). Then `mlsignal serve` on loopback under a bounded load of our own "
        "(single-client p50/p99, throughput with concurrent clients, JSON serialisation cost) "
        "and LitServe serving the same model under the same load (speedup_vs_litserve). "
        "--quick: batches 1, 16, 256 and small request counts (under 30 s on 2 cores).",
    )
    add_bundle_option(p)
    p.add_argument(
        "--quick",
        action="store_true",
        help="batches 1, 16, 256, a short budget, few server requests, 16 clients only",
    )
    p.add_argument("--batches", help="comma-separated batch sizes (default: 1,16,256,1024,4096)")
    p.add_argument(
        "--server",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="benchmark `mlsignal serve` on loopback (default: on)",
    )
    p.add_argument(
        "--litserve",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="benchmark LitServe serving the same model under the same load (default: on)",
    )
    p.add_argument(
        "--clients", help="concurrent clients of the throughput runs, comma-separated (16,64)"
    )
    p.add_argument(
        "--requests",
        type=int,
        help="requests per throughput run (default 2000, quick 100); the single-client run "
        "sends a quarter of it (at least 20)",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        help="seconds at most per load run (default 60, quick 2.5)",
    )
    p.add_argument(
        "--paths",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the serving paths under their loads: V2 binary windows (64 per request, 16 "
        "clients), one window per request (256 connections), bars (64 symbols per request), "
        "a bar-close burst (16 hosts x 125 symbols), with server CPU and GPU busy %% "
        "(default: on; --no-server skips the single-symbol server and LitServe runs only)",
    )
    p.add_argument(
        "--serve-workers",
        type=int,
        default=1,
        help="server processes (mlsignal serve --workers) for the serving paths (default: 1)",
    )
    p.add_argument(
        "--load-processes",
        type=int,
        default=1,
        help="load generator processes for the serving paths (default: 1)",
    )
    p.add_argument("--plot", metavar="FILE.png", help="write latency and windows/s vs batch")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_bench)


#: Subcommands that live in their own module: each module defines ``add_parser(sub)`` and keeps
#: heavy imports inside its handler, so building the parser stays cheap.
COMMAND_MODULES: tuple[str, ...] = (
    "mlsignal.cli.evaluate",
    "mlsignal.cli.live",
    "mlsignal.cli.export_triton",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="mlsignal",
        description="ML-enhanced trading signals: LSTM + TFT + stacking, GARCH regime, Kelly.",
    )
    parser.add_argument("--version", action="version", version=f"mlsignal {__version__}")
    _add_log_options(parser, None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = (_add_train, _add_enhance, _add_serve, _add_export_onnx, _add_bench, _add_demo)
    for add in commands:
        add(sub)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    _add_doctor(sub)
    for command in sub.choices.values():  # also after the subcommand: `mlsignal serve --log-level`
        _add_log_options(command, argparse.SUPPRESS)
    return parser


def _add_log_options(p: argparse.ArgumentParser, default: str | None) -> None:
    """``--log-level`` and ``--log-json``; a subcommand's copy has no default of its own
    (``SUPPRESS``), so that a value given before the subcommand is kept."""
    p.add_argument(
        "--log-level",
        default="WARNING" if default is None else default,
        help="DEBUG, INFO, WARNING (default), ERROR",
    )
    p.add_argument(
        "--log-json",
        action="store_true",
        default=False if default is None else default,
        help="log one JSON object per line",
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from mlsignal.cli.commands import train

    return train(args)


def _cmd_enhance(args: argparse.Namespace) -> int:
    from mlsignal.cli.commands import enhance

    return enhance(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from mlsignal.cli.serve_ray import maybe_serve_ray

    if (code := maybe_serve_ray(args)) is not None:  # --engine ray: a Ray Serve application
        return code
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    if args.workers > 1:  # a supervisor of N server processes on one socket
        from mlsignal.cli.serve_workers import supervise

        return supervise(args)
    from mlsignal.cli.serve import serve

    return serve(args)


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from mlsignal.cli.commands import export_onnx

    return export_onnx(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from mlsignal.cli.commands import bench

    return bench(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from mlsignal.cli.demo import demo

    return demo(args)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from mlsignal.cli.doctor import doctor

    return doctor(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    from mlsignal.logs import configure_logging

    try:
        configure_logging(args.log_level, args.log_json)
        resolve_bundle(args)
        return int(args.func(args) or 0)
    except MLSignalError as e:
        print(f"mlsignal {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mlsignal {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
