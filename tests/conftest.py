"""Shared fixtures: one tiny bundle trained by our own code, once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bundle: the `tiny` preset on the S&P 500 sample, trained on CPU (seed 0)."""
    from mlsignal.training.pipeline import train_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    train_bundle("sp500", out, preset="tiny", device="cpu", seed=0, progress=False)
    return out


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny bundle that a test may damage."""
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst


@pytest.fixture(scope="session")
def sp500_bars():
    """The real daily S&P 500 sample as canonical bars."""
    from mlsignal.data import load_sample

    return load_sample("sp500")
