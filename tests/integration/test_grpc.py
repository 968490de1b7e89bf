"""`mlsignal serve --grpc-port` end to end: real server processes on 127.0.0.1, with
NVIDIA's `tritonclient.grpc` as the client (its defaults: binary `raw_input_contents`).

One keyed server is shared by the contract tests (module scope); overload, TLS, hot reload
and drain each start their own. Every loop is bounded in count and time.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from bundle_helpers import other_model
from mlsignal import wire
from mlsignal.bundle import load_bundle
from mlsignal.runtime import load_runtime
from mlsignal.signature import OUTPUT_NAMES
from server_process import free_port

tg = pytest.importorskip("tritonclient.grpc")
service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
service_pb2_grpc = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.slow

CA_ENV = "MLSIGNAL_TEST_CA"
KEY = "grpc-key-0123456789"
AUTH = {"authorization": f"Bearer {KEY}"}  # gRPC metadata keys are lower case


# --- fixtures and helpers -----------------------------------------------------------------
@pytest.fixture(scope="module")
def srv(tiny_bundle: Path, tmp_path_factory, server_class) -> Iterator:
    """The shared keyed server: ONNX Runtime on the CPU, as the reference runtime below."""
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"{KEY}\n")
    server = server_class(
        tiny_bundle,
        "--device", "cpu", "--backend", "onnx", "--api-key-file", str(keys),
        "--max-symbols", "8", "--grpc-port", str(free_port()),
        log_dir=tmp_path_factory.mktemp("logs"),
    )  # fmt: skip
    server.start()
    yield server
    assert server.stop() == 0
    out = server.output()
    assert "gRPC drained" in out and "drained: batcher empty" in out
    assert KEY not in out  # keys never logged
    server.close()


def grpc_port(server) -> int:
    args = server.extra_args
    return int(args[args.index("--grpc-port") + 1])


def client_of(server, **kw) -> tg.InferenceServerClient:
    return tg.InferenceServerClient(f"127.0.0.1:{grpc_port(server)}", **kw)


@pytest.fixture(scope="module")
def client(srv) -> Iterator[tg.InferenceServerClient]:
    c = client_of(srv)
    yield c
    c.close()


@pytest.fixture(scope="module")
def golden(tiny_bundle: Path) -> np.ndarray:
    with np.load(tiny_bundle / "golden.npz") as g:
        return g["inputs"].astype(np.float32)


@pytest.fixture(scope="module")
def runtime(tiny_bundle: Path):
    return load_runtime(load_bundle(tiny_bundle), "cpu", "onnx")


def infer(c: tg.InferenceServerClient, windows: np.ndarray, **kw) -> tg.InferResult:
    tensor = tg.InferInput("windows", list(windows.shape), "FP32")
    tensor.set_data_from_numpy(windows)  # binary: raw_input_contents, tritonclient's default
    kw.setdefault("headers", AUTH)
    return c.infer("mlsignal", [tensor], **kw)


def status_of(call) -> tuple[str, str]:
    """(gRPC status name, message) of a call that must fail."""
    with pytest.raises(InferenceServerException) as e:
        call()
    return e.value.status().removeprefix("StatusCode."), e.value.message()


def typed_request(windows: np.ndarray, **fields) -> service_pb2.ModelInferRequest:
    """A request with the data in ``contents.fp32_contents``, built with Triton's classes."""
    req = service_pb2.ModelInferRequest(model_name="mlsignal", **fields)
    t = req.inputs.add(name="windows", datatype="FP32", shape=list(windows.shape))
    t.contents.fp32_contents.extend(windows.ravel().tolist())
    return req


# --- the contract, with tritonclient's defaults -------------------------------------------
def test_health_and_metadata(client, tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    assert client.is_server_live() and client.is_server_ready()  # no key needed, as REST
    meta = client.get_server_metadata(headers=AUTH)
    assert meta.name == "mlsignal" and list(meta.extensions) == []
    model = client.get_model_metadata("mlsignal", headers=AUTH)
    assert model.name == "mlsignal" and list(model.versions) == [bundle.contract_hash]
    assert model.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
        ("windows", "FP32", [-1, 64, 29])
    ]
    assert [(t.name, list(t.shape)) for t in model.outputs] == [(n, [-1]) for n in OUTPUT_NAMES]
    assert client.is_model_ready("mlsignal", headers=AUTH)
    for version in (bundle.contract_hash, bundle.model_version):  # the hash or the name
        assert client.is_model_ready("mlsignal", version, headers=AUTH)
        assert client.get_model_metadata("mlsignal", version, headers=AUTH).name == "mlsignal"


def test_infer_equals_in_process_predict_bit_for_bit(client, golden, runtime, tiny_bundle):
    want = runtime.predict(golden)
    result = infer(client, golden, request_id="req-7")
    reply = result.get_response()
    assert reply.id == "req-7" and reply.model_name == "mlsignal"
    assert reply.model_version == load_bundle(tiny_bundle).contract_hash
    assert len(reply.raw_output_contents) == 3  # binary answers
    for k, name in enumerate(OUTPUT_NAMES):
        got = result.as_numpy(name)
        assert got.dtype == np.float32 and got.shape == (len(golden),)
        assert np.array_equal(got, want[:, k]), name
    one = infer(client, golden[:1])
    assert np.array_equal(one.as_numpy("bull_prob"), runtime.predict(golden[:1])[:, 2])
    only = infer(client, golden, outputs=[tg.InferRequestedOutput("bull_prob")])
    assert [o.name for o in only.get_response().outputs] == ["bull_prob"]
    assert np.array_equal(only.as_numpy("bull_prob"), want[:, 2])
    assert only.as_numpy("p_lstm") is None


def test_typed_fp32_contents(srv, golden, runtime):
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port(srv)}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelInfer(typed_request(golden, id="typed"), metadata=tuple(AUTH.items()))
    assert reply.id == "typed"
    want = runtime.predict(golden)
    for k, (out, raw) in enumerate(zip(reply.outputs, reply.raw_output_contents, strict=True)):
        assert out.name == OUTPUT_NAMES[k] and list(out.shape) == [len(golden)]
        assert np.array_equal(np.frombuffer(raw, dtype="<f4"), want[:, k])


def test_api_keys(srv, client, golden):
    for headers in ({}, {"authorization": "Bearer wrong"}, {"x-api-key": "wrong"}):
        code, message = status_of(lambda h=headers: infer(client, golden, headers=h))
        assert (code, message) == ("UNAUTHENTICATED", "missing or invalid API key")
        code, _ = status_of(lambda h=headers: client.get_model_metadata("mlsignal", headers=h))
        assert code == "UNAUTHENTICATED"
    ok = infer(client, golden[:2], headers={"x-api-key": KEY})
    assert ok.as_numpy("bull_prob").shape == (2,)


def test_unknown_model_or_version_is_not_found(client, golden):
    code, message = status_of(lambda: client.get_model_metadata("nope", headers=AUTH))
    assert code == "NOT_FOUND" and message == "unknown model 'nope'; this server serves 'mlsignal'"
    code, _ = status_of(lambda: client.is_model_ready("nope", headers=AUTH))
    assert code == "NOT_FOUND"
    code, message = status_of(lambda: infer(client, golden, model_version="x"))
    assert code == "NOT_FOUND" and message == "unknown version 'x' of model 'mlsignal'"


def test_bad_requests_are_invalid_argument_naming_the_field(srv, client, golden):
    code, message = status_of(lambda: infer(client, golden[:, :10]))
    assert code == "INVALID_ARGUMENT" and message.startswith("inputs[0].shape: is [8, 10, 29]")
    code, message = status_of(lambda: infer(client, np.zeros((9, 64, 29), np.float32)))
    assert code == "INVALID_ARGUMENT" and "1 <= B <= 8" in message  # --max-symbols
    bad = golden.copy()
    bad[0, 0, 0] = np.inf
    code, message = status_of(lambda: infer(client, bad))
    assert (code, message) == ("INVALID_ARGUMENT", "raw_input_contents[0]: must be finite")
    code, message = status_of(
        lambda: infer(client, golden, outputs=[tg.InferRequestedOutput("nope")])
    )
    assert code == "INVALID_ARGUMENT" and message.startswith("outputs[0].name")
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port(srv)}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        req = typed_request(golden)
        del req.inputs[0].contents.fp32_contents[-1]
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(req, metadata=tuple(AUTH.items()))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith("inputs[0].contents.fp32_contents: has 14847 values")


def test_grpc_and_http_concurrently(srv, client, golden, runtime):
    """HTTP and gRPC callers at once, through one batcher: each answer is its own windows'."""
    want = runtime.predict(golden)
    http = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=20)

    def call(i: int) -> tuple[int, np.ndarray]:
        lo = i % len(golden)
        w = golden[lo : lo + 1 + i % 3]
        if i % 2:
            return lo, infer(client, w).as_numpy("bull_prob")
        doc = {"inputs": [{"name": "windows", "shape": list(w.shape), "datatype": "FP32",
                           "data": w.ravel()}]}  # fmt: skip
        r = http.post("/v2/models/mlsignal/infer", content=wire.dumps(doc))
        assert r.status_code == 200, r.text
        return lo, np.asarray(r.json()["outputs"][2]["data"], np.float32)

    with http, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, range(64)))
    for lo, got in answers:  # batch composition may differ from the reference: 1e-6
        np.testing.assert_allclose(got, want[lo : lo + len(got), 2], rtol=0, atol=1e-6)


def test_metrics_count_grpc_calls(srv, client, golden):
    infer(client, golden[:1])
    status_of(lambda: infer(client, golden[:1], headers={}))
    text = httpx.get(f"{srv.url}/metrics").text
    route = "/inference.GRPCInferenceService/ModelInfer"
    assert f'mlsignal_requests_total{{route="{route}",status="OK"}}' in text
    assert f'mlsignal_requests_total{{route="{route}",status="UNAUTHENTICATED"}}' in text
    assert 'mlsignal_errors_total{kind="auth"}' in text


# --- processes of their own ---------------------------------------------------------------
def test_overload_is_unavailable_at_once(tiny_bundle, server_factory, golden):
    server = server_factory(
        tiny_bundle, "--device", "cpu", "--grpc-port", str(free_port()),
        "--max-queue", "4", "--max-batch", "4", "--max-wait-ms", "30",
    ).start()  # fmt: skip
    c = client_of(server)

    def call(_: int) -> str:
        try:
            infer(c, golden[:3], headers=None)
        except InferenceServerException as e:
            return e.status().removeprefix("StatusCode.")
        return "OK"

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(call, range(48)))
    c.close()
    assert set(codes) == {"OK", "UNAVAILABLE"}, codes
    assert server.stop() == 0


def test_tls(tiny_bundle, server_factory, tls_files, golden, runtime):
    ca_path, cert_path, key_path = tls_files
    server = server_factory(
        tiny_bundle, "--device", "cpu", "--backend", "onnx", "--grpc-port", str(free_port()),
        "--ssl-certfile", str(cert_path), "--ssl-keyfile", str(key_path),
        https=True, env={CA_ENV: str(ca_path)},
    ).start()  # fmt: skip
    secure = client_of(server, ssl=True, root_certificates=str(ca_path))
    got = infer(secure, golden, headers=None).as_numpy("bull_prob")
    assert np.array_equal(got, runtime.predict(golden)[:, 2])
    secure.close()
    plain = client_of(server)
    code, _ = status_of(lambda: plain.is_server_live(client_timeout=5.0))
    assert code == "UNAVAILABLE"  # a plaintext client gets no answer from a TLS port
    plain.close()
    assert server.stop() == 0


class GrpcLoad:
    """Client threads sending gRPC infers back to back (bounded count and time)."""

    def __init__(self, target: str, windows: np.ndarray, threads: int = 3) -> None:
        self.codes: list[str] = []
        self._stop = threading.Event()
        self._args = (target, windows)
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, max_s: float = 60.0, max_n: int = 3000) -> None:
        target, windows = self._args
        c = tg.InferenceServerClient(target)
        end = time.monotonic() + max_s
        while not self._stop.is_set() and time.monotonic() < end and len(self.codes) < max_n:
            try:
                infer(c, windows, headers=None, client_timeout=20.0)
                self.codes.append("OK")
            except InferenceServerException as e:
                self.codes.append(e.status().removeprefix("StatusCode."))
        c.close()

    def wait_for(self, n: int, timeout_s: float = 30.0) -> None:
        end = time.monotonic() + timeout_s
        while len(self.codes) < n and time.monotonic() < end:
            time.sleep(0.05)
        assert len(self.codes) >= n, self.codes

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


def test_hot_reload_then_sigterm_drain(tiny_bundle, server_factory, tmp_path, golden):
    other = other_model(tiny_bundle, tmp_path / "other")
    server = server_factory(tiny_bundle, "--device", "cpu", "--grpc-port", str(free_port()))
    server.start()
    target = f"127.0.0.1:{grpc_port(server)}"
    load = GrpcLoad(target, golden[:4])
    try:
        load.wait_for(20)
        r = httpx.post(f"{server.url}/v1/admin/reload", json={"bundle": str(other)}, timeout=60)
        assert r.status_code == 200, r.text
        c = tg.InferenceServerClient(target)
        new_hash = load_bundle(other).contract_hash
        assert list(c.get_model_metadata("mlsignal").versions) == [new_hash]
        assert infer(c, golden[:1], headers=None).get_response().model_version == new_hash
        c.close()
        n = len(load.codes)
        load.wait_for(n + 20)  # calls keep flowing across the swap
        before = len(load.codes)
        server.signal(signal.SIGTERM)  # under load: calls in flight finish, new ones refused
        assert server.wait(timeout_s=60) == 0
    finally:
        load.stop()
    # Refused: UNAVAILABLE, or CANCELLED for a call gRPC core had taken off the wire but not
    # yet handed to the server when the port closed (grpc/grpc#41785; never processed).
    assert set(load.codes) <= {"OK", "UNAVAILABLE", "CANCELLED"}, set(load.codes)
    assert load.codes[:before].count("OK") == before  # nothing failed before the drain
    out = server.output()
    assert "gRPC drained" in out and "drained: batcher empty" in out


def test_sigterm_closes_the_grpc_port_while_http_drains(tiny_bundle, server_factory, sp500_bars):
    # The HTTP drain test's load (tests/integration/test_server.py): slow enough to be in
    # flight for a second; the gRPC port must not wait for it to close.
    server = server_factory(
        tiny_bundle, "--device", "cpu", "--backend", "torch", "--workers", "1",
        "--grpc-port", str(free_port()),
    ).start()  # fmt: skip
    doc = {
        "symbols": [
            {"symbol": f"S{i}", "ss": 30.0, "bs": 60.0,
             "bars": wire.encode_bars(sp500_bars.iloc[-300 - i : len(sp500_bars) - i])}
            for i in range(400)
        ]
    }  # fmt: skip
    body = wire.dumps(doc)
    c = client_of(server)
    assert c.is_server_live()

    def call(_: int) -> int:
        return httpx.post(f"{server.url}/v1/enhance", content=body, timeout=60.0).status_code

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(call, i) for i in range(2)]
        time.sleep(0.6)
        server.signal(signal.SIGTERM)
        time.sleep(0.3)  # uvicorn notices the signal within 0.1 s
        overlapped = not any(f.done() for f in futures)
        try:
            c.is_server_live(client_timeout=2.0)
            code = "answered"
        except InferenceServerException as e:
            code = e.status().removeprefix("StatusCode.")
        statuses = [f.result(timeout=60) for f in futures]
    c.close()
    assert statuses == [200, 200]  # HTTP requests in flight still finish
    assert server.wait(timeout_s=30) == 0
    if not overlapped:
        pytest.skip("the HTTP requests finished within 0.9 s: nothing left to overlap")
    assert code == "UNAVAILABLE"  # closed at SIGTERM, not after the HTTP drain
