"""The PyTorch runtime: weights loaded with ``map_location``, inference mode, numpy out."""

from __future__ import annotations

import logging

import numpy as np
import torch

from mlsignal.bundle import WEIGHTS_FILE, Bundle
from mlsignal.bundle.checks import one_line
from mlsignal.config import resolve_device
from mlsignal.errors import BundleIntegrityError
from mlsignal.models.signal_model import SignalModel, SignalModelConfig
from mlsignal.runtime.base import PARITY_ATOL, check_windows

log = logging.getLogger(__name__)


def build_model(bundle: Bundle, device: str) -> SignalModel:
    """Instantiate the bundle's SignalModel and load its weights onto ``device``."""
    try:
        model = SignalModel(SignalModelConfig.from_dict(bundle.config["model"]))
    except Exception as e:  # a missing key, a wrong type, an impossible size
        raise BundleIntegrityError(
            f"bundle {bundle.path}: config.json's model config cannot build the model "
            f"({one_line(e)})"
        ) from None
    # Read on the CPU, then moved: a device problem is not mistaken for a corrupt file.
    try:
        state = torch.load(bundle.file(WEIGHTS_FILE), map_location="cpu", weights_only=True)
    except Exception as e:  # zip, pickle (weights_only refusals), EOF and OS errors alike
        raise BundleIntegrityError(
            f"bundle {bundle.path}: {WEIGHTS_FILE} cannot be loaded ({one_line(e)})"
        ) from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError, KeyError) as e:
        raise BundleIntegrityError(
            f"bundle {bundle.path}: weights do not fit the model config: {one_line(e)}"
        ) from None
    return model.to(device).eval()


def use_ieee_float32() -> None:
    """Turn TF32 off for CUDA matrix products and cuDNN (LSTMs included).

    TF32 keeps 10 mantissa bits: outputs would drift ~1e-3 from the CPU, far beyond the
    1e-5 parity tolerance. This is process-wide, as torch's flags are.
    """
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


class TorchRuntime:
    """``predict(windows) -> (B, 3)`` with a SignalModel on one torch device."""

    backend = "torch"
    parity_atol: float = PARITY_ATOL  # IEEE float32 on every device (TF32 off on CUDA)

    def __init__(self, bundle: Bundle, device: str | None = None) -> None:
        self.bundle = bundle
        self.device = resolve_device(device)
        self._torch_device = torch.device(self.device)
        if self._torch_device.type == "cuda":
            use_ieee_float32()
        self.model = build_model(bundle, self.device)
        log.info(
            "torch runtime ready: device=%s model=%s contract=%s",
            self.device,
            bundle.model_version,
            bundle.contract_hash[:12],
        )

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """Feature windows ``(B, T, F)`` float32 -> ``(B, 3)`` float32 on the host."""
        arr = check_windows(windows, self.bundle)
        with torch.inference_mode():
            x = torch.from_numpy(arr).to(self._torch_device, non_blocking=False)
            out = self.model(x)  # (B, 3)
            return out.float().cpu().numpy()
