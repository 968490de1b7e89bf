"""What this machine offers for inference: Python, torch, CUDA, GPUs, ONNX Runtime,
``nvidia-smi``'s view, and what the ``auto`` settings pick here.

Machine facts shared by ``mlsignal doctor`` (which advises on them) and the benchmarks (which
record them beside every result). Nothing here imports torch or onnxruntime at module level.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from mlsignal.config import BACKEND_ENV, DEVICE_ENV

#: A 1-minute load average above this share of the CPUs means other work competes.
BUSY_LOAD_SHARE = 0.5


def load_warning(cpus: int | None = None, load1: float | None = None) -> str | None:
    """A sentence when other processes keep this machine's CPUs busy (timings then measure
    the contention, not the code), else ``None``. Reads ``os.getloadavg()`` (Unix) and the
    CPUs this process may use."""
    if cpus is None:
        affinity = getattr(os, "sched_getaffinity", None)
        cpus = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    if load1 is None:
        try:
            load1 = os.getloadavg()[0]
        except OSError:  # not available here
            return None
    if load1 <= BUSY_LOAD_SHARE * cpus:
        return None
    return (
        f"warning: load average {load1:.1f} on {cpus} CPU(s): other processes are using the "
        "CPUs, so the timings below measure the contention too; rerun on an idle machine"
    )


@dataclass(frozen=True)
class NvidiaInfo:
    """What ``nvidia-smi`` says: driver version, the newest CUDA it supports, GPU names."""

    driver: str | None
    cuda: str | None
    gpus: tuple[str, ...]

    def describe(self) -> str:
        """E.g. ``1 NVIDIA GPU (NVIDIA H100 80GB HBM3), driver 580.95, CUDA <= 13.0``."""
        names = ", ".join(dict.fromkeys(self.gpus)) or "no GPU listed"
        return (
            f"{len(self.gpus)} NVIDIA GPU(s) ({names}), driver {self.driver or '?'}, "
            f"CUDA <= {self.cuda or '?'}"
        )


def parse_nvidia_smi(header: str, listing: str) -> NvidiaInfo:
    """Parse plain ``nvidia-smi`` output (its header) and ``nvidia-smi -L`` (one GPU a line)."""
    driver = re.search(r"Driver Version:\s*([\d.]+)", header)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header)
    gpus = tuple(
        m.group(1).strip()
        for m in re.finditer(r"^GPU \d+:\s*(.+?)\s*(?:\(UUID|$)", listing, re.MULTILINE)
    )
    return NvidiaInfo(driver and driver.group(1), cuda and cuda.group(1), gpus)


def query_nvidia_smi(timeout_s: float = 10.0) -> NvidiaInfo | None:
    """Run ``nvidia-smi`` here; ``None`` when it is not installed or does not answer."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        header = subprocess.run([exe], capture_output=True, text=True, timeout=timeout_s)
        listing = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if header.returncode != 0 and listing.returncode != 0:
        return NvidiaInfo(None, None, ())  # installed, but no driver talks to it
    return parse_nvidia_smi(header.stdout, listing.stdout)


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


def _nvidia_report(nvidia: NvidiaInfo | None) -> dict[str, Any]:
    if nvidia is None:
        return {"nvidia_driver": None, "nvidia_cuda": None, "nvidia_gpus": []}
    return {
        "nvidia_driver": nvidia.driver,
        "nvidia_cuda": nvidia.cuda,
        "nvidia_gpus": list(nvidia.gpus),
    }


def pick(device: str | None, backend: str | None, onnx_model: bool = True) -> tuple[str, str]:
    """(backend, device) that a runtime would use for these settings (``None``: the env).

    ``onnx_model``: whether the bundle has ``model.onnx`` (``mlsignal train`` writes one
    when onnx is installed); ``auto`` then picks onnx on the CPU.

    Uses the same public resolvers as the runtimes (:func:`mlsignal.config.resolve_backend`,
    then the device resolver of that backend), so doctor never second-guesses them.
    """
    from mlsignal.config import resolve_backend, resolve_device

    chosen = resolve_backend(backend, device=device, onnx_model=onnx_model)
    if chosen == "onnx":
        from mlsignal.runtime.onnx_runtime import resolve_onnx_device

        return chosen, resolve_onnx_device(device)
    return chosen, resolve_device(device)


def _pick_report() -> dict[str, Any]:
    from mlsignal.errors import ConfigError

    out: dict[str, Any] = {}
    for label, spec in (("auto", "auto"), ("configured", None)):
        try:
            backend, device = pick(spec, spec)
        except (ConfigError, ImportError) as e:
            out[f"{label}_device" if label == "configured" else "auto_picks"] = f"error: {e}"
            continue
        if label == "auto":
            out.update(auto_picks=device, auto_backend=backend)
        else:
            out.update(configured_device=device, configured_backend=backend)
    return out


def collect(nvidia: NvidiaInfo | None = None) -> dict[str, Any]:
    """Everything doctor reports, as a dict (``nvidia``: ``nvidia-smi``'s view, if known)."""
    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        **_torch_report(),
        **_onnx_report(),
        **_nvidia_report(nvidia),
        "ML_INFERENCE_DEVICE": os.environ.get(DEVICE_ENV) or "(unset: auto)",
        "ML_INFERENCE_BACKEND": os.environ.get(BACKEND_ENV) or "(unset: auto)",
        **_pick_report(),
    }
    return report
