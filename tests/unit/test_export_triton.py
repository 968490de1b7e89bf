"""`mlsignal export-triton`: the repository layout, the config Triton reads, the model it runs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from bundle_helpers import other_model, resign
from mlsignal.bundle import load_bundle
from mlsignal.cli.main import main
from mlsignal.errors import BundleError, ConfigError
from mlsignal.signature import triton_version
from mlsignal.triton_export import export_triton

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


# --- a tiny protobuf text-format reader (no tritonclient needed) --------------------------
_TOKEN = re.compile(r'\s*(?:#[^\n]*\n?)*\s*("(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"#]+)')


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            break
        out.append(m.group(1))
        pos = m.end()
    return out


def _scalar(tok: str) -> object:
    if tok.startswith('"'):
        return json.loads(tok)
    try:
        return int(tok)
    except ValueError:
        return tok  # an enum name such as TYPE_FP32


def _message(toks: list[str], i: int, end: str | None) -> tuple[dict, int]:
    """Fields until ``end``; every field maps to the list of its values (repeated or not)."""
    fields: dict[str, list] = {}
    while i < len(toks) and toks[i] != end:
        name = toks[i]
        i += 1
        if toks[i] == ":":
            i += 1
        values = []
        if toks[i] == "[":
            i += 1
            while toks[i] != "]":
                value, i = _value(toks, i)
                values.append(value)
                if toks[i] == ",":
                    i += 1
            i += 1
        else:
            value, i = _value(toks, i)
            values.append(value)
        fields.setdefault(name, []).extend(values)
    return fields, i + 1


def _value(toks: list[str], i: int) -> tuple[object, int]:
    if toks[i] == "{":
        return _message(toks, i + 1, "}")
    return _scalar(toks[i]), i + 1


def parse_pbtxt(text: str) -> dict:
    fields, _ = _message(_tokens(text), 0, None)
    return fields


def test_the_parser_reads_nested_and_repeated_fields():
    doc = parse_pbtxt('a: 1 # note\nb [ { c: "x" d: [ 1, 2 ] }, { c: "y" } ]\ne { f: TYPE_FP32 }')
    assert doc == {
        "a": [1],
        "b": [{"c": ["x"], "d": [1, 2]}, {"c": ["y"]}],
        "e": [{"f": ["TYPE_FP32"]}],
    }


# --- export -------------------------------------------------------------------------------
def _config(model_dir: Path) -> dict:
    return parse_pbtxt((model_dir / "config.pbtxt").read_text())


def _listing(repo: Path) -> list[str]:
    return sorted(str(p.relative_to(repo)) for p in repo.rglob("*"))


def test_repository_layout_config_and_model(tiny_bundle: Path, tmp_path: Path):
    repo = tmp_path / "repo"
    summary = export_triton(tiny_bundle, repo)
    bundle = load_bundle(tiny_bundle)
    version = triton_version(bundle.contract_hash)
    assert version == int(bundle.contract_hash[:15], 16) and 0 < version < 2**63
    assert summary["version"] == version and summary["versions"] == [version]
    assert _listing(repo) == sorted(
        [
            "mlsignal",
            "mlsignal/config.pbtxt",
            f"mlsignal/{version}",
            f"mlsignal/{version}/mlsignal.json",
            f"mlsignal/{version}/model.onnx",
        ]
    )  # no temporary directories left behind
    onnx_file = repo / "mlsignal" / str(version) / "model.onnx"
    assert onnx_file.read_bytes() == (tiny_bundle / "model.onnx").read_bytes()
    label = json.loads((repo / "mlsignal" / str(version) / "mlsignal.json").read_text())
    assert label["contract_hash"] == bundle.contract_hash
    assert label["model_version"] == bundle.model_version and label["triton_version"] == version

    cfg = _config(repo / "mlsignal")
    assert cfg["name"] == ["mlsignal"] and cfg["platform"] == ["onnxruntime_onnx"]
    assert cfg["max_batch_size"] == [1024]
    assert cfg["version_policy"] == [{"specific": [{"versions": [version]}]}]
    window, n_features = bundle.schema.window, bundle.schema.n_features
    assert cfg["input"] == [
        {"name": ["windows"], "data_type": ["TYPE_FP32"], "dims": [window, n_features]}
    ]
    assert [o["name"] for o in cfg["output"]] == [["p_lstm"], ["p_tft"], ["bull_prob"]]
    for out in cfg["output"]:  # (B,) outputs: dims [1] reshaped to a scalar per item
        assert out["data_type"] == ["TYPE_FP32"] and out["dims"] == [1]
        assert out["reshape"] == [{"shape": []}]
    assert cfg["dynamic_batching"] == [
        {"preferred_batch_size": [256, 1024], "max_queue_delay_microseconds": [500]}
    ]
    assert cfg["instance_group"] == [{"count": [1], "kind": ["KIND_GPU"]}]
    params = {p["key"][0]: p["value"][0]["string_value"][0] for p in cfg["parameters"]}
    assert params[f"contract_hash_{version}"] == bundle.contract_hash
    assert params["mlsignal_model_version"] == bundle.model_version
    assert "docs/BENCHMARKS.md" in (repo / "mlsignal" / "config.pbtxt").read_text()


def test_the_exported_model_gives_the_bundles_outputs(tiny_bundle: Path, tmp_path: Path):
    summary = export_triton(tiny_bundle, tmp_path / "repo", name="signals")
    path = Path(summary["model_dir"]) / str(summary["version"]) / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with np.load(tiny_bundle / "golden.npz") as golden:
        inputs, expected = golden["inputs"].astype(np.float32), golden["expected"]
    got = np.stack(session.run(["p_lstm", "p_tft", "bull_prob"], {"windows": inputs}), axis=1)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5
    from mlsignal.runtime import load_runtime

    runtime = load_runtime(load_bundle(tiny_bundle), "cpu", "onnx")
    assert np.array_equal(got, runtime.predict(inputs))  # the same bytes, the same numbers


def test_cpu_kind_and_overrides(tiny_bundle: Path, tmp_path: Path):
    summary = export_triton(
        tiny_bundle, tmp_path / "repo", kind="cpu", max_batch=64, instances=2, queue_delay_us=0
    )
    cfg = _config(Path(summary["model_dir"]))
    assert cfg["max_batch_size"] == [64]
    assert cfg["dynamic_batching"] == [
        {"preferred_batch_size": [16], "max_queue_delay_microseconds": [0]}
    ]
    assert cfg["instance_group"] == [{"count": [2], "kind": ["KIND_CPU"]}]
    with pytest.raises(ConfigError, match="max-batch"):
        export_triton(tiny_bundle, tmp_path / "r2", max_batch=0)
    with pytest.raises(ConfigError, match="name"):
        export_triton(tiny_bundle, tmp_path / "r3", name="../x")


def test_another_version_is_refused_unless_add_or_force(tiny_bundle: Path, tmp_path: Path):
    repo = tmp_path / "repo"
    first = export_triton(tiny_bundle, repo)
    again = export_triton(tiny_bundle, repo)  # the same bundle again: fine, nothing changes
    assert again["versions"] == first["versions"]
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    newer = other_model(tiny_bundle, tmp_path / "newer")
    v_new = triton_version(load_bundle(newer).contract_hash)
    with pytest.raises(BundleError, match=r"--add .* --force"):
        export_triton(newer, repo)
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before  # untouched

    both = export_triton(newer, repo, add=True)  # a rollout: serve both side by side
    assert both["versions"] == sorted([first["version"], v_new])
    cfg = _config(repo / "mlsignal")
    assert cfg["version_policy"] == [{"specific": [{"versions": sorted(both["versions"])}]}]
    keys = {p["key"][0] for p in cfg["parameters"]}
    assert {f"contract_hash_{first['version']}", f"contract_hash_{v_new}"} <= keys
    assert not [p for p in (repo / "mlsignal").iterdir() if p.name.startswith(".")]

    only = export_triton(tiny_bundle, repo, force=True)
    assert only["versions"] == [first["version"]]
    assert sorted(p.name for p in (repo / "mlsignal").iterdir()) == sorted(
        ["config.pbtxt", str(first["version"])]
    )
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]  # no temp or old dirs


def test_a_foreign_version_directory_is_refused(tiny_bundle: Path, tmp_path: Path):
    repo = tmp_path / "repo"
    (repo / "mlsignal" / "1").mkdir(parents=True)
    (repo / "mlsignal" / "1" / "model.onnx").write_bytes(b"not ours")
    with pytest.raises(BundleError, match="not written by mlsignal"):
        export_triton(tiny_bundle, repo, add=True)


def test_cli(tiny_bundle: Path, bundle_copy: Path, tmp_path: Path, capsys):
    repo = tmp_path / "repo"
    assert main(["export-triton", "--bundle", str(tiny_bundle), "--out", str(repo), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["contract_hash"] == load_bundle(tiny_bundle).contract_hash
    assert (repo / "mlsignal" / str(doc["version"]) / "model.onnx").is_file()
    # A bundle without model.onnx: one line naming the fix, exit 2.
    (bundle_copy / "model.onnx").unlink()
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    del manifest["files"]["model.onnx"]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    resign(bundle_copy)
    code = main(["export-triton", "--bundle", str(bundle_copy), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "export-onnx" in err and len(err.strip().splitlines()) == 1
    shutil.rmtree(tmp_path / "r", ignore_errors=True)
