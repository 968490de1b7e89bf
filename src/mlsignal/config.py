"""Frozen, typed settings read once at the edge (CLI, environment).

Nothing here imports torch at module level: a remote-only trading host reads its settings
without it. :func:`resolve_device` imports torch only when it has to look for CUDA.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlsignal.errors import ConfigError, DeviceUnavailableError

DEVICE_ENV = "ML_INFERENCE_DEVICE"
BACKEND_ENV = "ML_INFERENCE_BACKEND"
API_URL_ENV = "GPU_INFERENCE_API_URL"
API_KEY_ENV = "GPU_INFERENCE_API_KEY"
TIMEOUT_ENV = "GPU_INFERENCE_TIMEOUT"
PROTOCOL_ENV = "GPU_INFERENCE_PROTOCOL"
MODEL_NAME_ENV = "GPU_INFERENCE_MODEL_NAME"
BUNDLE_ENV = "MLSIGNAL_BUNDLE"
#: Score bars of another interval than the bundle was trained on (1/0; default 0: refused).
TIMEFRAME_ENV = "ML_ALLOW_TIMEFRAME_MISMATCH"
#: Switch for the CUDA-graph fast path of the torch backend on CUDA (``0`` turns it off).
CUDA_GRAPHS_ENV = "ML_CUDA_GRAPHS"
#: Precision of the CUDA-graph path: fp32 (default), tf32 or bf16.
GPU_PRECISION_ENV = "ML_GPU_PRECISION"
#: ONNX Runtime's intra-op and inter-op thread counts (0: onnxruntime's own default).
INTRA_OP_ENV = "ML_ONNX_INTRA_OP_THREADS"
INTER_OP_ENV = "ML_ONNX_INTER_OP_THREADS"

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
BACKENDS = ("auto", "torch", "onnx")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
#: How the remote client talks to a server (mlsignal.client.v2 says what each means).
PROTOCOLS = ("auto", "mlsignal", "v2")
#: A V2 model name as it goes into a URL path (export-triton's default is ``mlsignal``).
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: Whether CUDA graphs are used on CUDA when ``ML_CUDA_GRAPHS`` is unset.
CUDA_GRAPHS_DEFAULT = True
#: Precisions of the CUDA-graph path (mlsignal.runtime.fused says what each costs).
GPU_PRECISIONS = ("fp32", "tf32", "bf16")
#: The server's longest wait to fill a batch (``--max-wait-ms``, ``ServerConfig``, ``Batcher``).
#: 0: measured, a fill wait halves CPU throughput in a closed loop; windows that arrive while
#: a batch runs still go together in the next one.
DEFAULT_MAX_WAIT_MS = 0.0
_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Settings:
    """Inference settings. ``device`` is as asked (``auto``), not yet resolved.

    The runtime's knobs: ``cuda_graphs`` (``ML_CUDA_GRAPHS``: the torch backend on CUDA
    replays CUDA graphs), ``gpu_precision`` (``ML_GPU_PRECISION``: fp32, tf32 or bf16 on that
    path), ``onnx_intra_op_threads``/``onnx_inter_op_threads`` (``ML_ONNX_*_OP_THREADS``;
    ``None``: the CPUs this process may use, and 1). ``bundle`` (``MLSIGNAL_BUNDLE``) is the
    default bundle directory, ``None`` when unset. ``allow_timeframe_mismatch``
    (``ML_ALLOW_TIMEFRAME_MISMATCH``): score bars whose interval differs from the bundle's
    (refused by default, see :mod:`mlsignal.data.timeframe`).
    """

    device: str = "auto"
    backend: str = "auto"
    api_urls: tuple[str, ...] = ()
    api_key: str | None = None
    timeout_s: float = 3.0
    protocol: str = "auto"
    model_name: str = "mlsignal"
    cuda_graphs: bool = CUDA_GRAPHS_DEFAULT
    gpu_precision: str = "fp32"
    onnx_intra_op_threads: int | None = None
    onnx_inter_op_threads: int | None = None
    bundle: str | None = None
    allow_timeframe_mismatch: bool = False

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
        self._check_runtime_knobs()

    def _check_runtime_knobs(self) -> None:
        if not isinstance(self.cuda_graphs, bool):
            raise ConfigError(f"{CUDA_GRAPHS_ENV}={self.cuda_graphs!r}: use 1 or 0")
        if self.gpu_precision not in GPU_PRECISIONS:
            raise ConfigError(
                f"{GPU_PRECISION_ENV}={self.gpu_precision!r} is not a precision; choose one of "
                f"{', '.join(GPU_PRECISIONS)}"
            )
        check_thread_count(self.onnx_intra_op_threads, INTRA_OP_ENV)
        check_thread_count(self.onnx_inter_op_threads, INTER_OP_ENV)
        if self.bundle is not None and (not isinstance(self.bundle, str) or not self.bundle):
            raise ConfigError(f"{BUNDLE_ENV}={self.bundle!r} is not a bundle directory")

    def __repr__(self) -> str:  # never show the key
        key = "***" if self.api_key else None
        return (
            f"Settings(device={self.device!r}, backend={self.backend!r}, "
            f"api_urls={self.api_urls!r}, api_key={key}, timeout_s={self.timeout_s}, "
            f"protocol={self.protocol!r}, model_name={self.model_name!r}, "
            f"cuda_graphs={self.cuda_graphs}, gpu_precision={self.gpu_precision!r}, "
            f"onnx_intra_op_threads={self.onnx_intra_op_threads}, "
            f"onnx_inter_op_threads={self.onnx_inter_op_threads}, bundle={self.bundle!r}, "
            f"allow_timeframe_mismatch={self.allow_timeframe_mismatch})"
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
            cuda_graphs=_switch(env, CUDA_GRAPHS_ENV, CUDA_GRAPHS_DEFAULT),
            gpu_precision=env.get(GPU_PRECISION_ENV, "").strip().lower() or "fp32",
            onnx_intra_op_threads=_thread_env(env, INTRA_OP_ENV),
            onnx_inter_op_threads=_thread_env(env, INTER_OP_ENV),
            bundle=bundle_setting(env),
            allow_timeframe_mismatch=_switch(env, TIMEFRAME_ENV, False),
        )


def bundle_setting(env: Mapping[str, str] | None = None) -> str | None:
    """``MLSIGNAL_BUNDLE`` from the environment (or ``env``); ``None`` when unset or empty."""
    env = os.environ if env is None else env
    return env.get(BUNDLE_ENV, "").strip() or None


def _switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    """An on/off variable: 1/true/yes/on or 0/false/no/off; unset or empty: ``default``."""
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value not in _ON + _OFF:
        raise ConfigError(f"{name}={value!r}: use 1 or 0")
    return value in _ON


def _thread_env(env: Mapping[str, str], name: str) -> int | None:
    """A thread count variable; unset or empty: ``None``."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number of threads") from None


def check_thread_count(value: int | None, name: str) -> int | None:
    """``value`` if it is ``None`` or a whole number >= 0, else :class:`ConfigError` naming
    ``name`` (the variable, or the argument)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a whole number >= 0 (0: onnxruntime's default)")
    return value


def device_setting(spec: str | None = None) -> str:
    """The device setting as asked: ``spec``, else ``ML_INFERENCE_DEVICE``, else ``auto``
    (checked, not resolved)."""
    raw = (spec or os.environ.get(DEVICE_ENV, "") or "auto").strip().lower()
    return check_device_spec(raw, device_source(spec))


def device_source(spec: str | None) -> str:
    """How errors name a device setting: the variable's name when it came from
    ``ML_INFERENCE_DEVICE`` (read here, or passed on with the variable's value), ``device``
    when given as an argument (``--device``, ``device=``) that the variable does not hold."""
    if not spec or spec.strip().lower() == os.environ.get(DEVICE_ENV, "").strip().lower():
        return DEVICE_ENV
    return "device"


def check_device_spec(spec: str, source: str = DEVICE_ENV) -> str:
    """Return ``spec`` if it is a valid device setting, else raise :class:`ConfigError`
    naming where it came from (``source``: the variable, or ``device`` for an argument)."""
    if not isinstance(spec, str) or not _DEVICE_RE.match(spec):
        raise ConfigError(
            f"{source}={spec!r} is not a device; choose one of {', '.join(DEVICE_CHOICES)}"
        )
    return spec


def resolve_device(spec: str | None = None) -> str:
    """Turn a device setting into a concrete torch device string (``cpu`` or ``cuda:N``).

    ``None`` reads ``ML_INFERENCE_DEVICE`` (default ``auto``). ``auto`` picks ``cuda:0`` when
    CUDA is available, else ``cpu``. Asking for CUDA where there is none, or for a GPU index
    that does not exist, raises :class:`DeviceUnavailableError`: never a silent CPU run.
    """
    source, spec = device_source(spec), device_setting(spec)
    if spec == "cpu":
        return "cpu"
    import torch  # only now: the remote-only client never gets here

    available = torch.cuda.is_available()
    if spec == "auto":
        return "cuda:0" if available else "cpu"
    if not available:
        raise DeviceUnavailableError(
            f"{source}={spec!r} asks for CUDA, but torch {torch.__version__} sees no CUDA "
            f"device here (torch.cuda.is_available() is False); use 'cpu' or 'auto'"
        )
    index = int(spec.split(":")[1]) if ":" in spec else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceUnavailableError(
            f"{source}={spec!r} asks for GPU {index}, but only {count} CUDA device(s) exist"
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


def read_key_file(path: str | os.PathLike[str]) -> list[str]:
    """The API keys in a key file: one per line, blank lines and ``#`` comments ignored; the
    same reading for the server (many keys) and a client (one). A file that cannot be read,
    is not UTF-8 or holds no key is a :class:`ConfigError`."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read the API key file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"the API key file {path} is not UTF-8 text (byte {e.start}); write one key per line"
        ) from None
    keys = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not keys:
        raise ConfigError(f"the API key file {path} holds no keys")
    return keys
