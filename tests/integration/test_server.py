"""`mlsignal serve` end to end: real server processes on 127.0.0.1, httpx as the client.

One keyed server is shared by the contract tests (module scope); overload, TLS, hot reload
and drain each start their own. Every loop is bounded in count and time.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from bundle_helpers import other_model
from mlsignal import wire
from mlsignal.bundle import load_bundle
from mlsignal.pipeline import SignalRequest, finish, prepare
from mlsignal.runtime import load_runtime

pytestmark = pytest.mark.slow

CA_ENV = "MLSIGNAL_TEST_CA"  # conftest's: ServerProcess verifies readiness with this CA
KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


# --- fixtures and helpers -----------------------------------------------------------------
@pytest.fixture(scope="module")
def srv(tiny_bundle: Path, tmp_path_factory, server_class) -> Iterator:
    """The shared keyed server: small body and symbol limits to test them cheaply."""
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"# ops keys\n\n{KEY}\nsecond-key\n")
    server = server_class(
        tiny_bundle,
        "--device", "cpu", "--api-key-file", str(keys),
        "--max-symbols", "8", "--max-bars", "600", "--max-body-mb", "1",
        log_dir=tmp_path_factory.mktemp("logs"),
    )  # fmt: skip
    server.start()
    yield server
    assert server.stop() == 0
    assert KEY not in server.output()  # keys never logged
    server.close()


@pytest.fixture(scope="module")
def http(srv) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.url, headers=AUTH, timeout=20.0) as client:
        yield client


@pytest.fixture(scope="module")
def golden(tiny_bundle: Path) -> np.ndarray:
    with np.load(tiny_bundle / "golden.npz") as g:
        return g["inputs"].astype(np.float32)


def symbol_doc(bars, symbol: str = "SPX", ss: float | None = 30.0, bs: float | None = 60.0):
    return {"symbol": symbol, "ss": ss, "bs": bs, "bars": wire.encode_bars(bars)}


def post(client: httpx.Client, path: str, doc: object, **kw) -> httpx.Response:
    return client.post(path, content=wire.dumps(doc), **kw)


def v2_infer_doc(windows: np.ndarray, **extra) -> dict:
    tensor = {"name": "windows", "shape": list(windows.shape), "datatype": "FP32"}
    return {"inputs": [{**tensor, "data": windows.ravel()}], **extra}


# --- v1 contract --------------------------------------------------------------------------
def test_readyz_healthz_and_models(srv, http, tiny_bundle):
    assert httpx.get(f"{srv.url}/readyz").status_code == 200  # probes need no key
    assert httpx.get(f"{srv.url}/healthz").status_code == 200
    doc = http.get("/v1/models").json()
    bundle = load_bundle(tiny_bundle)
    assert doc["contract_hash"] == bundle.contract_hash
    assert doc["model_version"] == bundle.model_version
    # auto on the CPU: onnx, since the bundle has model.onnx (config.resolve_backend)
    assert (doc["device"], doc["backend"]) == ("cpu", "onnx")
    assert doc["schema"]["window"] == 64 and len(doc["schema"]["features"]) == 29
    assert doc["min_bars"] == bundle.min_bars and doc["warmed_up"] is True
    assert doc["parity_worst_diff"] <= 1e-5 and doc["loaded_at"].endswith("Z")


def test_enhance_equals_in_process_inference(http, tiny_bundle, sp500_bars):
    bundle = load_bundle(tiny_bundle)
    runtime = load_runtime(bundle, "cpu")
    cases = [
        ("A", sp500_bars.iloc[-300:], 30.0, 60.0),
        ("B", sp500_bars.iloc[-500:-100], None, None),  # null scores: rule scores
        ("C", sp500_bars.iloc[-256:], 0.0, 100.0),
    ]
    reply = post(
        http, "/v1/enhance", {"symbols": [symbol_doc(b, s, ss, bs) for s, b, ss, bs in cases]}
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["contract_hash"] == bundle.contract_hash and body["device"] == "cpu"
    prepared = [prepare(bundle, SignalRequest(s, b, ss, bs)) for s, b, ss, bs in cases]
    out = runtime.predict(np.stack([p.window for p in prepared]))
    for p, row, got in zip(prepared, out, body["results"], strict=True):
        want = finish(bundle, p, row, device="cpu", backend="torch", latency_ms=0.0)
        assert got["symbol"] == want.symbol
        assert (got["enhanced_ss"], got["enhanced_bs"]) == (want.enhanced_ss, want.enhanced_bs)
        for key in ("bull_prob", "p_lstm", "p_tft", "regime_vol", "regime", "kelly", "bar_ts"):
            assert got["ml_info"][key] == want.ml_info[key], key
        assert got["ml_info"]["source"] == "local"
    rules = body["results"][1]["ml_info"]
    assert (rules["rule_ss"], rules["rule_bs"]) == (prepared[1].ss, prepared[1].bs)


def test_predict_equals_v2_infer(http, golden, tiny_bundle):
    v1 = post(http, "/v1/predict", {"windows": golden})
    assert v1.status_code == 200, v1.text
    outputs = np.asarray(v1.json()["outputs"])
    assert v1.json()["names"] == ["p_lstm", "p_tft", "bull_prob"] and outputs.shape == (8, 3)
    version = load_bundle(tiny_bundle).contract_hash
    for path in ("/v2/models/mlsignal/infer", f"/v2/models/mlsignal/versions/{version}/infer"):
        v2 = post(http, path, v2_infer_doc(golden, id="req-7"))
        assert v2.status_code == 200, v2.text
        doc = v2.json()
        assert doc["id"] == "req-7" and doc["model_name"] == "mlsignal"
        assert doc["model_version"] == version
        assert [o["name"] for o in doc["outputs"]] == ["p_lstm", "p_tft", "bull_prob"]
        for k, o in enumerate(doc["outputs"]):
            assert o["datatype"] == "FP32" and o["shape"] == [8]
            assert o["data"] == outputs[:, k].tolist()
    only = post(
        http, "/v2/models/mlsignal/infer", v2_infer_doc(golden, outputs=[{"name": "bull_prob"}])
    )
    assert [o["name"] for o in only.json()["outputs"]] == ["bull_prob"]


def test_v2_health_metadata_and_errors(srv, http, golden, tiny_bundle):
    assert httpx.get(f"{srv.url}/v2/health/live").status_code == 200  # no key needed
    assert httpx.get(f"{srv.url}/v2/health/ready").status_code == 200
    assert set(http.get("/v2").json()) == {"name", "version", "extensions"}
    meta = http.get("/v2/models/mlsignal").json()
    assert meta["name"] == "mlsignal" and meta["versions"] == [
        load_bundle(tiny_bundle).contract_hash
    ]
    assert meta["inputs"] == [{"name": "windows", "datatype": "FP32", "shape": [-1, 64, 29]}]
    assert [o["name"] for o in meta["outputs"]] == ["p_lstm", "p_tft", "bull_prob"]
    assert http.get("/v2/models/mlsignal/ready").status_code == 200
    by_name = load_bundle(tiny_bundle).model_version
    assert http.get(f"/v2/models/mlsignal/versions/{by_name}/ready").status_code == 200
    for path in ("/v2/models/nope", "/v2/models/nope/ready", "/v2/models/mlsignal/versions/x"):
        r = http.get(path)
        assert r.status_code == 404 and "error" in r.json(), path
    assert post(http, "/v2/models/nope/infer", v2_infer_doc(golden)).status_code == 404
    tensor = v2_infer_doc(golden)["inputs"][0]
    bad = [
        ({"inputs": []}, "inputs"),
        (v2_infer_doc(golden[:, :10]), "shape"),
        ({"inputs": [{**tensor, "datatype": "INT8"}]}, "datatype"),
        ({"inputs": [{**tensor, "data": [1.0, 2.0]}]}, "data"),
        (v2_infer_doc(golden, outputs=[{"name": "nope"}]), "outputs"),
    ]  # fmt: skip
    for doc, field in bad:
        r = post(http, "/v2/models/mlsignal/infer", doc)
        assert r.status_code == 400 and field in r.json()["error"], (field, r.text)
    assert http.post("/v2/models/mlsignal/infer", content=b"{not json").status_code == 400


def test_api_keys(srv, sp500_bars):
    doc = wire.dumps({"symbols": [symbol_doc(sp500_bars.iloc[-300:])]})
    url = f"{srv.url}/v1/enhance"
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"X-API-Key": "wrong"},
        {"Authorization": KEY},
    ):
        r = httpx.post(url, content=doc, headers=headers)
        assert r.status_code == 401 and r.json() == {"error": "missing or invalid API key"}
    assert httpx.get(f"{srv.url}/v1/models").status_code == 401
    assert httpx.post(url, content=doc, headers={"X-API-Key": KEY}).status_code == 200
    assert (
        httpx.post(url, content=doc, headers={"Authorization": "Bearer second-key"}).status_code
        == 200
    )


def test_body_limit(http, srv):
    big = b'{"symbols": [' + b" " * (2 << 20) + b"]}"
    r = http.post("/v1/enhance", content=big)
    assert r.status_code == 413 and "limit" in r.json()["error"]
    chunks = (b" " * 65536 for _ in range(40))  # chunked: no Content-Length, 2.5 MiB streamed
    r = httpx.post(f"{srv.url}/v1/predict", content=chunks, headers=AUTH)
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_validation_errors_name_the_field(http, sp500_bars):
    good = symbol_doc(sp500_bars.iloc[-300:])
    broken = sp500_bars.iloc[-300:].copy()
    broken.iloc[-5, broken.columns.get_loc("high")] = broken["low"].iloc[-5] * 0.5
    unsorted = symbol_doc(sp500_bars.iloc[-300:])
    unsorted["bars"]["t"][10], unsorted["bars"]["t"][11] = (
        unsorted["bars"]["t"][11],
        unsorted["bars"]["t"][10],
    )
    cases = [
        ({}, "symbols"),
        ({"symbols": [{**good, "bars": {**good["bars"], "close": "x"}}]}, "symbols[0].bars.close"),
        ({"symbols": [{**good, "ss": "high"}]}, "symbols[0].ss"),
        ({"symbols": [good] * 9}, "9 symbols exceed"),
        ({"symbols": [symbol_doc(sp500_bars.iloc[-700:])]}, "700 bars exceed"),
        ({"symbols": [symbol_doc(broken, "BRK")]}, "BRK"),
        ({"symbols": [symbol_doc(sp500_bars.iloc[-100:], "FEW")]}, "100 bars"),
        ({"symbols": [unsorted]}, "SPX"),
        ({"symbols": [good], "deadline_ms": -1}, "deadline_ms"),
    ]
    for doc, needle in cases:
        r = post(http, "/v1/enhance", doc)
        assert r.status_code == 422, (needle, r.text)
        assert needle in r.json()["error"], (needle, r.json())
        assert "Traceback" not in r.text
    r = post(http, "/v1/predict", {"windows": [[[1.0, 2.0]]]})
    assert r.status_code == 422 and r.json()["error"].startswith("windows:")


def test_pinned_contract_hash_mismatch_is_409(http, sp500_bars, tiny_bundle, golden):
    doc = {"symbols": [symbol_doc(sp500_bars.iloc[-300:])], "contract_hash": "f" * 64}
    r = post(http, "/v1/enhance", doc)
    assert r.status_code == 409
    have = load_bundle(tiny_bundle).contract_hash
    assert r.json() == {
        "error": f"model version mismatch: server has {have}, request pinned {'f' * 64}"
    }
    assert post(http, "/v1/predict", {"windows": golden, "contract_hash": "abc"}).status_code == 409
    assert post(http, "/v1/predict", {"windows": golden, "contract_hash": have}).status_code == 200


def test_late_work_is_dropped_with_504(http, sp500_bars):
    doc = {
        "symbols": [symbol_doc(sp500_bars.iloc[-600:], f"S{i}") for i in range(8)],
        "deadline_ms": 0.5,
    }
    r = post(http, "/v1/enhance", doc)
    assert r.status_code == 504 and r.json() == {"error": "deadline exceeded before inference"}


def test_metrics_after_traffic(srv, http):
    text = httpx.get(f"{srv.url}/metrics").text  # no key needed
    for series in (
        'mlsignal_request_duration_seconds_bucket{le="0.005",method="POST",route="/v1/enhance"}',
        "mlsignal_batch_size_count",
        "mlsignal_queue_depth",
        'mlsignal_errors_total{kind="auth"}',
        'mlsignal_errors_total{kind="invalid"}',
        'mlsignal_errors_total{kind="too_large"}',
        'mlsignal_errors_total{kind="version_mismatch"}',
        'mlsignal_model_info{backend="onnx",contract_hash="',
    ):
        assert series in text, series


# --- processes of their own ---------------------------------------------------------------
def test_refuses_a_public_address_without_keys(tiny_bundle, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "mlsignal.cli.main",
        "serve",
        "--bundle",
        str(tiny_bundle),
        "--host",
        "0.0.0.0",
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLSIGNAL_API_KEYS"}  # no keys at all
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "0.0.0.0" in lines[0] and "--insecure" in lines[0]


def test_overload_answers_fast_503_and_insecure_public_bind(tiny_bundle, server_factory, golden):
    server = server_factory(
        tiny_bundle, "--device", "cpu", "--host", "0.0.0.0", "--insecure",
        "--max-queue", "4", "--max-batch", "4", "--max-wait-ms", "30",
    ).start()  # fmt: skip
    body = wire.dumps({"windows": golden[:3]})

    def call(_: int) -> tuple[int, float, str | None]:
        t0 = time.perf_counter()
        r = httpx.post(f"{server.url}/v1/predict", content=body, timeout=20.0)
        return r.status_code, time.perf_counter() - t0, r.headers.get("retry-after")

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, range(48)))
    statuses = {s for s, _, _ in answers}
    assert statuses == {200, 503}, statuses
    refused = [(t, ra) for s, t, ra in answers if s == 503]
    assert all(ra == "1" for _, ra in refused)
    assert max(t for t, _ in refused) < 2.0
    assert server.stop() == 0


def test_tls_with_a_self_signed_certificate(tiny_bundle, server_factory, tls_files, golden):
    ca_path, cert_path, key_path = tls_files
    server = server_factory(
        tiny_bundle, "--device", "cpu",
        "--ssl-certfile", str(cert_path), "--ssl-keyfile", str(key_path),
        https=True, env={CA_ENV: str(ca_path)},
    ).start()  # fmt: skip
    assert server.url.startswith("https://")
    ctx = ssl.create_default_context(cafile=str(ca_path))
    r = httpx.post(f"{server.url}/v1/predict", content=wire.dumps({"windows": golden}), verify=ctx)
    assert r.status_code == 200 and len(r.json()["outputs"]) == 8
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/healthz")  # a client that does not trust the CA
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5.0)  # plain http
    assert server.stop() == 0


class Load:
    """A client thread sending requests back to back (bounded count and time)."""

    def __init__(self, url: str, body: bytes, max_s: float = 30.0, max_n: int = 2000) -> None:
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._args = (url, body, max_s, max_n)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        url, body, max_s, max_n = self._args
        end = time.monotonic() + max_s
        with httpx.Client(timeout=20.0) as client:
            while not self._stop.is_set() and time.monotonic() < end and len(self.statuses) < max_n:
                try:
                    self.statuses.append(client.post(url, content=body).status_code)
                except httpx.HTTPError as e:
                    self.errors.append(repr(e))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _reloads_ok(server) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith('mlsignal_reloads_total{outcome="ok"}'):
            return float(line.split()[-1])
    return 0.0


def test_hot_reload_under_load_fails_no_request(tiny_bundle, server_factory, tmp_path, golden):
    other = other_model(tiny_bundle, tmp_path / "other")
    server = server_factory(tiny_bundle, "--device", "cpu").start()
    old_hash = load_bundle(tiny_bundle).contract_hash
    load = Load(f"{server.url}/v1/predict", wire.dumps({"windows": golden[:2]}))
    try:
        time.sleep(0.3)
        r = httpx.post(f"{server.url}/v1/admin/reload", json={"bundle": str(other)}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["previous"]["contract_hash"] == old_hash
        models = httpx.get(f"{server.url}/v1/models").json()
        assert models["contract_hash"] == load_bundle(other).contract_hash
        bad = httpx.post(
            f"{server.url}/v1/admin/reload", json={"bundle": str(tmp_path / "none")}, timeout=60
        )
        assert bad.status_code == 422 and "old model kept" in bad.json()["error"]
        server.signal(signal.SIGHUP)  # reload the same path again
        deadline = time.monotonic() + 30
        while _reloads_ok(server) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _reloads_ok(server) == 2
        time.sleep(0.3)
    finally:
        load.stop()
    assert not load.errors and len(load.statuses) > 20
    assert set(load.statuses) == {200}
    assert httpx.get(f"{server.url}/v1/models").json()["model_version"].startswith("other-")
    assert server.stop() == 0


def test_sigterm_drains_requests_in_flight(tiny_bundle, server_factory, sp500_bars):
    # Enough work to be still in flight after 0.6 s on a fast 2-core machine: 4 x 400
    # symbols through PyTorch (about twice ONNX Runtime's time on the CPU), one thread.
    server = server_factory(
        tiny_bundle, "--device", "cpu", "--backend", "torch", "--threads", "1",
        "--max-wait-ms", "5",
    ).start()  # fmt: skip
    doc = {
        "symbols": [
            symbol_doc(sp500_bars.iloc[-300 - i : len(sp500_bars) - i], f"S{i}") for i in range(400)
        ]
    }
    body = wire.dumps(doc)

    def call(_: int) -> int:
        return httpx.post(f"{server.url}/v1/enhance", content=body, timeout=60.0).status_code

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(call, i) for i in range(4)]
        time.sleep(0.6)  # all four bodies are in; features are being computed
        assert not any(f.done() for f in futures), "requests finished before SIGTERM"
        server.signal(signal.SIGTERM)
        statuses = [f.result(timeout=60) for f in futures]
    assert statuses == [200] * 4
    assert server.wait(timeout_s=30) == 0
    assert "drained" in server.output()
