from __future__ import annotations

import pytest
import torch

from mlsignal.config import Settings, check_device_spec, resolve_device
from mlsignal.errors import ConfigError, DeviceUnavailableError


def test_defaults_from_empty_env():
    s = Settings.from_env({})
    assert (s.device, s.backend, s.api_urls, s.api_key, s.timeout_s) == (
        "auto",
        "auto",
        (),
        None,
        3.0,
    )


def test_env_is_read_and_normalised():
    s = Settings.from_env(
        {
            "ML_INFERENCE_DEVICE": " CUDA:1 ",
            "ML_INFERENCE_BACKEND": "onnx",
            "GPU_INFERENCE_API_URL": "https://a:8000, https://b:8000,",
            "GPU_INFERENCE_API_KEY": "s3cret",
            "GPU_INFERENCE_TIMEOUT": "4.5",
        }
    )
    assert s.device == "cuda:1" and s.backend == "onnx"
    assert s.api_urls == ("https://a:8000", "https://b:8000")
    assert s.timeout_s == 4.5
    assert "s3cret" not in repr(s)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ML_INFERENCE_DEVICE": "gpu"}, "ML_INFERENCE_DEVICE='gpu' is not a device"),
        ({"ML_INFERENCE_DEVICE": "cuda:x"}, "is not a device"),
        ({"ML_INFERENCE_BACKEND": "tensorrt"}, "'tensorrt' is not a backend"),
        ({"GPU_INFERENCE_TIMEOUT": "soon"}, "GPU_INFERENCE_TIMEOUT='soon' is not a number"),
        ({"GPU_INFERENCE_TIMEOUT": "0"}, "must be a positive number"),
    ],
)
def test_bad_settings_are_errors(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Settings.from_env(env)


def test_resolve_cpu_and_auto():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")


def test_resolve_reads_env(monkeypatch):
    monkeypatch.setenv("ML_INFERENCE_DEVICE", "cpu")
    assert resolve_device(None) == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_a_clear_error(spec):
    with pytest.raises(DeviceUnavailableError, match="sees no CUDA device"):
        resolve_device(spec)


def test_unknown_device_is_config_error():
    with pytest.raises(ConfigError, match="choose one of auto, cpu, cuda, cuda:N"):
        check_device_spec("tpu")


def test_auto_backend_is_torch_when_installed_and_explicit_values_pass():
    from mlsignal.config import resolve_backend

    assert resolve_backend("auto") == "torch"  # torch is installed in the dev venv
    assert resolve_backend("onnx") == "onnx" and resolve_backend("TORCH") == "torch"
    with pytest.raises(ConfigError, match="'trt' is not a backend"):
        resolve_backend("trt")


def test_auto_backend_rule():
    from mlsignal.config import resolve_backend

    cpu_gpu = "cpu" if not torch.cuda.is_available() else "cuda"
    assert resolve_backend("auto", device="cpu", onnx_model=True) == "onnx"
    assert resolve_backend("auto", device="cpu", onnx_model=False) == "torch"
    # on CUDA the torch backend (CUDA graphs) stays the choice
    expected = "onnx" if cpu_gpu == "cpu" else "torch"
    assert resolve_backend("auto", device="auto", onnx_model=True) == expected
    assert resolve_backend("torch", device="cpu", onnx_model=True) == "torch"
    assert resolve_backend("onnx", device="cpu", onnx_model=False) == "onnx"


def test_runtime_knobs_from_env():
    s = Settings.from_env({})
    assert (s.cuda_graphs, s.gpu_precision, s.bundle) == (True, "fp32", None)
    assert (s.onnx_intra_op_threads, s.onnx_inter_op_threads) == (None, None)
    s = Settings.from_env(
        {
            "ML_CUDA_GRAPHS": " Off ",
            "ML_GPU_PRECISION": " BF16 ",
            "ML_ONNX_INTRA_OP_THREADS": "2",
            "ML_ONNX_INTER_OP_THREADS": "0",
            "MLSIGNAL_BUNDLE": " /srv/bundles/b1 ",
        }
    )
    assert (s.cuda_graphs, s.gpu_precision, s.bundle) == (False, "bf16", "/srv/bundles/b1")
    assert (s.onnx_intra_op_threads, s.onnx_inter_op_threads) == (2, 0)
    assert "bf16" in repr(s) and "/srv/bundles/b1" in repr(s)
    for on in ("1", "true", "yes", "on", ""):
        assert Settings.from_env({"ML_CUDA_GRAPHS": on}).cuda_graphs


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ML_CUDA_GRAPHS": "maybe"}, "ML_CUDA_GRAPHS='maybe': use 1 or 0"),
        ({"ML_GPU_PRECISION": "fp8"}, "ML_GPU_PRECISION='fp8' is not a precision"),
        ({"ML_ONNX_INTRA_OP_THREADS": "many"}, "ML_ONNX_INTRA_OP_THREADS='many' is not a whole"),
        ({"ML_ONNX_INTER_OP_THREADS": "-1"}, "ML_ONNX_INTER_OP_THREADS must be a whole number"),
    ],
)
def test_bad_runtime_knobs_are_errors_naming_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_runtime_knobs_are_checked_for_api_users_too():
    with pytest.raises(ConfigError, match="ML_GPU_PRECISION='FP16' is not a precision"):
        Settings(gpu_precision="FP16")
    with pytest.raises(ConfigError, match="ML_CUDA_GRAPHS='yes': use 1 or 0"):
        Settings(cuda_graphs="yes")
    with pytest.raises(ConfigError, match="ML_ONNX_INTRA_OP_THREADS must be a whole number"):
        Settings(onnx_intra_op_threads=1.5)
    with pytest.raises(ConfigError, match="MLSIGNAL_BUNDLE='' is not a bundle directory"):
        Settings(bundle="")


def test_cuda_graphs_follow_the_settings_not_the_environment(monkeypatch):
    from mlsignal.runtime.factory import _cuda_graphs_wanted

    monkeypatch.setenv("ML_CUDA_GRAPHS", "maybe")  # never read: the settings say
    assert not _cuda_graphs_wanted("cpu", Settings(cuda_graphs=True))  # CPU: never graphs
    assert not _cuda_graphs_wanted("auto", Settings(cuda_graphs=False))
    assert _cuda_graphs_wanted("auto", Settings()) == torch.cuda.is_available()


def test_server_config_checks_itself_for_api_users_and_the_cli():
    from mlsignal.server.state import ServerConfig

    assert ServerConfig().max_batch == 256
    cases = [
        ({"max_batch": 0}, r"max_batch \(--max-batch\) must be a whole number >= 1, got 0"),
        ({"threads": 1.5}, r"threads \(--threads\) must be a whole number >= 1"),
        ({"max_inflight": 0}, r"max_inflight \(--max-inflight\) must be a whole number >= 1"),
        ({"default_deadline_ms": 0}, r"default_deadline_ms \(--request-timeout-ms\) must be"),
        ({"max_wait_ms": -1.0}, r"max_wait_ms \(--max-wait-ms\) must be >= 0, got -1.0"),
        ({"max_wait_ms": float("nan")}, r"max_wait_ms \(--max-wait-ms\) must be >= 0"),
        ({"max_body_bytes": 0}, r"max_body_bytes \(--max-body-mb\) must be > 0, got 0 bytes"),
        ({"inline_windows": -1}, "inline_windows must be a whole number >= 0"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            ServerConfig(**kwargs)


def test_one_max_wait_default_everywhere():
    import inspect

    from mlsignal.cli.main import build_parser
    from mlsignal.config import DEFAULT_MAX_WAIT_MS
    from mlsignal.server.batcher import Batcher
    from mlsignal.server.state import ServerConfig

    batcher_default = inspect.signature(Batcher).parameters["max_wait_ms"].default
    cli_default = build_parser().parse_args(["serve"]).max_wait_ms
    assert ServerConfig().max_wait_ms == batcher_default == cli_default == DEFAULT_MAX_WAIT_MS
    assert Batcher().max_wait_s == DEFAULT_MAX_WAIT_MS / 1e3


def test_cli_server_limits_are_checked_by_server_config(capsys):
    from mlsignal.cli.main import main

    assert main(["serve", "--max-batch", "0"]) == 2
    assert "max_batch (--max-batch) must be a whole number >= 1, got 0" in capsys.readouterr().err
    assert main(["serve", "--max-body-mb", "nan"]) == 2
    assert "--max-body-mb must be a positive number of MiB" in capsys.readouterr().err
