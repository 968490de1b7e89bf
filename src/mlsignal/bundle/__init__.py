"""The versioned model bundle on disk: write atomically, load and verify, on any device."""

from __future__ import annotations

from mlsignal.bundle.io import (
    CONFIG_FILE,
    FORMAT_VERSION,
    GOLDEN_FILE,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    Bundle,
    load_bundle,
    write_bundle,
)

__all__ = [
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "GOLDEN_FILE",
    "MANIFEST_FILE",
    "WEIGHTS_FILE",
    "Bundle",
    "load_bundle",
    "write_bundle",
]
