"""`mlsignal doctor`: the advice rules (pure functions, given versions) and a real run here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mlsignal.bench.machine import NvidiaInfo, parse_nvidia_smi
from mlsignal.cli.doctor_advice import (
    FIX,
    OK,
    WARN,
    onnx_advice,
    torch_advice,
    torch_index_for,
    version_tuple,
)
from mlsignal.cli.doctor_measure import (
    Measurement,
    auto_verdict,
    gpu_verdict,
    speed_advice,
    winner_lines,
)
from mlsignal.cli.main import main
from torch_block import CLI_WITHOUT_TORCH

# The shape of real `nvidia-smi` and `nvidia-smi -L` output (header lines and one GPU line).
SMI_HEADER = """Wed Nov 26 10:00:00 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 580.95.05              Driver Version: 580.95.05      CUDA Version: 13.0     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
"""
SMI_LIST = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5f2c0f3e-8d7a-4b1e-9c55-0a1b2c3d4e5f)\n"

T4_DRIVER_12_4 = NvidiaInfo("550.54.15", "12.4", ("Tesla T4",))


def levels(advice):
    return [a.level for a in advice]


def test_parse_nvidia_smi():
    info = parse_nvidia_smi(SMI_HEADER, SMI_LIST + SMI_LIST.replace("GPU 0", "GPU 1"))
    assert info.driver == "580.95.05" and info.cuda == "13.0"
    assert info.gpus == ("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3")
    assert "2 NVIDIA GPU(s) (NVIDIA H100 80GB HBM3)" in info.describe()
    empty = parse_nvidia_smi("NVIDIA-SMI has failed because it couldn't communicate", "")
    assert empty == NvidiaInfo(None, None, ())


@pytest.mark.parametrize(
    ("driver_cuda", "index"),
    [
        ("13.0", "cu130"),
        ("12.4", "cu124"),
        ("12.2", "cu121"),
        ("12.8", "cu128"),
        ("11.4", None),
        (None, None),
    ],
)
def test_torch_index_for_the_driver(driver_cuda, index):
    assert torch_index_for(driver_cuda) == index


def test_version_tuple():
    assert version_tuple("12.8") == (12, 8) and version_tuple("2.13.0+cu130") == (2, 13)
    assert version_tuple(None) is None and version_tuple("none") is None


def test_cpu_only_torch_on_a_gpu_machine_says_which_build_to_install():
    [advice] = torch_advice("2.13.0+cpu", None, False, T4_DRIVER_12_4)
    assert advice.level == FIX
    assert "CPU-only build" in advice.text and "Tesla T4" in advice.text
    assert "https://download.pytorch.org/whl/cu124" in advice.text


def test_torch_built_for_a_newer_cuda_major_than_the_driver():
    [advice] = torch_advice("2.11.0+cu130", "13.0", False, T4_DRIVER_12_4)
    assert advice.level == FIX
    assert "supports only CUDA 12.4" in advice.text and "update the driver" in advice.text
    assert "whl/cu124" in advice.text


def test_a_newer_minor_version_is_a_warning_not_an_error():
    advice = torch_advice("2.8.0+cu128", "12.8", True, T4_DRIVER_12_4)
    assert levels(advice) == [WARN, OK]
    assert "minor-version compatibility" in advice[0].text


def test_gpu_listed_but_not_seen_by_torch():
    advice = torch_advice("2.8.0+cu124", "12.4", False, T4_DRIVER_12_4, visible_devices="")
    assert levels(advice) == [FIX]
    assert "sees no CUDA device" in advice[0].text and "CUDA_VISIBLE_DEVICES=''" in advice[0].text


def test_matching_versions_are_ok():
    [advice] = torch_advice("2.8.0+cu124", "12.4", True, T4_DRIVER_12_4)
    assert advice.level == OK and "Tesla T4" in advice.text


def test_no_gpu_cases():
    assert levels(torch_advice("2.13.0+cpu", None, False, None)) == [OK]
    [cuda_build] = torch_advice("2.11.0+cu130", "13.0", False, None)
    assert cuda_build.level == OK and "runs on the CPU" in cuda_build.text
    assert levels(torch_advice(None, None, False, None)) == [OK]
    [no_torch_gpu] = torch_advice(None, None, False, T4_DRIVER_12_4)
    assert no_torch_gpu.level == WARN and "whl/cu124" in no_torch_gpu.text


def test_onnx_runtime_without_its_cuda_provider_on_a_gpu_machine():
    [advice] = onnx_advice(
        "1.32.0", ["AzureExecutionProvider", "CPUExecutionProvider"], T4_DRIVER_12_4
    )
    assert advice.level == WARN and "onnxruntime-gpu" in advice.text
    assert "pip uninstall -y onnxruntime" in advice.text


def test_onnx_runtime_other_cases():
    gpu_ep = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert levels(onnx_advice("1.22.0", gpu_ep, T4_DRIVER_12_4)) == [OK]
    [no_gpu] = onnx_advice("1.22.0", gpu_ep, None)
    assert no_gpu.level == WARN and "ML_INFERENCE_DEVICE=cpu" in no_gpu.text
    [missing] = onnx_advice(None, [], None)
    assert missing.level == WARN and "mlsignal[client]" in missing.text
    assert levels(onnx_advice("1.32.0", ["CPUExecutionProvider"], None)) == [OK]


def row(backend, device, batch, ms):
    return {"backend": backend, "device": device, "batch": batch, "median_ms": ms, "reps": 9}


# Shaped like docs/BENCHMARKS.md's H200 rows: launch-bound CUDA at small batches.
H200_LIKE = [
    row("torch", "cpu", 1, 2.28),
    row("torch", "cpu", 16, 6.44),
    row("torch", "cpu", 64, 20.1),
    row("onnx", "cpu", 1, 1.02),
    row("onnx", "cpu", 16, 3.28),
    row("onnx", "cpu", 64, 9.5),
    row("torch", "cuda:0", 1, 1.52),
    row("torch", "cuda:0", 16, 1.60),
    row("torch", "cuda:0", 64, 1.9),
]


def test_winner_lines_group_batch_sizes_with_the_same_fastest_path():
    lines = winner_lines(H200_LIKE)
    assert [a.text.split(",")[0] for a in lines] == [
        "for 1 symbol per bar",
        "for 16-64 symbols per bar",
    ]
    assert "onnx on cpu is fastest here (1.02 ms at batch 1 vs 1.52 ms for torch on cuda:0)" in (
        lines[0].text
    )
    assert "torch on cuda:0 is fastest" in lines[1].text


def test_a_tie_keeps_the_previous_winner():
    rows = [
        row("torch+graphs", "cuda:0", 1, 0.28),
        row("torch", "cuda:0", 1, 0.30),
        row("torch+graphs", "cuda:0", 16, 0.30),
        row("torch", "cuda:0", 16, 0.29),
        row("torch+graphs", "cuda:0", 64, 0.80),
        row("torch", "cuda:0", 64, 0.40),
    ]
    lines = winner_lines(rows)
    assert len(lines) == 2
    assert lines[0].text.startswith("for 1-16 symbols per bar, torch+graphs on cuda:0")
    assert "about as fast: 0.30 ms for torch on cuda:0" in lines[0].text
    assert lines[1].text.startswith("for 64 symbols per bar, torch on cuda:0")
    assert " vs 0.80 ms for torch+graphs" in lines[1].text


def test_gpu_verdict():
    assert "faster from 16 symbol(s)" in gpu_verdict(H200_LIKE).text
    cpu_wins = [r for r in H200_LIKE if r["batch"] == 1]
    verdict = gpu_verdict(cpu_wins)
    assert verdict.level == WARN and "not faster" in verdict.text
    assert gpu_verdict([r for r in H200_LIKE if r["device"] == "cpu"]) is None


def test_auto_verdict_names_the_faster_setting():
    slow = auto_verdict(H200_LIKE, "torch", "cuda:0", 1)
    assert slow.level == FIX and "1.5x slower" in slow.text
    assert "ML_INFERENCE_DEVICE=cpu ML_INFERENCE_BACKEND=onnx" in slow.text
    assert auto_verdict(H200_LIKE, "torch", "cuda:0", 64).level == OK
    assert auto_verdict(H200_LIKE, "onnx", "cuda:0", 1).level == WARN  # not measured


def test_speed_advice_when_nothing_ran():
    [advice] = speed_advice(Measurement([], ["onnx on cpu: no model.onnx"]), None, None, 1)
    assert advice.level == WARN and "no model.onnx" in advice.text


def test_doctor_measures_and_advises_on_this_machine(tiny_bundle, capsys):
    assert main(["doctor", "--bundle", str(tiny_bundle)]) == 0
    out = capsys.readouterr().out
    for line in ("torch ", "auto_picks", "advice", "measured", "onnx on cpu", "is fastest here"):
        assert line in out
    assert "model forward only" in out


def test_doctor_json_has_advice_and_measurements(tiny_bundle, capsys):
    argv = ["doctor", "--json", "--bundle", str(tiny_bundle), "--symbols", "3"]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["advice"] and {a["level"] for a in doc["advice"]} <= {OK, WARN, FIX}
    m = doc["measure"]
    assert 3 in m["batches"] and m["bundle"] == str(tiny_bundle)
    measured = {(r["backend"], r["batch"]) for r in m["rows"]}
    assert ("torch", 1) in measured and ("onnx", 1) in measured
    assert all(r["median_ms"] > 0 and r["reps"] >= 3 for r in m["rows"])
    assert any(a["text"].startswith("auto picks") or "picks" in a["text"] for a in m["advice"])
    assert doc["auto_backend"] in ("torch", "onnx")
    assert doc["auto_picks"] == ("cuda:0" if doc["cuda_available"] else "cpu")


def test_doctor_no_measure_and_bad_input(tmp_path, capsys):
    assert main(["doctor", "--json", "--no-measure"]) == 0
    assert json.loads(capsys.readouterr().out)["measure"] == {"skipped": "--no-measure"}
    assert main(["doctor", "--bundle", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "nope" in err
    assert main(["doctor", "--symbols", "0", "--bundle", str(tmp_path)]) == 2
    assert "--symbols must be at least 1" in capsys.readouterr().err


def test_doctor_on_a_torch_free_host(tiny_bundle):
    """A torch-free host (`pip install mlsignal[client]`): torch neither imports nor is found."""
    argv = ["doctor", "--json", "--bundle", str(tiny_bundle)]
    run = subprocess.run(
        [sys.executable, "-c", CLI_WITHOUT_TORCH, *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["torch"] is None and doc["auto_backend"] == "onnx" and doc["auto_picks"] == "cpu"
    assert {r["backend"] for r in doc["measure"]["rows"]} == {"onnx"}
