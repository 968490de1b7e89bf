"""``mlsignal export-triton``: write a Triton model repository for a bundle's ONNX model."""

from __future__ import annotations

import argparse
import json

from mlsignal.cli.options import DEFAULT_BUNDLE, add_bundle_option


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``export-triton``."""
    p = sub.add_parser(
        "export-triton",
        help="write a Triton model repository (config.pbtxt + model.onnx) for a bundle",
        description="Write REPO/NAME/VERSION/model.onnx and REPO/NAME/config.pbtxt (ONNX Runtime "
        "backend, signature read from the model, dynamic batching and instances chosen from "
        "docs/BENCHMARKS.md). VERSION = int(contract_hash[:15], 16). Atomic; refuses to "
        "replace other versions without --force (--add serves them side by side).",
    )
    add_bundle_option(
        p, f"bundle directory with model.onnx (default: $MLSIGNAL_BUNDLE, else {DEFAULT_BUNDLE})"
    )
    p.add_argument("--out", required=True, metavar="REPO", help="model repository directory")
    p.add_argument("--name", default="mlsignal", help="model name (default: %(default)s)")
    p.add_argument(
        "--kind", default="gpu", choices=["gpu", "cpu"], help="instance kind (default: gpu)"
    )
    p.add_argument("--max-batch", type=int, help="max_batch_size (default: gpu 1024, cpu 256)")
    p.add_argument("--instances", type=int, help="model instances per device (default: 1)")
    p.add_argument("--queue-delay-us", type=int, help="max_queue_delay_microseconds (500)")
    p.add_argument(
        "--add", action="store_true", help="keep the versions already there (serve them all)"
    )
    p.add_argument("--force", action="store_true", help="replace what is there")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_handler)


def _handler(args: argparse.Namespace) -> int:
    from mlsignal.triton_export import export_triton

    summary = export_triton(
        args.bundle, args.out, name=args.name, kind=args.kind, max_batch=args.max_batch,
        instances=args.instances, queue_delay_us=args.queue_delay_us, add=args.add,
        force=args.force,
    )  # fmt: skip
    if args.json:
        print(json.dumps(summary, sort_keys=True))
        return 0
    print(f"wrote {summary['model_dir']}/{summary['version']}/model.onnx")
    print(f"wrote {summary['config']}")
    print(f"model_version {summary['model_version']}  contract_hash {summary['contract_hash']}")
    print(
        f"triton version {summary['version']} (serving {summary['versions']}); "
        f"kind {summary['kind']}, max_batch_size {summary['max_batch_size']}, preferred "
        f"{summary['preferred_batch_size']}, queue delay {summary['max_queue_delay_microseconds']}"
        f" us, {summary['instances']} instance(s)"
    )
    return 0
