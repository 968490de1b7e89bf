"""Command-line options shared by the subcommands that build an enhancer."""

from __future__ import annotations

import argparse


def add_enhancer_options(p: argparse.ArgumentParser) -> None:
    """``--device --backend --remote --timeout --accept-version-mismatch --cacert``: what
    ``MLSignalEnhancer`` takes, with the environment variables as defaults."""
    p.add_argument(
        "--device", help="auto, cpu, cuda or cuda:N (default: $ML_INFERENCE_DEVICE or auto)"
    )
    p.add_argument("--backend", help="torch, onnx or auto (default: $ML_INFERENCE_BACKEND or auto)")
    p.add_argument(
        "--remote",
        action="append",
        metavar="URL",
        help="inference server URL; repeat for fail-over (default: $GPU_INFERENCE_API_URL)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        help="remote budget in seconds (default: $GPU_INFERENCE_TIMEOUT or 3)",
    )
    p.add_argument(
        "--accept-version-mismatch",
        action="store_true",
        help="use a server whose model differs from the local bundle",
    )
    p.add_argument("--cacert", help="CA bundle for https servers with a private CA")
