"""The swap attack of issue 13: another bundle's model.onnx and golden.npz put into a bundle.

Two real tiny bundles (seeds 0 and 1). Format 1 signed only the weights and the config, so
a bundle with seed 1's ONNX graph and golden file, its file hashes updated, kept seed 0's
contract hash: the server (onnx, the CPU default) passed its parity gate against the swapped
golden outputs and answered another model's ``bull_prob`` under a pin that matched. Now the
contract hash covers both files: the swap is refused, or re-signed into another hash that
the client's pin catches.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bundle_helpers import resign
from mlsignal.bundle import load_bundle
from mlsignal.bundle.io import sha256_file
from mlsignal.config import Settings
from mlsignal.enhancer import MLSignalEnhancer
from mlsignal.errors import BundleIntegrityError

pytestmark = pytest.mark.slow

SWAPPED = ("model.onnx", "golden.npz")


@pytest.fixture(scope="module")
def seed1_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second real bundle: the `tiny` preset on the S&P 500 sample, seed 1."""
    from mlsignal.training.pipeline import train_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny-seed1"
    train_bundle("sp500", out, preset="tiny", device="cpu", seed=1, progress=False)
    return out


def _swap(tiny_bundle: Path, seed1_bundle: Path, dst: Path) -> Path:
    """seed 0's bundle with seed 1's model.onnx and golden.npz, file hashes updated."""
    shutil.copytree(tiny_bundle, dst)
    for name in SWAPPED:
        shutil.copyfile(seed1_bundle / name, dst / name)
    manifest = json.loads((dst / "manifest.json").read_text())
    for name in SWAPPED:
        manifest["files"][name] = sha256_file(dst / name)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_the_two_bundles_differ(tiny_bundle, seed1_bundle):
    for name in SWAPPED:
        assert sha256_file(tiny_bundle / name) != sha256_file(seed1_bundle / name)


def test_a_swap_with_updated_file_hashes_is_refused(tiny_bundle, seed1_bundle, tmp_path):
    swapped = _swap(tiny_bundle, seed1_bundle, tmp_path / "swapped")
    with pytest.raises(BundleIntegrityError, match="contract hash mismatch"):
        load_bundle(swapped)


def test_a_resigned_swap_has_another_contract_hash(tiny_bundle, seed1_bundle, tmp_path):
    swapped = _swap(tiny_bundle, seed1_bundle, tmp_path / "swapped")
    resign(swapped)
    assert load_bundle(swapped).contract_hash != load_bundle(tiny_bundle).contract_hash


@pytest.mark.parametrize("protocol", ["auto", "mlsignal"])
def test_the_pin_catches_a_server_serving_the_swap(
    tiny_bundle, seed1_bundle, tmp_path, server_factory, protocol
):
    swapped = _swap(tiny_bundle, seed1_bundle, tmp_path / "swapped")
    resign(swapped)
    server = server_factory(swapped, "--device", "cpu", "--backend", "onnx").start()
    assert server.running()
    local = MLSignalEnhancer(tiny_bundle, device="cpu")
    remote = MLSignalEnhancer(
        tiny_bundle, remote_urls=[server.url], settings=Settings(protocol=protocol)
    )
    try:
        from mlsignal.data import load_sample

        bars = load_sample("sp500").iloc[-300:]
        _, _, info = remote.enhance_signal(bars, 30.0, 60.0)
        _, _, want = local.enhance_signal(bars, 30.0, 60.0)
    finally:
        remote.close()
        local.close()
    # Today: source "remote" and seed 1's bull_prob under seed 0's pin.
    assert info["source"] == "fallback" and "mismatch" in info["fallback_reason"]
    assert info["bull_prob"] == want["bull_prob"]
