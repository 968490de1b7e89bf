from __future__ import annotations

import json

import pytest

from mlsignal.cli.main import build_parser, main

COMMANDS = ["train", "enhance", "serve", "export-onnx", "bench", "demo", "doctor"]


@pytest.mark.parametrize("argv", [["--help"], *[[c, "--help"] for c in COMMANDS]])
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: mlsignal" in out


def test_parser_lists_every_command():
    help_text = build_parser().format_help()
    for c in COMMANDS:
        assert c in help_text


def test_enhance_json(tiny_bundle, tmp_path, sp500_bars, capsys):
    csv = tmp_path / "bars.csv"
    sp500_bars.iloc[-400:].rename(columns=str.upper).to_csv(csv, index_label="Date")
    assert main(["enhance", "--bundle", str(tiny_bundle), "--data", str(csv), "--ss", "20",
                 "--bs", "80", "--device", "cpu", "--json"]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"enhanced_ss", "enhanced_bs", "ml_info"}
    assert doc["ml_info"]["rule_ss"] == 20.0 and doc["ml_info"]["source"] == "local"


def test_enhance_table_with_rule_scores(tiny_bundle, capsys):
    assert (
        main(["enhance", "--bundle", str(tiny_bundle), "--data", "sp500", "--device", "cpu"]) == 0
    )
    out = capsys.readouterr().out
    assert "bull_prob" in out and "ss -> ess" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["enhance", "--bundle", "/nonexistent", "--data", "sp500"], "no bundle at /nonexistent"),
        (["enhance", "--data", "nope.txt"], "nope.txt"),
        (["enhance", "--data", "sp500,nasdaq"], "--data must name one data set"),
        (["train", "--data", "sp500", "--out", "x", "--device", "tpu"], "'tpu' is not a device"),
    ],
)
def test_errors_print_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mlsignal ") and message in err


def test_enhance_with_a_bad_score_exits_2(tiny_bundle, capsys):
    argv = ["enhance", "--bundle", str(tiny_bundle), "--data", "sp500", "--ss", "250"]
    assert main(argv) == 2
    assert "ss must be a number in 0..100" in capsys.readouterr().err


def test_doctor_json(capsys):
    assert main(["doctor", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for key in (
        "python",
        "torch",
        "cuda_available",
        "gpus",
        "cudnn",
        "onnx_providers",
        "auto_picks",
    ):
        assert key in doc


def test_doctor_shows_a_bad_device_setting(capsys, monkeypatch):
    monkeypatch.setenv("ML_INFERENCE_DEVICE", "gpu")
    assert main(["doctor"]) == 0
    assert "error:" in capsys.readouterr().out


def test_bench_smoke(tiny_bundle, capsys):
    """The bench command itself runs (numbers are not asserted: timing belongs in bench)."""
    argv = ["bench", "--bundle", str(tiny_bundle), "--quick", "--batches", "1,4", "--json"]
    argv += ["--no-server", "--no-paths"]  # the server benchmarks: test_bench_server.py
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["machine"]["python"] and doc["rows"]
    paths = {(r["what"], r["backend"], r["batch"]) for r in doc["rows"]}
    assert ("forward", "torch", 1) in paths and ("forward", "torch", 4) in paths
    assert ("enhance_signal", "torch", 1) in paths
    for r in doc["rows"]:
        assert r["median_ms"] > 0 and r["p99_ms"] >= r["median_ms"] and r["reps"] >= 5
        if r["backend"] == "torch":
            assert r["speedup_vs_torch_eager"] == 1.0


def test_bench_rejects_bad_batches(tiny_bundle, capsys):
    assert main(["bench", "--bundle", str(tiny_bundle), "--batches", "1,x"]) == 2
    assert "--batches must be comma-separated integers" in capsys.readouterr().err


#: Every command that takes --bundle (doctor has its own: it times a bundle only if one is
#: there), with the other arguments it requires.
BUNDLE_COMMANDS = {
    "enhance": ["--data", "sp500"],
    "serve": [],
    "export-onnx": [],
    "bench": [],
    "demo": [],
    "evaluate": ["--out", "report"],
    "live": ["--source", "bars.csv"],
    "export-triton": ["--out", "repo"],
}


@pytest.mark.parametrize("command", sorted(BUNDLE_COMMANDS))
def test_bundle_defaults_to_mlsignal_bundle_then_artifacts_quick(command, monkeypatch, capsys):
    from mlsignal.cli.options import DEFAULT_BUNDLE, resolve_bundle

    argv = [command, *BUNDLE_COMMANDS[command]]

    def bundle(*extra: str) -> str:
        args = build_parser().parse_args([*argv, *extra])
        resolve_bundle(args)
        return args.bundle

    monkeypatch.delenv("MLSIGNAL_BUNDLE", raising=False)
    assert bundle() == DEFAULT_BUNDLE == "artifacts/quick"
    monkeypatch.setenv("MLSIGNAL_BUNDLE", "/srv/mlsignal/bundles/b1")
    assert bundle() == "/srv/mlsignal/bundles/b1"
    assert bundle("--bundle", "mine") == "mine"  # the flag wins
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "$MLSIGNAL_BUNDLE" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("command", ["enhance", "export-onnx"])
def test_a_command_uses_mlsignal_bundle(command, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("MLSIGNAL_BUNDLE", str(tmp_path / "from-env"))
    assert main([command, *BUNDLE_COMMANDS[command]]) == 2
    assert f"no bundle at {tmp_path / 'from-env'}" in capsys.readouterr().err


def test_serve_help_names_the_grpc_port(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--grpc-port PORT" in out and "GRPCInferenceService" in out
    assert build_parser().parse_args(["serve"]).grpc_port is None  # off by default


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--grpc-port", "70000"], "--grpc-port must be in 0..65535"),
        (["--grpc-port", "8001", "--engine", "ray"], "--grpc-port is not supported with --engine"),
    ],
)
def test_serve_checks_the_grpc_port_before_loading(extra, message, capsys, tmp_path):
    argv = ["serve", "--bundle", str(tmp_path / "none"), *extra]
    assert main(argv) == 2  # the bundle does not exist: the flag is checked before loading
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_log_options_work_before_and_after_the_subcommand():
    from mlsignal.cli.main import build_parser

    p = build_parser()
    before = p.parse_args(["--log-level", "INFO", "train", "--out", "x"])
    after = p.parse_args(["train", "--out", "x", "--log-level", "DEBUG", "--log-json"])
    neither = p.parse_args(["serve"])
    assert (before.log_level, before.log_json) == ("INFO", False)
    assert (after.log_level, after.log_json) == ("DEBUG", True)
    assert (neither.log_level, neither.log_json) == ("WARNING", False)


def test_a_busy_machine_is_named_before_timings():
    from mlsignal.bench.machine import load_warning

    assert load_warning(cpus=2, load1=0.4) is None
    busy = load_warning(cpus=2, load1=3.5)
    assert busy.startswith("warning: load average 3.5 on 2 CPU(s)") and "timings" in busy


def test_ingress_calls_is_a_ray_flag(tmp_path, capsys):
    assert main(["serve", "--bundle", str(tmp_path), "--ingress-calls", "2"]) == 2
    assert "--ingress-calls only apply with --engine ray" in capsys.readouterr().err
