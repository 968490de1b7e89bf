"""Frozen, typed settings read once at the edge (CLI, environment).

Nothing here imports torch at module level: a remote-only trading host reads its settings
without it. :func:`resolve_device` imports torch only when it has to look for CUDA.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from mlsignal.errors import ConfigError, DeviceUnavailableError

DEVICE_ENV = "ML_INFERENCE_DEVICE"
BACKEND_ENV = "ML_INFERENCE_BACKEND"
API_URL_ENV = "GPU_INFERENCE_API_URL"
API_KEY_ENV = "GPU_INFERENCE_API_KEY"
TIMEOUT_ENV = "GPU_INFERENCE_TIMEOUT"
PROTOCOL_ENV = "GPU_INFERENCE_PROTOCOL"
MODEL_NAME_ENV = "GPU_INFERENCE_MODEL_NAME"
BUNDLE_ENV = "MLSIGNAL_BUNDLE"

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
BACKENDS = ("auto", "torch", "onnx")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
#: How the remote client talks to a server (mlsignal.client.v2 says what each means).
PROTOCOLS = ("auto", "mlsignal", "v2")
#: A V2 model name as it goes into a URL path (export-triton's default is ``mlsignal``).
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class Settings:
    """Inference settings. ``device`` is as asked (``auto``), not yet resolved."""

    device: str = "auto"
    backend: str = "auto"
    api_urls: tuple[str, ...] = ()
    api_key: str | None = None
    timeout_s: float = 3.0
    protocol: str = "auto"
    model_name: str = "mlsignal"

    def __post_init__(self) -> None:
        check_device_spec(self.device)
        if self.backend not in BACKENDS:
            choices = ", ".join(BACKENDS)
            raise ConfigError(
                f"{BACKEND_ENV}={self.backend!r} is not a backend; choose one of {choices}"
            )
        if not self.timeout_s > 0:
            raise ConfigError(
                f"{TIMEOUT_ENV} must be a positive number of seconds, got {self.timeout_s}"
            )
        if self.protocol not in PROTOCOLS:
            raise ConfigError(
                f"{PROTOCOL_ENV}={self.protocol!r} is not a protocol; choose one of "
                f"{', '.join(PROTOCOLS)}"
            )
        if not isinstance(self.model_name, str) or not MODEL_NAME_RE.match(self.model_name):
            raise ConfigError(
                f"{MODEL_NAME_ENV}={self.model_name!r} is not a model name (letters, digits, "
                "'_', '.', '-'; at most 128)"
            )

    def __repr__(self) -> str:  # never show the key
        key = "***" if self.api_key else None
        return (
            f"Settings(device={self.device!r}, backend={self.backend!r}, "
            f"api_urls={self.api_urls!r}, api_key={key}, timeout_s={self.timeout_s}, "
            f"protocol={self.protocol!r}, model_name={self.model_name!r})"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from the environment (or ``env``); unset variables keep defaults."""
        env = os.environ if env is None else env
        timeout_raw = env.get(TIMEOUT_ENV, "").strip()
        try:
            timeout_s = float(timeout_raw) if timeout_raw else 3.0
        except ValueError:
            raise ConfigError(f"{TIMEOUT_ENV}={timeout_raw!r} is not a number of seconds") from None
        urls = tuple(u.strip() for u in env.get(API_URL_ENV, "").split(",") if u.strip())
        return cls(
            device=env.get(DEVICE_ENV, "").strip().lower() or "auto",
            backend=env.get(BACKEND_ENV, "").strip().lower() or "auto",
            api_urls=urls,
            api_key=env.get(API_KEY_ENV, "").strip() or None,
            timeout_s=timeout_s,
            protocol=env.get(PROTOCOL_ENV, "").strip().lower() or "auto",
            model_name=env.get(MODEL_NAME_ENV, "").strip() or "mlsignal",
        )


def check_device_spec(spec: str) -> str:
    """Return ``spec`` if it is a valid device setting, else raise :class:`ConfigError`."""
    if not isinstance(spec, str) or not _DEVICE_RE.match(spec):
        raise ConfigError(
            f"{DEVICE_ENV}={spec!r} is not a device; choose one of {', '.join(DEVICE_CHOICES)}"
        )
    return spec


def resolve_device(spec: str | None = None) -> str:
    """Turn a device setting into a concrete torch device string (``cpu`` or ``cuda:N``).

    ``None`` reads ``ML_INFERENCE_DEVICE`` (default ``auto``). ``auto`` picks ``cuda:0`` when
    CUDA is available, else ``cpu``. Asking for CUDA where there is none, or for a GPU index
    that does not exist, raises :class:`DeviceUnavailableError`: never a silent CPU run.
    """
    spec = check_device_spec((spec or os.environ.get(DEVICE_ENV, "") or "auto").strip().lower())
    if spec == "cpu":
        return "cpu"
    import torch  # only now: the remote-only client never gets here

    available = torch.cuda.is_available()
    if spec == "auto":
        return "cuda:0" if available else "cpu"
    if not available:
        raise DeviceUnavailableError(
            f"{DEVICE_ENV}={spec!r} asks for CUDA, but torch {torch.__version__} sees no CUDA "
            f"device here (torch.cuda.is_available() is False); use 'cpu' or 'auto'"
        )
    index = int(spec.split(":")[1]) if ":" in spec else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceUnavailableError(
            f"{DEVICE_ENV}={spec!r} asks for GPU {index}, but only {count} CUDA device(s) exist"
        )
    return f"cuda:{index}"


def resolve_backend(
    spec: str | None = None, *, device: str | None = None, onnx_model: bool = False
) -> str:
    """Turn a backend setting into ``torch`` or ``onnx``.

    ``torch`` and ``onnx`` are kept as asked. ``auto`` (the default) picks by a rule drawn
    from measurement, not by timing at load time (a load-time race would make the choice,
    and so the last digits of ``bull_prob``, change from one start to the next):

    - without PyTorch: ``onnx`` (a torch-free trading host, ``pip install mlsignal[client]``);
    - on the CPU, when the bundle has ``model.onnx`` (``onnx_model``) and onnxruntime is
      installed: ``onnx``. At batch 1 on 2 CPU cores, ONNX Runtime ran this model about
      1.7x faster than PyTorch eager (1.3 ms against 2.25 ms, medians, issue 5), and at
      batch 16 about 1.3x; the whole graph is one call with no Python per layer;
    - otherwise (CUDA, where the CUDA-graph path of the torch backend is the fast one, or no
      ``model.onnx``): ``torch``.

    ``device`` is the device setting (``None`` reads ``ML_INFERENCE_DEVICE``); it is only
    resolved (which may import torch to look for CUDA) when the rule needs it.
    """
    spec = (spec or os.environ.get(BACKEND_ENV, "") or "auto").strip().lower()
    if spec not in BACKENDS:
        choices = ", ".join(BACKENDS)
        raise ConfigError(f"{BACKEND_ENV}={spec!r} is not a backend; choose one of {choices}")
    if spec != "auto":
        return spec
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return "onnx"
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    if onnx_model and has_ort and resolve_device(device) == "cpu":
        return "onnx"
    return "torch"
