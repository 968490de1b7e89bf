"""The golden probe of a serving runtime uses the runtime's own parity tolerance.

A CUDA-graph runtime at ``ML_GPU_PRECISION=tf32`` or ``bf16`` passes the load-time parity
gate at its ``parity_atol`` (2e-3, 2e-2); its periodic health probe must judge it the same
way. Stand-ins here: the tiny bundle's real CPU runtime, its outputs shifted by about what
reduced precision costs. No GPU, no Ray cluster.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

from mlsignal.bundle import load_bundle
from mlsignal.errors import BundleError
from mlsignal.runtime import load_runtime
from mlsignal.runtime.base import PARITY_ATOL, check_parity
from mlsignal.server.health import GoldenProbe, probe_atol


class Drifting:
    """The real runtime, its outputs off by ``drift`` (alternating sign per output)."""

    def __init__(self, inner, drift: float, parity_atol: float | None = None) -> None:
        self.inner, self.drift = inner, drift
        self.bundle, self.backend, self.device = inner.bundle, inner.backend, inner.device
        if parity_atol is not None:  # as CudaGraphRuntime sets it for tf32/bf16
            self.parity_atol = parity_atol

    def predict(self, windows: np.ndarray) -> np.ndarray:
        out = self.inner.predict(windows).astype(np.float64)
        return (out + self.drift * np.array([1.0, -1.0, 1.0])).astype(np.float32)


@pytest.fixture(scope="module")
def runtime(tiny_bundle):
    return load_runtime(load_bundle(tiny_bundle), "cpu")


@pytest.fixture(scope="module")
def probe(runtime) -> GoldenProbe:
    return GoldenProbe.from_bundle(runtime.bundle)


def test_the_exact_runtime_passes_at_the_fp32_tolerance(runtime, probe):
    assert probe_atol(runtime) == PARITY_ATOL
    assert probe.windows.shape[0] == 1 and probe.expected.shape == (1, 3)
    assert probe.check(runtime) <= PARITY_ATOL


@pytest.mark.parametrize(
    ("drift", "atol"), [(1e-3, 2e-3), (1e-2, 2e-2)], ids=["tf32-like", "bf16-like"]
)
def test_reduced_precision_runtimes_pass_the_probe_they_passed_at_load(runtime, probe, drift, atol):
    stand_in = Drifting(runtime, drift, parity_atol=atol)
    check_parity(stand_in)  # admitted at load ...
    worst = probe.check(stand_in)  # ... and healthy afterwards, by the same tolerance
    assert PARITY_ATOL < worst <= atol and worst == pytest.approx(drift, rel=1e-3)


@pytest.mark.parametrize(
    ("drift", "atol"), [(1e-3, None), (5e-3, 2e-3), (5e-2, 2e-2)], ids=["fp32", "tf32", "bf16"]
)
def test_drift_beyond_the_runtimes_tolerance_fails_the_probe(runtime, probe, drift, atol):
    with pytest.raises(BundleError, match=r"replica drifts from the golden outputs: \|diff\|"):
        probe.check(Drifting(runtime, drift, parity_atol=atol))


def test_non_finite_outputs_fail_the_probe(runtime, probe):
    with pytest.raises(BundleError, match="nan"):
        probe.check(Drifting(runtime, float("nan"), parity_atol=1.0))


def test_the_ray_replica_health_check_uses_the_probe(runtime, probe):
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed")
    from mlsignal.server import ray_engine  # imports ray; starts no cluster

    replica = object.__new__(ray_engine.ModelReplica.func_or_class)
    replica._pool = ThreadPoolExecutor(1)
    replica._probe = probe
    try:
        replica.state = SimpleNamespace(runtime=Drifting(runtime, 1e-3, parity_atol=2e-3))
        asyncio.run(replica.check_health())
        replica.state = SimpleNamespace(runtime=Drifting(runtime, 1e-3))
        with pytest.raises(BundleError):
            asyncio.run(replica.check_health())
    finally:
        replica._pool.shutdown()
