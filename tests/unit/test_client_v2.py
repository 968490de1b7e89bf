"""The V2 (Open Inference Protocol) pieces of the client: metadata checks and routing.

The routing runs against scripted endpoints (httpx.MockTransport), as in
test_client_remote.py; the bodies they exchange are mlsignal.wire.v2's (test_wire_v2.py).
"""

from __future__ import annotations

import httpx
import numpy as np
import orjson
import pytest

from mlsignal.client import RemoteClient, v2
from mlsignal.config import Settings
from mlsignal.errors import ConfigError, RemoteError, VersionMismatchError
from mlsignal.pipeline.finish import PROTOCOLS
from mlsignal.signature import triton_version
from mlsignal.wire import v2 as v2wire

H = "4f" * 32
OTHER = "9a" * 32
TV = str(int(H[:15], 16))
URL = "http://v2.test:8000"
JSON = "application/json"


def metadata(
    versions: list[str] | None = None,
    shape: list[int] | None = None,
    out_shape: list[int] | None = None,
) -> dict:
    return {
        "name": "mlsignal",
        "versions": [TV] if versions is None else versions,
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "windows", "datatype": "FP32", "shape": shape or [-1, 4, 3]}],
        "outputs": [
            {"name": n, "datatype": "FP32", "shape": out_shape or [-1, 1]} for n in v2.OUTPUT_NAMES
        ],
    }


def answer(out: np.ndarray, shape_of: callable = lambda n: [n, 1], version: str = TV) -> dict:
    return {
        "model_name": "mlsignal",
        "model_version": version,
        "outputs": [
            {"name": n, "datatype": "FP32", "shape": shape_of(len(out)), "data": out[:, k].tolist()}
            for k, n in enumerate(v2.OUTPUT_NAMES)
        ],
    }


# --- metadata --------------------------------------------------------------------------------
def test_signature_accepts_ours_and_tritons_and_names_each_mismatch():
    assert v2.check_signature(metadata(), "mlsignal", (4, 3)) == (4, 3)
    assert v2.check_signature(metadata(out_shape=[-1]), "mlsignal") == (4, 3)
    cases = [
        (dict(metadata(), inputs=[]), r"inputs \[\], expected one input 'windows'"),
        (
            metadata(shape=[-1, 5, 3]),
            r"input 'windows' has shape \[-1, 5, 3\], expected \[-1, 4, 3\]",
        ),
        (metadata(shape=[8, 4, 3]), r"has shape \[8, 4, 3\]"),
        (metadata(out_shape=[-1, 2]), r"output 'p_lstm' is 'FP32' \[-1, 2\]"),
        (dict(metadata(), outputs=metadata()["outputs"][:2]), "no output 'bull_prob'"),
        ({"name": "mlsignal"}, "no inputs/outputs"),
    ]
    for doc, match in cases:
        with pytest.raises(RemoteError, match=match):
            v2.check_signature(doc, "mlsignal", (4, 3))
    doc = metadata()
    doc["inputs"][0]["datatype"] = "FP16"
    with pytest.raises(RemoteError, match="input 'windows' is 'FP16', expected FP32"):
        v2.check_signature(doc, "mlsignal")


def test_versions_match_by_hash_or_by_the_triton_number():
    assert v2.triton_version(H) == triton_version(H)  # the client's copy of export-triton's rule
    assert v2.pick_version(metadata(versions=[OTHER, H]), H) == (H, "contract_hash")
    assert v2.pick_version(metadata(versions=["1", TV]), H) == (TV, "triton_version")
    assert v2.pick_version(metadata(versions=[OTHER]), H) == (None, "none")
    assert v2.pick_version({"versions": None}, H) == (None, "none")
    config = {"parameters": {f"contract_hash_{TV}": {"string_value": H}}}
    assert v2.config_hash(config, TV) == H and v2.config_hash(config, "1") is None
    assert v2.config_hash({"parameters": []}, TV) is None and v2.config_hash(None, TV) is None
    target = v2.V2Target("m", TV, "triton_version", (TV,), "onnxruntime_onnx", (4, 3))
    assert target.infer_path == f"/v2/models/m/versions/{TV}/infer"
    assert v2.V2Target("m", None, "accepted", (), "x", (4, 3)).infer_path == "/v2/models/m/infer"
    with pytest.raises(VersionMismatchError, match=f"version 1, asked {TV}"):
        v2.check_answer({"model_version": "1"}, target, URL)
    with pytest.raises(VersionMismatchError, match="for model 'x'"):
        v2.check_answer({"model_name": "x"}, target, URL)
    v2.check_answer({"model_name": "m", "model_version": TV}, target, URL)


def test_settings_read_protocol_and_model_name():
    s = Settings.from_env({"GPU_INFERENCE_PROTOCOL": " V2 ", "GPU_INFERENCE_MODEL_NAME": "sig_1"})
    assert (s.protocol, s.model_name) == ("v2", "sig_1")
    assert (Settings().protocol, Settings().model_name) == ("auto", "mlsignal")
    with pytest.raises(ConfigError, match="GPU_INFERENCE_PROTOCOL='grpc'"):
        Settings(protocol="grpc")
    with pytest.raises(ConfigError, match="GPU_INFERENCE_MODEL_NAME='a/b'"):
        Settings(model_name="a/b")
    client = RemoteClient.from_settings(Settings(api_urls=(URL,), protocol="v2", model_name="m2"))
    assert (client.protocol, client.model_name) == ("v2", "m2")
    with pytest.raises(ConfigError):
        RemoteClient([URL], protocol="v3")


# --- routing against scripted endpoints --------------------------------------------------
class V2Script:
    """A scripted V2-only endpoint (Triton-like): records every request. ``extensions`` is
    what ``GET /v2`` lists (``None``: no server metadata, a 404); binary requests are
    answered in binary (outputs ``[n, 1]``), JSON ones in JSON."""

    def __init__(
        self,
        meta: dict,
        config: dict | None,
        out: np.ndarray,
        extensions: list[str] | None = None,
    ) -> None:
        self.meta, self.config, self.out, self.extensions = meta, config, out, extensions
        self.seen: list[str] = []
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.seen.append(f"{request.method} {path}")
        self.requests.append(request)
        if request.method == "GET" and path == "/v2" and self.extensions is not None:
            return httpx.Response(200, json={"name": "triton", "extensions": self.extensions})
        if request.method == "GET" and path == "/v2/models/mlsignal":
            return httpx.Response(200, json=self.meta)
        if request.method == "GET" and path == "/v2/models/mlsignal/config" and self.config:
            return httpx.Response(200, json=self.config)
        if request.method == "POST" and path.endswith("/infer"):
            return self.infer(request)
        return httpx.Response(404, json={"error": "Not Found"})

    def infer(self, request: httpx.Request) -> httpx.Response:
        length = request.headers.get(v2wire.HEADER_LENGTH)
        call = v2wire.decode_request(request.content, length, (4, 3), 64)
        n = len(call.windows)
        if length is None:
            return httpx.Response(200, json=answer(self.out[:n]))
        tensors = answer(self.out[:n])["outputs"]
        raw = [np.asarray(t.pop("data"), np.float32).tobytes() for t in tensors]
        for t, r in zip(tensors, raw, strict=True):
            t["parameters"] = {"binary_data_size": len(r)}
        head = orjson.dumps({"model_name": "mlsignal", "model_version": TV, "outputs": tensors})
        headers = {v2wire.HEADER_LENGTH: str(len(head))}
        return httpx.Response(200, content=head + b"".join(raw), headers=headers)


def _client(script: V2Script, protocol: str = "auto", **kw) -> RemoteClient:
    kw.setdefault("contract_hash", H)
    return RemoteClient([URL], protocol=protocol, transport=httpx.MockTransport(script), **kw)


@pytest.mark.parametrize(
    ("extensions", "protocol"),
    [(["binary_tensor_data", "model_configuration"], "v2-binary"), ([], "v2"), (None, "v2")],
    ids=["binary", "json", "no-server-metadata"],
)
def test_auto_detects_v2_once_checks_the_config_hash_and_pins_the_version(extensions, protocol):
    out = np.random.default_rng(2).random((2, 3)).astype(np.float32)
    config = {"parameters": {f"contract_hash_{TV}": {"string_value": H}}}
    script = V2Script(metadata(), config, out, extensions)
    client = _client(script)
    windows = np.zeros((2, 4, 3), np.float32)
    made = []
    reply = client.enhance(lambda: pytest.fail("no bars for V2"), lambda: made.append(1) or windows)
    assert reply.protocol == protocol and np.array_equal(reply.doc["outputs"], out)
    assert reply.doc["matched"] == "triton_config" and reply.attempts == 1
    again = client.enhance({"symbols": []}, lambda: windows)
    assert np.array_equal(again.doc["outputs"], out) and made == [1]
    infer = f"POST /v2/models/mlsignal/versions/{TV}/infer"
    probes = ["GET /v1/models"] if extensions is None else []  # a 404 at /v2: ask v1 too
    assert script.seen == [
        "GET /v2",
        *probes,
        "GET /v2/models/mlsignal",
        "GET /v2/models/mlsignal/config",
        infer,
        infer,
    ]
    assert client.endpoint_protocols() == {URL: protocol} and protocol in PROTOCOLS
    sent = script.requests[-1]
    binary = protocol == "v2-binary"
    assert (v2wire.HEADER_LENGTH.lower() in sent.headers) is binary
    assert sent.headers["content-type"] == ("application/octet-stream" if binary else JSON)
    assert sent.headers["accept-encoding"] == "identity"


def test_each_infer_attempt_sends_what_is_left_of_the_deadline_as_its_timeout():
    now = [0.0]
    script = V2Script(metadata(), None, np.zeros((1, 3), np.float32), ["binary_tensor_data"])

    def slow_reads(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            now[0] += 0.25  # each metadata read takes 250 ms of the budget
        return script(request)

    transport = httpx.MockTransport(slow_reads)
    client = RemoteClient(
        [URL], protocol="v2", contract_hash=TV, timeout_s=2.0, transport=transport,
        clock=lambda: now[0],
    )  # fmt: skip
    client.infer(np.zeros((1, 4, 3), np.float32))  # GET /v2, GET metadata, then infer
    client.infer(np.zeros((1, 4, 3), np.float32))  # metadata known: the whole budget
    timeouts = []
    for r in script.requests:
        if r.method == "POST":
            length = r.headers[v2wire.HEADER_LENGTH]
            timeouts.append(v2wire.decode_request(r.content, length, (4, 3), 8).timeout_us)
    assert script.seen[:2] == ["GET /v2", "GET /v2/models/mlsignal"]
    assert timeouts == [1_500_000, 2_000_000]


def test_a_config_with_another_full_hash_is_a_mismatch_unless_accepted():
    config = {"parameters": {f"contract_hash_{TV}": {"string_value": OTHER}}}
    script = V2Script(metadata(), config, np.zeros((1, 3), np.float32))
    with pytest.raises(VersionMismatchError, match=f"Triton version {TV}"):
        _client(script, protocol="v2").infer(np.zeros((1, 4, 3), np.float32))
    assert not any(s.startswith("POST") for s in script.seen)
    reply = _client(script, protocol="v2", accept_mismatch=True).infer(np.zeros((1, 4, 3)))
    assert reply.doc["matched"] == "accepted"
    assert script.seen[-1] == "POST /v2/models/mlsignal/infer"  # unversioned


def test_auto_speaks_mlsignal_to_a_server_that_is_not_proven_v2():
    seen = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.method == "GET":
            return httpx.Response(501, text="Unsupported method ('GET')")
        return httpx.Response(200, json={"contract_hash": H, "results": []})

    client = RemoteClient(
        [URL], protocol="auto", contract_hash=H, transport=httpx.MockTransport(server)
    )
    reply = client.enhance({"symbols": []}, lambda: pytest.fail("no windows for mlsignal"))
    assert reply.protocol == "mlsignal"
    assert seen == ["GET /v2", "GET /v1/models", "POST /v1/enhance"]
    assert client.endpoint_protocols() == {URL: "unknown"}  # not proven: asked again next call


def test_without_windows_a_v2_endpoint_is_an_error():
    script = V2Script(metadata(), None, np.zeros((1, 3), np.float32))
    with pytest.raises(RemoteError, match="speaks only V2"):
        _client(script).enhance({"symbols": []})


def test_ml_info_protocol_takes_only_the_pipelines_values():
    from mlsignal.pipeline import SignalResult, annotate

    assert {v2.MLSIGNAL, *v2.V2_PROTOCOLS} == set(PROTOCOLS)
    result = SignalResult("A", 1.0, 2.0, {"source": "remote"})
    assert annotate(result, protocol="v2-binary").ml_info["protocol"] == "v2-binary"
    with pytest.raises(ValueError, match="protocol 'grpc' is not one of"):
        annotate(result, protocol="grpc")
