"""ONNX export and the onnxruntime backend: parity with torch, integrity, devices, threads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from bundle_helpers import resign
from mlsignal.bundle import load_bundle
from mlsignal.bundle.io import sha256_file
from mlsignal.config import Settings
from mlsignal.errors import (
    BundleError,
    BundleIntegrityError,
    ConfigError,
    DeviceUnavailableError,
    ParityError,
)
from mlsignal.runtime import load_runtime
from mlsignal.runtime.base import PARITY_ATOL, check_parity
from mlsignal.runtime.onnx_runtime import ONNX_FILE, OnnxRuntime

HAS_CUDA_EP = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def exported(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny bundle with model.onnx exported into it (once per module)."""
    from mlsignal.onnx_export import export_onnx

    dst = tmp_path_factory.mktemp("onnx") / "bundle"
    shutil.copytree(tiny_bundle, dst)
    export_onnx(dst)
    return dst


@pytest.fixture
def exported_copy(exported: Path, tmp_path: Path) -> Path:
    """A private copy of the exported bundle that a test may damage."""
    dst = tmp_path / "bundle"
    shutil.copytree(exported, dst)
    return dst


@pytest.fixture(scope="module")
def runtimes(exported: Path):
    """(torch cpu, onnx cpu) runtimes over the exported bundle."""
    from mlsignal.runtime.torch_runtime import TorchRuntime

    bundle = load_bundle(exported)
    return TorchRuntime(bundle, "cpu"), OnnxRuntime(bundle, "cpu")


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def test_exported_bundle_loads_with_the_same_contract(tiny_bundle, exported):
    before, after = load_bundle(tiny_bundle), load_bundle(exported)
    assert after.contract_hash == before.contract_hash
    assert after.manifest["files"][ONNX_FILE] == sha256_file(exported / ONNX_FILE)
    assert ONNX_FILE in after.extra_files
    section = after.manifest["onnx"]
    assert section["file"] == ONNX_FILE and section["opset"] >= 17
    assert section["onnxruntime_version"] == ort.__version__
    assert {"onnx_version", "torch_version", "exported_at"} <= set(section)
    assert 0 <= section["max_abs_diff"] < PARITY_ATOL


def test_golden_parity_gate_passes(runtimes):
    _, onnx_rt = runtimes
    assert onnx_rt.backend == "onnx" and onnx_rt.device == "cpu"
    assert check_parity(onnx_rt) < PARITY_ATOL


def test_parity_with_torch_on_real_windows(runtimes, sp500_bars):
    from mlsignal.features import feature_windows, valid_ends

    torch_rt, onnx_rt = runtimes
    schema = onnx_rt.bundle.schema
    ends = valid_ends(len(sp500_bars), schema)[-300:]
    windows = feature_windows(sp500_bars, ends, schema)  # (300, T, F)
    got, want = onnx_rt.predict(windows), torch_rt.predict(windows)
    assert got.shape == (300, 3) and got.dtype == np.float32
    assert _max_diff(got, want) < PARITY_ATOL


def test_parity_with_torch_on_random_windows(runtimes):
    torch_rt, onnx_rt = runtimes
    schema = onnx_rt.bundle.schema
    rng = np.random.default_rng(7)
    windows = rng.standard_normal((200, schema.window, schema.n_features)).astype(np.float32)
    windows[:50] *= 5.0  # far outside the training range too
    assert _max_diff(onnx_rt.predict(windows), torch_rt.predict(windows)) < PARITY_ATOL


def test_batch_1_and_batch_2048(runtimes):
    torch_rt, onnx_rt = runtimes
    schema = onnx_rt.bundle.schema
    rng = np.random.default_rng(1)
    big = rng.standard_normal((2048, schema.window, schema.n_features)).astype(np.float32)
    out_big = onnx_rt.predict(big)
    out_one = onnx_rt.predict(big[0])  # a single (T, F) window
    assert out_big.shape == (2048, 3) and out_one.shape == (1, 3)
    assert np.isfinite(out_big).all() and ((out_big > 0) & (out_big < 1)).all()
    assert _max_diff(out_one, out_big[:1]) < PARITY_ATOL
    assert _max_diff(out_big[-64:], torch_rt.predict(big[-64:])) < PARITY_ATOL


def test_corrupted_onnx_is_refused_by_load_bundle(exported_copy):
    path = exported_copy / ONNX_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = bytes(b ^ 0xFF for b in data[len(data) // 2 :][:8])
    path.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match=r"model\.onnx does not match its sha256"):
        load_bundle(exported_copy)


def test_onnx_changed_after_loading_is_refused(exported_copy):
    bundle = load_bundle(exported_copy)
    (exported_copy / ONNX_FILE).write_bytes(b"not an onnx graph")
    with pytest.raises(BundleIntegrityError, match=r"model\.onnx does not match"):
        OnnxRuntime(bundle, "cpu")


def test_unparseable_onnx_is_an_integrity_error(exported_copy):
    # A file the manifest vouches for (re-signed) that onnxruntime cannot parse.
    (exported_copy / ONNX_FILE).write_bytes(b"\x08garbage" * 64)
    resign(exported_copy)
    with pytest.raises(BundleIntegrityError, match=r"onnxruntime cannot load model\.onnx"):
        OnnxRuntime(load_bundle(exported_copy), "cpu")


def test_bundle_without_onnx_says_how_to_export(exported_copy):
    manifest_path = exported_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["files"][ONNX_FILE], manifest["onnx"]
    manifest_path.write_text(json.dumps(manifest))
    (exported_copy / ONNX_FILE).unlink()
    resign(exported_copy)
    bundle = load_bundle(exported_copy)
    with pytest.raises(
        BundleError, match=r"has no model\.onnx; run `mlsignal export-onnx --bundle"
    ):
        OnnxRuntime(bundle, "cpu")


@pytest.mark.skipif(HAS_CUDA_EP, reason="onnxruntime here has the CUDA provider")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_the_cuda_provider_is_an_error(runtimes, device, monkeypatch):
    bundle = runtimes[1].bundle
    msg = (
        rf"{{}}='{device}' asks for CUDA, but onnxruntime {ort.__version__} "
        r"has no CUDAExecutionProvider \(providers: .*CPUExecutionProvider.*\); "
        r"install onnxruntime-gpu or use cpu"
    )
    monkeypatch.delenv("ML_INFERENCE_DEVICE", raising=False)
    with pytest.raises(DeviceUnavailableError, match=msg.format("device")):
        OnnxRuntime(bundle, device)  # an argument: named as such
    monkeypatch.setenv("ML_INFERENCE_DEVICE", device)
    with pytest.raises(DeviceUnavailableError, match=msg.format("ML_INFERENCE_DEVICE")):
        OnnxRuntime(bundle)  # the variable: named by its name


@pytest.mark.skipif(HAS_CUDA_EP, reason="onnxruntime here has the CUDA provider")
def test_auto_runs_on_cpu_without_the_cuda_provider(runtimes, monkeypatch):
    monkeypatch.delenv("ML_INFERENCE_DEVICE", raising=False)
    rt = OnnxRuntime(runtimes[1].bundle)
    assert rt.device == "cpu" and rt.session.get_providers() == ["CPUExecutionProvider"]


def test_bad_device_setting_is_a_config_error(runtimes):
    with pytest.raises(ConfigError, match="is not a device"):
        OnnxRuntime(runtimes[1].bundle, "tpu")


def test_thread_settings_are_applied(runtimes, monkeypatch):
    bundle = runtimes[1].bundle
    rt = OnnxRuntime(bundle, "cpu", intra_op_threads=1, inter_op_threads=2)
    opts = rt.session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (1, 2)
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # the environment is read at the edge (Settings.from_env), by load_runtime for libraries
    monkeypatch.setenv("ML_ONNX_INTRA_OP_THREADS", "2")
    monkeypatch.setenv("ML_ONNX_INTER_OP_THREADS", "1")
    opts = load_runtime(bundle, "cpu", "onnx").session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (2, 1)
    monkeypatch.setenv("ML_ONNX_INTRA_OP_THREADS", "many")
    with pytest.raises(ConfigError, match="ML_ONNX_INTRA_OP_THREADS='many'"):
        load_runtime(bundle, "cpu", "onnx")


def test_thread_settings_come_from_settings_not_the_environment(runtimes, monkeypatch):
    monkeypatch.setenv("ML_ONNX_INTRA_OP_THREADS", "many")  # not read: settings are given
    settings = Settings(onnx_intra_op_threads=1, onnx_inter_op_threads=2)
    rt = load_runtime(runtimes[1].bundle, "cpu", "onnx", settings=settings)
    opts = rt.session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (1, 2)
    assert (rt.backend, rt.parity_atol) == ("onnx", PARITY_ATOL)
    with pytest.raises(ConfigError, match="ML_ONNX_INTER_OP_THREADS must be a whole number"):
        OnnxRuntime(runtimes[1].bundle, "cpu", inter_op_threads=-1)


def test_importing_the_onnx_runtime_does_not_import_torch():
    code = (
        "import sys, mlsignal.runtime.onnx_runtime; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_export_parity_check_refuses_a_drifting_graph(exported):
    import torch

    from mlsignal.onnx_export import check_onnx_parity
    from mlsignal.runtime.torch_runtime import build_model

    bundle = load_bundle(exported)
    model = build_model(bundle, "cpu")
    with torch.no_grad():
        for p in model.lstm.parameters():  # torch now differs from the exported graph (p_lstm;
            p.add_(0.05)  # a flat calibration would hide a change of the stack alone)
    data = (exported / ONNX_FILE).read_bytes()
    with pytest.raises(ParityError, match=r"drifts from torch on golden: worst \|diff\|"):
        check_onnx_parity(data, model, bundle)


def test_reexport_is_idempotent(exported_copy):
    from mlsignal.onnx_export import export_onnx

    before = load_bundle(exported_copy)
    section = export_onnx(exported_copy)
    after = load_bundle(exported_copy)
    assert after.contract_hash == before.contract_hash
    assert after.manifest["onnx"] == section
    assert after.manifest["files"][ONNX_FILE] == sha256_file(exported_copy / ONNX_FILE)
    assert set(after.manifest["files"]) == set(before.manifest["files"])
    assert not list(exported_copy.glob(".*tmp*"))  # no temp files left behind
    assert check_parity(OnnxRuntime(after, "cpu")) < PARITY_ATOL


def test_cpu_defaults_follow_the_cpus_this_process_may_use(runtimes, monkeypatch):
    import os

    from mlsignal.runtime.onnx_runtime import cpu_count

    monkeypatch.delenv("ML_ONNX_INTRA_OP_THREADS", raising=False)
    monkeypatch.delenv("ML_ONNX_INTER_OP_THREADS", raising=False)
    opts = OnnxRuntime(runtimes[1].bundle, "cpu").session.get_session_options()
    assert cpu_count() == len(os.sched_getaffinity(0))
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (cpu_count(), 1)
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.enable_mem_pattern and opts.enable_cpu_mem_arena


def test_auto_backend_takes_onnx_on_cpu_when_the_bundle_has_it(exported, monkeypatch):
    from mlsignal.runtime.factory import has_onnx_model

    monkeypatch.delenv("ML_INFERENCE_BACKEND", raising=False)
    bundle = load_bundle(exported)
    assert has_onnx_model(bundle)
    assert load_runtime(bundle, "cpu", "auto").backend == "onnx"
    assert load_runtime(bundle, "cpu", None).backend == "onnx"
    # explicit choices are kept
    assert load_runtime(bundle, "cpu", "torch").backend == "torch"
    monkeypatch.setenv("ML_INFERENCE_BACKEND", "torch")
    assert load_runtime(bundle, "cpu", None).backend == "torch"
