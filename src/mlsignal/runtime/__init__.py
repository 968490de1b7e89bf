"""A bundle loaded for inference: ``predict(windows) -> (B, 3)`` on a backend and a device."""

from __future__ import annotations

from mlsignal.runtime.base import Runtime
from mlsignal.runtime.factory import load_runtime
from mlsignal.signature import OUTPUT_NAMES

__all__ = ["OUTPUT_NAMES", "Runtime", "load_runtime"]
