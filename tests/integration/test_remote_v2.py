"""The V2 client mode end to end: MLSignalEnhancer -> real V2 servers on loopback.

Two real servers: `mlsignal serve`'s own /v2 routes (a process, binary tensors), and a small
Triton-like server in this file: a stdlib HTTP server that runs the bundle's `model.onnx`
with ONNX Runtime under the layout `mlsignal export-triton` writes (model version
int(contract_hash[:15], 16), the full hash in the config's parameters, outputs [B, 1], no
/v1 routes, 400 for an unknown version, as Triton answers), speaking JSON tensors or, with
``binary=True``, the binary tensor extension (its own reading of the spec, not our codec).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest

from bundle_helpers import other_model
from mlsignal.bundle import load_bundle
from mlsignal.client import RemoteClient
from mlsignal.config import Settings
from mlsignal.enhancer import MLSignalEnhancer, SignalRequest
from mlsignal.errors import RemoteError, VersionMismatchError
from mlsignal.signature import OUTPUT_NAMES, triton_version

pytestmark = pytest.mark.slow

HEADER = "Inference-Header-Content-Length"
JSON = "application/json"

KEYS = ("bull_prob", "p_lstm", "p_tft", "regime_vol", "regime", "kelly", "kelly_side", "bar_ts")


class TritonLike:
    """A V2 server on 127.0.0.1 serving one ONNX model the way Triton serves an export.

    ``versions`` maps a version string to the contract hash its config parameter carries;
    ``input_shape`` / ``output_names`` let a test advertise another signature.
    """

    def __init__(
        self,
        onnx_path: Path,
        versions: dict[str, str],
        name: str = "mlsignal",
        input_shape: list[int] | None = None,
        output_names: tuple[str, ...] = OUTPUT_NAMES,
        binary: bool = False,
    ) -> None:
        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        shape = self.session.get_inputs()[0].shape
        self.name, self.versions, self.binary = name, versions, binary
        self.input_shape = input_shape or [-1, int(shape[1]), int(shape[2])]
        self.output_names = output_names
        self.paths: list[str] = []
        self.asked: list[Any] = []  # the outputs list of each infer request
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.paths.append(f"GET {self.path}")
                self._send(*server.get(self.path))

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.paths.append(f"POST {self.path}")
                length = self.headers.get(HEADER)
                self._send(*server.post(self.path, body, None if length is None else int(length)))

            def _send(self, status: int, doc: dict[str, Any], tail: bytes = b"") -> None:
                raw = orjson.dumps(doc)
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream" if tail else JSON)
                if tail:
                    self.send_header(HEADER, str(len(raw)))
                self.send_header("Content-Length", str(len(raw) + len(tail)))
                self.end_headers()
                self.wfile.write(raw + tail)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": sorted(self.versions),
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "windows", "datatype": "FP32", "shape": self.input_shape}],
            "outputs": [
                {"name": n, "datatype": "FP32", "shape": [-1, 1]} for n in self.output_names
            ],
        }

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        base = f"/v2/models/{self.name}"
        if path == "/v2":
            extensions = ["model_configuration", *(["binary_tensor_data"] if self.binary else [])]
            return 200, {"name": "triton", "version": "2.x", "extensions": extensions}
        if path == base:
            return 200, self.metadata()
        if path == f"{base}/config":
            params = {f"contract_hash_{v}": {"string_value": h} for v, h in self.versions.items()}
            return 200, {"name": self.name, "max_batch_size": 256, "parameters": params}
        return 404, {"error": "Not Found"}

    def post(self, path: str, body: bytes, length: int | None) -> tuple:
        base = f"/v2/models/{self.name}"
        if path == f"{base}/infer":
            version = max(self.versions)
        elif path.startswith(f"{base}/versions/") and path.endswith("/infer"):
            version = path[len(f"{base}/versions/") : -len("/infer")]
        else:
            return 404, {"error": "Not Found"}
        if version not in self.versions:
            return 400, {
                "error": f"Request for unknown model: '{self.name}' version {version} is not found"
            }
        doc = orjson.loads(body if length is None else body[:length])
        (tensor,) = doc["inputs"]
        if length is None:
            windows = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        else:  # little-endian float32 bytes after the JSON header
            assert tensor["parameters"]["binary_data_size"] == len(body) - length
            windows = np.frombuffer(body[length:], "<f4").reshape(tensor["shape"])
        self.asked.append(doc.get("outputs"))
        outs = self.session.run(list(OUTPUT_NAMES), {"windows": windows})
        n = len(windows)
        outputs = [
            {"name": name, "datatype": "FP32", "shape": [n, 1], "data": [float(x) for x in out]}
            for name, out in zip(OUTPUT_NAMES, outs, strict=True)
        ]
        answer = {"model_name": self.name, "model_version": version, "outputs": outputs}
        if length is None:
            return 200, answer
        for o in outputs:  # all asked in binary (the client asks binary_data: true)
            o["parameters"] = {"binary_data_size": 4 * len(o.pop("data"))}
        return 200, answer, b"".join(np.asarray(o, "<f4").tobytes() for o in outs)


@pytest.fixture(scope="module")
def local_onnx(tiny_bundle):
    return MLSignalEnhancer(tiny_bundle, device="cpu", backend="onnx")


@pytest.fixture
def triton(tiny_bundle):
    """A Triton-like server holding the tiny bundle under its derived version."""
    h = load_bundle(tiny_bundle).contract_hash
    made: list[TritonLike] = []

    def make(**kw: Any) -> TritonLike:
        kw.setdefault("versions", {str(triton_version(h)): h})
        server = TritonLike(tiny_bundle / "model.onnx", **kw)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


def _remote(bundle: Path, *urls: str, protocol: str = "v2", **kw: Any) -> MLSignalEnhancer:
    kw.setdefault("timeout_s", 2.0)
    settings = Settings(protocol=protocol)
    return MLSignalEnhancer(bundle, remote_urls=list(urls), settings=settings, **kw)


def test_v2_against_mlsignal_serve_equals_local(tiny_bundle, server_factory, local, bars_stream):
    server = server_factory(tiny_bundle, "--device", "cpu").start()
    remote = _remote(tiny_bundle, server.url)
    h = load_bundle(tiny_bundle).contract_hash
    for bars in bars_stream[:8]:
        r = remote.enhance_signal(bars, 35.0, 55.0)
        m = local.enhance_signal(bars, 35.0, 55.0)
        assert r[:2] == m[:2]
        for key in KEYS:
            assert r[2][key] == m[2][key], key
        info = r[2]
        assert info["source"] == "remote" and info["protocol"] == "v2-binary"
        assert info["endpoint"] == server.url and info["attempts"] == 1
        assert info["fallback_reason"] is None and info["v2_version"] == h
        assert info["v2_version_check"] == "contract_hash"
        assert info["model_version"] == m[2]["model_version"]
    batch = remote.enhance_batch(
        [
            SignalRequest("A", bars_stream[0], None, None),
            SignalRequest("B", bars_stream[-1], 10, 90),
        ]
    )
    assert [b.symbol for b in batch] == ["A", "B"]
    assert {b.ml_info["source"] for b in batch} == {"remote"}
    want = local.enhance_batch([SignalRequest("B", bars_stream[-1], 10, 90)])[0]
    assert (batch[1].enhanced_ss, batch[1].enhanced_bs) == (want.enhanced_ss, want.enhanced_bs)
    assert batch[1].ml_info["bull_prob"] == want.ml_info["bull_prob"]
    assert remote.remote.client.endpoint_protocols() == {server.url: "v2-binary"}
    remote.close()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_triton_layout_pins_the_derived_version_and_equals_local(
    tiny_bundle, triton, local_onnx, bars_stream, binary
):
    server = triton(binary=binary)
    h = load_bundle(tiny_bundle).contract_hash
    remote = _remote(tiny_bundle, server.url)
    for bars in bars_stream[:5]:
        r = remote.enhance_signal(bars, 20.0, 70.0)
        m = local_onnx.enhance_signal(bars, 20.0, 70.0)
        info = r[2]
        assert info["source"] == "remote", info
        assert info["protocol"] == ("v2-binary" if binary else "v2")
        assert info["backend"] == "onnxruntime_onnx"
        assert info["v2_version"] == str(triton_version(h))
        assert info["v2_version_check"] == "triton_config"  # the config's full hash matched
        for key in ("bull_prob", "p_lstm", "p_tft"):
            assert abs(info[key] - m[2][key]) <= 1e-6, key
        for key in ("regime_vol", "regime", "bar_ts"):
            assert info[key] == m[2][key], key
        assert abs(r[0] - m[0]) <= 1e-4 and abs(r[1] - m[1]) <= 1e-4
    infer = f"POST /v2/models/mlsignal/versions/{triton_version(h)}/infer"
    assert server.paths[:3] == [
        "GET /v2",  # the server metadata: does it list binary_tensor_data?
        "GET /v2/models/mlsignal",
        "GET /v2/models/mlsignal/config",
    ]
    assert server.paths[3:] == [infer] * 5  # metadata read once, then only inference
    want = {"binary_data": True} if binary else None
    assert [o.get("parameters") for o in server.asked[0]] == [want] * 3
    remote.close()


def test_auto_speaks_binary_to_ours_json_to_triton_and_fails_over_between_them(
    tiny_bundle, server_factory, triton, bars_stream, local
):
    ours = server_factory(tiny_bundle, "--device", "cpu").start()
    tri = triton()
    remote = _remote(tiny_bundle, ours.url, tri.url, protocol="auto")
    r = remote.enhance_signal(bars_stream[0], 1, 1)
    info = r[2]
    assert info["source"] == "remote" and info["protocol"] == "v2-binary"
    assert info["endpoint"] == ours.url and info["v2_version_check"] == "contract_hash"
    assert r[:2] == local.enhance_signal(bars_stream[0], 1, 1)[:2]
    client = remote.remote.client
    assert client.endpoint_protocols() == {ours.url: "v2-binary", tri.url: "unknown"}
    ours.kill()
    infos = [remote.enhance_signal(bars, 1, 1)[2] for bars in bars_stream[:6]]
    assert {i["source"] for i in infos} == {"remote"}
    assert {i["protocol"] for i in infos} == {"v2"} and {i["endpoint"] for i in infos} == {tri.url}
    assert infos[0]["attempts"] == 2  # ours refused, the V2 server answered
    assert client.endpoint_protocols()[tri.url] == "v2"
    assert tri.paths[:2] == ["GET /v2", "GET /v2/models/mlsignal"]  # detection
    remote.close()
    only_v2 = _remote(tiny_bundle, tri.url, protocol="auto")
    assert only_v2.enhance_signal(bars_stream[1], 1, 1)[2]["protocol"] == "v2"
    only_v2.close()


def test_version_mismatch_falls_back_with_the_reason(
    tiny_bundle, server_factory, triton, tmp_path, bars_stream, local
):
    other = other_model(tiny_bundle, tmp_path / "other")
    server = server_factory(other, "--device", "cpu").start()
    pinned = _remote(tiny_bundle, server.url)
    ess, ebs, info = pinned.enhance_signal(bars_stream[0], 30, 60)
    assert info["source"] == "fallback" and "mismatch" in info["fallback_reason"]
    assert (ess, ebs) == local.enhance_signal(bars_stream[0], 30, 60)[:2]
    with pytest.raises(VersionMismatchError, match="version mismatch"):
        pinned.remote.client.infer(np.zeros((1, 64, 29), np.float32))
    accepting = _remote(tiny_bundle, server.url, accept_version_mismatch=True)
    info = accepting.enhance_signal(bars_stream[0], 30, 60)[2]
    assert info["source"] == "remote" and info["v2_version_check"] == "accepted"
    assert "accepted by setting" in info["version_mismatch"]
    pinned.close()
    accepting.close()

    h_other = load_bundle(other).contract_hash
    elsewhere = triton(versions={str(triton_version(h_other)): h_other})
    remote = _remote(tiny_bundle, elsewhere.url)
    info = remote.enhance_signal(bars_stream[0], 30, 60)[2]
    assert info["source"] == "fallback" and "mismatch" in info["fallback_reason"]
    assert str(triton_version(h_other)) in info["fallback_reason"]
    assert not any(p.startswith("POST") for p in elsewhere.paths)  # never inferred
    remote.close()

    # The right Triton version number, but the config says another full hash.
    h = load_bundle(tiny_bundle).contract_hash
    impostor = triton(versions={str(triton_version(h)): h_other})
    remote = _remote(tiny_bundle, impostor.url)
    info = remote.enhance_signal(bars_stream[0], 30, 60)[2]
    assert info["source"] == "fallback" and "mismatch" in info["fallback_reason"]
    remote.close()


def test_killed_server_falls_back_then_the_circuit_opens(tiny_bundle, server_factory, bars_stream):
    server = server_factory(tiny_bundle, "--device", "cpu").start()
    remote = _remote(tiny_bundle, server.url, timeout_s=1.0)
    infos = []
    for k, bars in enumerate(bars_stream[:12]):
        if k == 4:
            server.kill()
        infos.append(remote.enhance_signal(bars, 20, 20)[2])
    assert {i["source"] for i in infos[:4]} == {"remote"}
    assert {i["source"] for i in infos[4:]} == {"fallback"}
    assert "refused" in infos[4]["fallback_reason"]
    assert "circuit open" in infos[-1]["fallback_reason"]
    assert remote.remote.client.endpoint_protocols() == {server.url: "unknown"}  # forgotten
    remote.close()


def test_hung_v2_server_times_out_within_the_budget(tiny_bundle, server_factory, bars_stream):
    server = server_factory(tiny_bundle, "--device", "cpu").start()
    remote = _remote(tiny_bundle, server.url, timeout_s=0.5)
    assert remote.enhance_signal(bars_stream[0], 20, 20)[2]["source"] == "remote"
    server.pause()
    try:
        info = remote.enhance_signal(bars_stream[1], 20, 20)[2]
    finally:
        server.resume()
    assert info["source"] == "fallback" and "timeout" in info["fallback_reason"].lower()
    remote.close()


def test_signature_mismatch_is_named_and_falls_back(tiny_bundle, triton, bars_stream):
    wide = triton(input_shape=[-1, 65, 29])
    remote = _remote(tiny_bundle, wide.url)
    info = remote.enhance_signal(bars_stream[0], 30, 60)[2]
    assert info["source"] == "fallback"
    reason = info["fallback_reason"]
    assert "signature mismatch" in reason and "'windows'" in reason and "[-1, 65, 29]" in reason
    remote.close()

    fewer = triton(output_names=("p_lstm", "bull_prob"))
    client = RemoteClient([fewer.url], protocol="v2", contract_hash="0" * 64, timeout_s=2.0)
    with pytest.raises(RemoteError, match="signature mismatch: no output 'p_tft'"):
        client.infer(np.zeros((1, 64, 29), np.float32))
    client.close()

    # The bundle makes [B, 64, 29]; a model taking another window length is refused before
    # any inference, even when mismatches are accepted.
    h = load_bundle(tiny_bundle).contract_hash
    client = RemoteClient([wide.url], protocol="v2", contract_hash=h, accept_mismatch=True)
    with pytest.raises(RemoteError, match=r"'windows' is \[-1, 65, 29\].*makes \[-1, 64, 29\]"):
        client.infer(np.zeros((2, 64, 29), np.float32))
    assert not any(p.startswith("POST") for p in wide.paths)
    client.close()
