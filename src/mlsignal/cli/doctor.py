"""``mlsignal doctor``: what this machine offers for inference."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Any

from mlsignal.config import DEVICE_ENV


def _torch_report() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"torch": None}
    cuda = torch.cuda.is_available()
    gpus = []
    for i in range(torch.cuda.device_count() if cuda else 0):
        prop = torch.cuda.get_device_properties(i)
        gpus.append(
            {
                "index": i,
                "name": prop.name,
                "memory_gib": round(prop.total_memory / 2**30, 1),
                "capability": f"{prop.major}.{prop.minor}",
            }
        )
    return {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpus": gpus,
        "torch_threads": torch.get_num_threads(),
    }


def _onnx_report() -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError:
        return {"onnxruntime": None, "onnx_providers": []}
    return {"onnxruntime": ort.__version__, "onnx_providers": ort.get_available_providers()}


def collect() -> dict[str, Any]:
    """Everything doctor reports, as a dict."""
    from mlsignal.config import resolve_device
    from mlsignal.errors import ConfigError

    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        **_torch_report(),
        **_onnx_report(),
        "ML_INFERENCE_DEVICE": os.environ.get(DEVICE_ENV) or "(unset: auto)",
    }
    try:
        report["auto_picks"] = resolve_device("auto")
        report["configured_device"] = resolve_device(None)
    except ConfigError as e:
        report["configured_device"] = f"error: {e}"
    return report


def doctor(args: argparse.Namespace) -> int:
    """Print the report; exit 0 (a wrong ML_INFERENCE_DEVICE is shown, not raised)."""
    report = collect()
    if args.json:
        print(json.dumps(report))
        return 0
    for key, value in report.items():
        if key == "gpus":
            value = (
                ", ".join(
                    f"[{g['index']}] {g['name']} {g['memory_gib']} GiB sm{g['capability']}"
                    for g in value
                )
                or "none"
            )
        elif isinstance(value, list):
            value = ", ".join(value) or "none"
        print(f"{key:<20} {value}")
    return 0
