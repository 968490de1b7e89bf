"""mlsignal: ML-enhanced trading signals, fast on a GPU, safe on a CPU.

The public entry point is :class:`mlsignal.enhancer.MLSignalEnhancer`, also importable from
here. Importing this package stays light: torch loads only when a local runtime is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from mlsignal.enhancer import MLSignalEnhancer

__all__ = ["MLSignalEnhancer", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "MLSignalEnhancer":
        from mlsignal.enhancer import MLSignalEnhancer

        return MLSignalEnhancer
    raise AttributeError(f"module 'mlsignal' has no attribute {name!r}")
