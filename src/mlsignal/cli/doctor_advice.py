"""What ``mlsignal doctor`` advises about the driver, CUDA, torch and ONNX Runtime.

Pure functions over version strings and provider lists, so every rule is tested with given
versions on any machine; what this machine has is :mod:`mlsignal.bench.machine`'s to find.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlsignal.bench.machine import NvidiaInfo

#: PyTorch's CUDA wheel indexes (https://download.pytorch.org/whl/cuXYZ), oldest first. The
#: advice names the newest one the driver can run; check pytorch.org for newer ones.
TORCH_CUDA_INDEXES = ("cu118", "cu121", "cu124", "cu126", "cu128", "cu129", "cu130")
TORCH_INDEX_URL = "https://download.pytorch.org/whl/"

OK, WARN, FIX = "ok", "warn", "fix"


@dataclass(frozen=True)
class Advice:
    """One line of advice: ``level`` is ``ok``, ``warn`` (works, could be better) or ``fix``."""

    level: str
    text: str

    def to_dict(self) -> dict[str, str]:
        """JSON-able form."""
        return {"level": self.level, "text": self.text}


def version_tuple(version: str | None) -> tuple[int, ...] | None:
    """``"12.4"`` -> ``(12, 4)``; ``None`` or garbage -> ``None``."""
    if not version:
        return None
    parts = re.findall(r"\d+", version.split("+")[0])
    return tuple(int(p) for p in parts[:2]) if parts else None


def torch_index_for(driver_cuda: str | None) -> str | None:
    """The newest PyTorch CUDA wheel index this driver can run, e.g. ``cu128``."""
    have = version_tuple(driver_cuda)
    if have is None:
        return None
    fits = [ix for ix in TORCH_CUDA_INDEXES if (int(ix[2:-1]), int(ix[-1])) <= have]
    return fits[-1] if fits else None


def _install_torch_line(nvidia: NvidiaInfo) -> str:
    index = torch_index_for(nvidia.cuda)
    if index is None:
        return (
            f"this driver supports CUDA {nvidia.cuda or '?'}, older than any current PyTorch "
            "CUDA build: update the NVIDIA driver first"
        )
    return f"pip install --force-reinstall torch --index-url {TORCH_INDEX_URL}{index}"


def torch_advice(
    torch_version: str | None,
    torch_cuda: str | None,
    cuda_available: bool,
    nvidia: NvidiaInfo | None,
    visible_devices: str | None = None,
) -> list[Advice]:
    """Torch build vs driver: CPU-only build on a GPU machine, CUDA too new, GPU not seen."""
    has_gpu = nvidia is not None and bool(nvidia.gpus)
    if torch_version is None:
        if has_gpu:
            return [
                Advice(
                    WARN,
                    "torch is not installed: in-process inference runs on ONNX "
                    f"Runtime. For torch on the GPU: {_install_torch_line(nvidia)}",
                )
            ]
        return [Advice(OK, "torch is not installed: the onnx backend serves (CPU)")]
    if torch_cuda is None:
        if has_gpu:
            return [
                Advice(
                    FIX,
                    f"torch {torch_version} is a CPU-only build, but this machine "
                    f"has {nvidia.describe()}. Install a CUDA build: "
                    f"{_install_torch_line(nvidia)}",
                )
            ]
        return [Advice(OK, f"torch {torch_version} (CPU build); no NVIDIA GPU here")]
    return _cuda_build_advice(torch_version, torch_cuda, cuda_available, nvidia, visible_devices)


def _cuda_build_advice(
    torch_version: str,
    torch_cuda: str,
    cuda_available: bool,
    nvidia: NvidiaInfo | None,
    visible_devices: str | None,
) -> list[Advice]:
    built, driver = version_tuple(torch_cuda), nvidia and version_tuple(nvidia.cuda)
    if nvidia is None or not nvidia.gpus:
        if cuda_available:
            return [Advice(OK, f"torch {torch_version} sees CUDA (nvidia-smi not found)")]
        return [
            Advice(
                OK,
                f"torch {torch_version} is a CUDA {torch_cuda} build, but there is "
                "no NVIDIA GPU here: it runs on the CPU (the CPU build is smaller)",
            )
        ]
    if built and driver and built[0] > driver[0]:
        return [
            Advice(
                FIX,
                f"torch {torch_version} is built for CUDA {torch_cuda}, but the "
                f"driver {nvidia.driver} supports only CUDA {nvidia.cuda}: update the "
                f"driver, or {_install_torch_line(nvidia)}",
            )
        ]
    out = []
    if built and driver and built > driver:
        out.append(
            Advice(
                WARN,
                f"torch is built for CUDA {torch_cuda}, newer than the driver's "
                f"CUDA {nvidia.cuda}: this runs through CUDA minor-version "
                "compatibility; if kernels fail, update the driver or "
                f"{_install_torch_line(nvidia)}",
            )
        )
    if not cuda_available:
        hidden = (
            f" (CUDA_VISIBLE_DEVICES={visible_devices!r})" if visible_devices is not None else ""
        )
        out.append(
            Advice(
                FIX,
                f"nvidia-smi lists {len(nvidia.gpus)} GPU(s) but torch "
                f"{torch_version} sees no CUDA device{hidden}: check "
                "CUDA_VISIBLE_DEVICES, the container's --gpus flag, and that "
                "nvidia-smi itself works",
            )
        )
    else:
        out.append(
            Advice(OK, f"torch {torch_version} (CUDA {torch_cuda}) runs on {nvidia.describe()}")
        )
    return out


def onnx_advice(
    ort_version: str | None, providers: list[str], nvidia: NvidiaInfo | None
) -> list[Advice]:
    """ONNX Runtime: missing, CPU-only on a GPU machine, or a CUDA provider without a GPU."""
    has_gpu = nvidia is not None and bool(nvidia.gpus)
    has_cuda_ep = "CUDAExecutionProvider" in providers
    if ort_version is None:
        return [
            Advice(
                WARN,
                "onnxruntime is not installed: no onnx backend (on a CPU it is "
                "about 2x faster than torch): pip install 'mlsignal[client]'",
            )
        ]
    if has_gpu and not has_cuda_ep:
        return [
            Advice(
                WARN,
                f"onnxruntime {ort_version} has no CUDAExecutionProvider "
                f"(providers: {', '.join(providers) or 'none'}), so the onnx backend "
                "runs on the CPU only. For ONNX on the GPU: pip uninstall -y "
                "onnxruntime && pip install onnxruntime-gpu (one of the two packages, "
                "not both). Not needed for torch on the GPU or ONNX on the CPU.",
            )
        ]
    if has_cuda_ep and not has_gpu:
        return [
            Advice(
                WARN,
                f"onnxruntime {ort_version} has the CUDA provider but no NVIDIA "
                "GPU was found: ML_INFERENCE_DEVICE=auto with the onnx backend would "
                "ask for CUDA; set ML_INFERENCE_DEVICE=cpu, or install plain "
                "onnxruntime",
            )
        ]
    where = "CUDA and CPU" if has_cuda_ep else "CPU"
    return [Advice(OK, f"onnxruntime {ort_version} ({where})")]
