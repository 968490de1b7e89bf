"""`mlsignal serve --engine ray` end to end: a local Ray cluster on loopback, two CPU replicas.

One Ray application is shared by the module (Ray's start-up is slow on a small VM). A second
`mlsignal serve --engine ray --address ...` process joins the same cluster with a bundle whose
golden parity fails: its application must never become ready and the command must fail.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from bundle_helpers import other_model, resign
from mlsignal import wire
from mlsignal.bundle import load_bundle
from mlsignal.enhancer import MLSignalEnhancer, SignalRequest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install mlsignal[ray])")

pytestmark = pytest.mark.slow

KEY = "ray-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
APP = f"mlsignal-test-{os.getpid()}"  # unique: replica process titles name it
#: Ray 2.5x+ turns token auth on for a new local cluster; a process that joins it by address
#: must say so (the token itself is read from ~/.ray/auth_token).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}


# --- fixtures and helpers -----------------------------------------------------------------
@pytest.fixture(scope="module")
def keys_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text(f"{KEY}\n")
    return path


@pytest.fixture(scope="module")
def ray_srv(tiny_bundle: Path, keys_file: Path, tmp_path_factory, server_class) -> Iterator:
    """Two model replicas (half a CPU each) and one ingress on a local 3-CPU Ray cluster."""
    server = server_class(
        tiny_bundle,
        "--engine", "ray", "--replicas", "2", "--cpus-per-replica", "0.5", "--device", "cpu",
        "--ray-num-cpus", "3", "--app-name", APP, "--api-key-file", str(keys_file),
        env=RAY_ENV, log_dir=tmp_path_factory.mktemp("logs"),
    )  # fmt: skip
    server.start(timeout_s=180)
    yield server
    assert server.stop(timeout_s=90) == 0, server.output()
    assert KEY not in server.output()
    server.close()


@pytest.fixture(scope="module")
def http(ray_srv) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ray_srv.url, headers=AUTH, timeout=20.0) as client:
        yield client


def replica_pids(app: str = APP) -> list[int]:
    """Pids of the live model replicas of ``app`` (Ray titles them ServeReplica:app:name)."""
    title = f"ray::ServeReplica:{app}:mlsignal-model".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().split(") ")[-1][:1]
        except OSError:
            continue
        if cmdline.startswith(title) and state != "Z":
            pids.append(int(entry.name))
    return sorted(pids)


def wait_for(predicate, timeout_s: float, what: str) -> None:
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def remote(bundle: Path, url: str, **kw) -> MLSignalEnhancer:
    kw.setdefault("timeout_s", 3.0)
    return MLSignalEnhancer(bundle, remote_urls=[url], api_key=KEY, **kw)


# --- the same API as `mlsignal serve` -----------------------------------------------------
def test_same_api_health_models_and_keys(ray_srv, http, tiny_bundle, sp500_bars):
    assert httpx.get(f"{ray_srv.url}/readyz").status_code == 200  # probes need no key
    assert httpx.get(f"{ray_srv.url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{ray_srv.url}/v1/models").status_code == 401
    doc = http.get("/v1/models").json()
    bundle = load_bundle(tiny_bundle)
    assert (doc["contract_hash"], doc["model_version"]) == (
        bundle.contract_hash,
        bundle.model_version,
    )
    # the same auto rule as `mlsignal serve`: onnx on the CPU when the bundle has model.onnx
    assert (doc["device"], doc["backend"], doc["ready"]) == ("cpu", "onnx", True)
    assert doc["parity_checked"] is True and doc["parity_worst_diff"] <= 1e-5
    assert len(replica_pids()) == 2
    body = wire.dumps({"symbols": [{"symbol": "X", "bars": wire.encode_bars(sp500_bars[-300:])}]})
    assert http.post("/v1/enhance", content=body).status_code == 200
    metrics = http.get("/metrics").text
    assert 'mlsignal_requests_total{route="/v1/enhance",status="200"}' in metrics
    reload = http.post("/v1/admin/reload")
    assert reload.status_code == 409 and "--engine ray" in reload.json()["error"]


def test_remote_equals_local(ray_srv, http, tiny_bundle, local, bars_stream):
    enh = remote(tiny_bundle, ray_srv.url)
    for bars in bars_stream[:8]:  # one at a time: each batched alone, so bit for bit
        r = enh.enhance_signal(bars, 35.0, 55.0)
        m = local.enhance_signal(bars, 35.0, 55.0)
        assert r[:2] == m[:2]
        for key in ("bull_prob", "p_lstm", "p_tft", "regime_vol", "regime", "kelly", "bar_ts"):
            assert r[2][key] == m[2][key], key
        assert r[2]["source"] == "remote" and r[2]["endpoint"] == ray_srv.url
    batch = enh.enhance_batch(
        [SignalRequest("A", bars_stream[0], None, None), SignalRequest("B", bars_stream[-1], 9, 90)]
    )
    assert [b.ml_info["source"] for b in batch] == ["remote", "remote"]
    want = local.enhance_signal(bars_stream[-1], 9, 90)[2]["bull_prob"]
    assert abs(batch[1].ml_info["bull_prob"] - want) <= 1e-6  # batched with A: float32 rounding
    enh.close()
    golden = np.load(tiny_bundle / "golden.npz")["inputs"].astype(np.float32)
    v1 = http.post("/v1/predict", content=wire.dumps({"windows": golden}))
    out = np.asarray(v1.json()["outputs"])
    expected = np.load(tiny_bundle / "golden.npz")["expected"]
    assert out.shape == (len(golden), 3) and np.abs(out - expected).max() <= 1e-5
    tensor = {"name": "windows", "shape": list(golden.shape), "datatype": "FP32"}
    v2 = http.post(
        "/v2/models/mlsignal/infer", content=wire.dumps({"inputs": [{**tensor, "data": golden}]})
    )
    assert v2.status_code == 200, v2.text
    assert v2.json()["outputs"][2]["data"] == out[:, 2].tolist()


def test_killed_replica_is_replaced_and_no_bar_is_lost(ray_srv, tiny_bundle, bars_stream):
    before = replica_pids()
    assert len(before) == 2
    results: list[dict] = []
    errors: list[BaseException] = []
    started = threading.Barrier(4)

    def trader(k: int) -> None:
        enh = remote(tiny_bundle, ray_srv.url, timeout_s=2.0)
        try:
            started.wait()
            for bars in bars_stream[k * 8 : k * 8 + 8]:
                results.append(enh.enhance_signal(bars, 20.0, 70.0)[2])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            enh.close()

    threads = [threading.Thread(target=trader, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    started.wait()
    time.sleep(0.3)  # under load
    os.kill(before[0], signal.SIGKILL)
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 3 * 8  # every bar answered
    sources = [r["source"] for r in results]
    assert set(sources) <= {"remote", "fallback"} and "remote" in sources
    assert all(r["fallback_reason"] for r in results if r["source"] == "fallback")
    wait_for(lambda: len(replica_pids()) == 2, 90, "Serve to replace the killed replica")
    assert before[0] not in replica_pids()
    after = remote(tiny_bundle, ray_srv.url)
    infos = [after.enhance_signal(bars, 20.0, 70.0)[2] for bars in bars_stream[:6]]
    assert {i["source"] for i in infos} == {"remote"}
    after.close()
    assert httpx.get(f"{ray_srv.url}/readyz").status_code == 200


# --- readiness only after every replica passed the parity gate ----------------------------
@pytest.fixture
def broken_bundle(bundle_copy: Path) -> Path:
    """A bundle whose golden outputs no longer match its model (hashes re-signed)."""
    with np.load(bundle_copy / "golden.npz") as g:
        golden = dict(g)
    golden["expected"] = golden["expected"] + np.float32(0.01)
    np.savez(bundle_copy / "golden.npz", **golden)
    resign(bundle_copy)
    return bundle_copy


def cluster_address(ray_srv) -> str:
    """The address the module's server logged for its local cluster."""
    found = re.search(r"address=(\S+)", ray_srv.output())
    assert found, ray_srv.output()
    return found.group(1)


def test_a_bundle_failing_parity_never_becomes_ready(
    ray_srv, broken_bundle, keys_file, server_class, tmp_path
):
    address = cluster_address(ray_srv)
    app = f"broken-{os.getpid()}"
    failing = server_class(
        broken_bundle,
        "--engine", "ray", "--address", address, "--replicas", "1",
        "--cpus-per-replica", "0.5", "--device", "cpu", "--app-name", app,
        "--route-prefix", "/broken", "--api-key-file", str(keys_file),
        port=ray_srv.port, env=RAY_ENV, log_dir=tmp_path,
    )  # fmt: skip
    failing.start(wait_ready=False)
    ready_codes = set()
    t_end = time.monotonic() + 150
    try:
        while failing.running() and time.monotonic() < t_end:
            with contextlib.suppress(httpx.HTTPError):
                ready_codes.add(httpx.get(f"{ray_srv.url}/broken/readyz", timeout=2).status_code)
            time.sleep(0.2)
        code = failing.wait(timeout_s=120)
    finally:
        failing.close()
    assert 200 not in ready_codes
    assert code == 2, failing.output()
    assert "ParityError" in failing.output() and "golden" in failing.output()
    assert replica_pids(app) == []  # nothing left behind
    assert httpx.get(f"{ray_srv.url}/readyz").status_code == 200  # the good app is untouched


# --- a rollout: a second application beside the first, same cluster -----------------------
def test_blue_green_application_on_the_same_cluster(
    ray_srv, tiny_bundle, keys_file, server_class, tmp_path, bars_stream
):
    green_bundle = other_model(tiny_bundle, tmp_path / "green-bundle")
    app = f"green-{os.getpid()}"
    green = server_class(
        green_bundle,
        "--engine", "ray", "--address", cluster_address(ray_srv), "--replicas", "1",
        "--cpus-per-replica", "0.5", "--device", "cpu", "--app-name", app,
        "--route-prefix", "/green", "--api-key-file", str(keys_file),
        port=ray_srv.port, env=RAY_ENV, log_dir=tmp_path,
    )  # fmt: skip
    green.url = f"{ray_srv.url}/green"
    try:
        green.start(timeout_s=120)
        doc = httpx.get(f"{green.url}/v1/models", headers=AUTH).json()
        assert doc["contract_hash"] == load_bundle(green_bundle).contract_hash
        # A host still on the old bundle pins its hash: green's model is never used for it.
        old_host = remote(tiny_bundle, green.url)
        info = old_host.enhance_signal(bars_stream[0], 30, 60)[2]
        assert info["source"] == "fallback" and "mismatch" in info["fallback_reason"]
        old_host.close()
        new_host = remote(green_bundle, green.url)
        info = new_host.enhance_signal(bars_stream[0], 30, 60)[2]
        assert info["source"] == "remote" and info["model_version"] == doc["model_version"]
        new_host.close()
        assert green.stop(timeout_s=60) == 0, green.output()
    finally:
        green.close()
    assert replica_pids(app) == []
    assert httpx.get(f"{ray_srv.url}/readyz").status_code == 200  # blue keeps serving


def test_ray_flags_need_the_ray_engine(tiny_bundle, capsys):
    from mlsignal.cli.main import main

    code = main(["serve", "--bundle", str(tiny_bundle), "--replicas", "2", "--address", "auto"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--replicas, --address only apply with --engine ray" in err
    bad = ["--engine", "ray", "--replicas", "2", "--autoscale", "1:3"]
    assert main(["serve", "--bundle", str(tiny_bundle), *bad]) == 2
    assert "alternatives" in capsys.readouterr().err
    cuda = ["--engine", "ray", "--device", "cuda"]
    assert main(["serve", "--bundle", str(tiny_bundle), *cuda]) == 2
    assert "--gpus-per-replica" in capsys.readouterr().err
