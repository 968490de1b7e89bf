"""The ONNX Runtime backend: the bundle's ``model.onnx`` on CPU or CUDA, without torch.

Nothing on this module's import path imports torch, so a trading host can fall back to local
inference with only numpy and onnxruntime installed. The device setting (``auto``, ``cpu``,
``cuda``, ``cuda:N``) picks the execution providers; asking for CUDA where onnxruntime has no
CUDA provider is an error, never a silent CPU run.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import numpy as np
import onnxruntime as ort

from mlsignal.bundle import Bundle
from mlsignal.config import (
    INTER_OP_ENV,
    INTRA_OP_ENV,
    check_thread_count,
    device_setting,
    device_source,
)
from mlsignal.errors import BundleError, BundleIntegrityError, DeviceUnavailableError
from mlsignal.runtime.base import PARITY_ATOL, check_windows
from mlsignal.signature import INPUT_NAME, OUTPUT_NAMES

log = logging.getLogger(__name__)

#: The exported graph's file name inside a bundle.
ONNX_FILE = "model.onnx"
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
# Errors that mean the file itself is bad, whatever the device.
_FILE_ERRORS = tuple(
    getattr(ort.capi.onnxruntime_pybind11_state, name)
    for name in ("InvalidProtobuf", "InvalidGraph", "NoSuchFile", "NotImplemented")
)

Provider = str | tuple[str, dict[str, Any]]


def resolve_onnx_device(spec: str | None = None) -> str:
    """Turn a device setting into ``cpu`` or ``cuda:N`` for onnxruntime (no torch).

    ``None`` reads ``ML_INFERENCE_DEVICE`` (default ``auto``). ``auto`` is ``cuda:0`` when
    onnxruntime has the CUDA provider, else ``cpu``. ``cuda`` without the provider raises
    :class:`DeviceUnavailableError`.
    """
    source, spec = device_source(spec), device_setting(spec)
    available = ort.get_available_providers()
    has_cuda = CUDA_PROVIDER in available
    if spec == "cpu" or (spec == "auto" and not has_cuda):
        return "cpu"
    if not has_cuda:
        raise DeviceUnavailableError(
            f"{source}={spec!r} asks for CUDA, but onnxruntime {ort.__version__} has no "
            f"{CUDA_PROVIDER} (providers: {', '.join(available)}); "
            "install onnxruntime-gpu or use cpu"
        )
    index = int(spec.split(":")[1]) if ":" in spec else 0
    return f"cuda:{index}"


def providers_for(device: str) -> list[Provider]:
    """onnxruntime providers for a resolved device: CUDA (with its device_id) then CPU."""
    if device == "cpu":
        return [CPU_PROVIDER]
    return [(CUDA_PROVIDER, {"device_id": int(device.split(":")[1])}), CPU_PROVIDER]


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def session_options(
    intra_op_threads: int | None = None, inter_op_threads: int | None = None
) -> ort.SessionOptions:
    """SessionOptions for this model: full graph optimisation, sequential execution, and the
    thread counts (``None``: the defaults below; ``0``: onnxruntime's own). The factory passes
    :class:`~mlsignal.config.Settings`' ``onnx_*_op_threads`` (``ML_ONNX_*_OP_THREADS``).

    Defaults, from measurement at batch 1 and 16 on 2 pinned cores (issue 5): intra-op
    threads = the CPUs in this process's affinity mask. ONNX Runtime's own default counts the
    machine's physical cores and pins a thread to each, ignoring a container's or
    ``taskset``'s CPU set: on a 16-core host limited to 2 CPUs it ran 16 threads outside the
    set. One thread is as fast at batch 1 (the graph is a chain of small kernels), two are
    1.7x faster at batch 16, so the count follows the CPUs. Inter-op threads are 1: the
    graph runs sequentially (one branch at a time is as fast at these sizes). Memory
    pattern and the CPU arena stay on: buffers are planned once per input shape and reused.
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.enable_mem_pattern = True
    opts.enable_cpu_mem_arena = True
    intra = check_thread_count(intra_op_threads, INTRA_OP_ENV)
    inter = check_thread_count(inter_op_threads, INTER_OP_ENV)
    opts.intra_op_num_threads = cpu_count() if intra is None else intra
    opts.inter_op_num_threads = 1 if inter is None else inter
    return opts


def read_onnx_file(bundle: Bundle) -> bytes:
    """The bundle's model.onnx bytes, checked against the manifest's sha256 as read."""
    expected = bundle.manifest.get("files", {}).get(ONNX_FILE)
    if expected is None:
        raise BundleError(
            f"bundle {bundle.path} has no {ONNX_FILE}; "
            f"run `mlsignal export-onnx --bundle {bundle.path}`"
        )
    try:
        data = bundle.file(ONNX_FILE).read_bytes()
    except OSError as e:
        raise BundleIntegrityError(f"bundle {bundle.path}: cannot read {ONNX_FILE}: {e}") from None
    # Verify the very bytes we load: the file may have changed since load_bundle checked it.
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise BundleIntegrityError(
            f"bundle {bundle.path}: {ONNX_FILE} does not match its sha256 in the manifest "
            f"(expected {expected[:12]}…, found {actual[:12]}…): tampered or corrupt"
        )
    return data


class OnnxRuntime:
    """``predict(windows) -> (B, 3)`` with the bundle's model.onnx in onnxruntime."""

    backend = "onnx"
    parity_atol: float = PARITY_ATOL  # float32 graph

    def __init__(
        self,
        bundle: Bundle,
        device: str | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
    ) -> None:
        self.bundle = bundle
        setting = device_setting(device)
        asked = resolve_onnx_device(setting)
        data = read_onnx_file(bundle)
        opts = session_options(intra_op_threads, inter_op_threads)
        self.session = _open_session(bundle, data, opts, asked)
        self.device = _actual_device(self.session, asked, may_use_cpu=setting == "auto")
        _check_signature(self.session, bundle)
        # Looked up once: predict is on the per-bar path. (IO binding with preallocated
        # outputs measured no faster at batch 1: the (B, 3) result is a new array anyway.)
        self._run = self.session.run
        self._outputs = list(OUTPUT_NAMES)
        log.info(
            "onnx runtime ready: device=%s providers=%s model=%s contract=%s",
            self.device,
            ",".join(self.session.get_providers()),
            bundle.model_version,
            bundle.contract_hash[:12],
        )

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """Feature windows ``(B, T, F)`` float32 -> ``(B, 3)`` float32 (OUTPUT_NAMES)."""
        arr = check_windows(windows, self.bundle)
        outs = self._run(self._outputs, {INPUT_NAME: arr})  # 3 x (B,) float32
        return np.stack(outs, axis=1)


def _open_session(
    bundle: Bundle, data: bytes, opts: ort.SessionOptions, device: str
) -> ort.InferenceSession:
    """An InferenceSession on ``device``'s providers; a bad file is a BundleIntegrityError."""
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=providers_for(device))
    except _FILE_ERRORS as e:
        raise BundleIntegrityError(
            f"bundle {bundle.path}: onnxruntime cannot load {ONNX_FILE}: {e}"
        ) from None
    except Exception as e:  # ORT raises plain Fail/RuntimeException for both cases
        if device != "cpu":
            raise DeviceUnavailableError(
                f"onnxruntime {ort.__version__} cannot open {ONNX_FILE} on {device}: {e}"
            ) from None
        raise BundleIntegrityError(
            f"bundle {bundle.path}: onnxruntime cannot load {ONNX_FILE}: {e}"
        ) from None


def _actual_device(session: ort.InferenceSession, asked: str, may_use_cpu: bool) -> str:
    """The device the session really runs on; CUDA asked but not granted is an error.

    onnxruntime-gpu without working CUDA libraries quietly drops to the CPU provider: under
    ``auto`` that is fine (and reported), under an explicit ``cuda`` it is refused.
    """
    if asked == "cpu" or CUDA_PROVIDER in session.get_providers():
        return asked
    if may_use_cpu:
        log.warning("onnxruntime could not start %s; auto device runs on cpu", CUDA_PROVIDER)
        return "cpu"
    raise DeviceUnavailableError(
        f"onnxruntime {ort.__version__} could not start {CUDA_PROVIDER} for {asked} "
        f"(session providers: {', '.join(session.get_providers())}); check the CUDA/cuDNN "
        "libraries onnxruntime-gpu needs, or use cpu"
    )


def _check_signature(session: ort.InferenceSession, bundle: Bundle) -> None:
    """The graph must take ``windows`` (B, T, F) and give every OUTPUT_NAMES output."""
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    want = [bundle.schema.window, bundle.schema.n_features]
    shape = inputs.get(INPUT_NAME)
    if shape is None or list(shape[1:]) != want or not set(OUTPUT_NAMES) <= outputs:
        raise BundleIntegrityError(
            f"bundle {bundle.path}: {ONNX_FILE} takes {inputs} and gives {sorted(outputs)}; "
            f"expected {INPUT_NAME} (batch, {want[0]}, {want[1]}) -> {', '.join(OUTPUT_NAMES)}; "
            "re-export it"
        )
