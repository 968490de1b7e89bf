"""The V2 (Open Inference Protocol) pieces of the client: bodies, metadata checks, routing.

Bodies are checked against the server's own V2 decoder; the routing against scripted
endpoints (httpx.MockTransport), as in test_client_remote.py.
"""

from __future__ import annotations

import httpx
import numpy as np
import orjson
import pytest

from mlsignal.client import RemoteClient, v2
from mlsignal.config import Settings
from mlsignal.errors import ConfigError, RemoteError, VersionMismatchError, WireError
from mlsignal.server.v2 import decode_infer as server_decode
from mlsignal.signature import triton_version

H = "4f" * 32
OTHER = "9a" * 32
TV = str(int(H[:15], 16))
URL = "http://v2.test:8000"


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


# --- bodies --------------------------------------------------------------------------------
def test_encode_infer_is_what_the_server_decodes_bit_for_bit():
    rng = np.random.default_rng(0)
    windows = rng.standard_normal((3, 4, 5)).astype(np.float32)
    body = v2.encode_infer(windows, request_id="7")
    doc = orjson.loads(body)
    (tensor,) = doc["inputs"]
    assert tensor["name"] == "windows" and tensor["datatype"] == "FP32"
    assert tensor["shape"] == [3, 4, 5] and len(tensor["data"]) == 60  # flat, row-major
    assert [o["name"] for o in doc["outputs"]] == ["p_lstm", "p_tft", "bull_prob"]
    req_id, decoded, wanted = server_decode(body, (4, 5), 16)
    assert req_id == "7" and wanted == set(v2.OUTPUT_NAMES)
    assert decoded.dtype == np.float32 and np.array_equal(decoded, windows)


def test_encode_infer_refuses_bad_windows():
    with pytest.raises(ValueError, match="shape"):
        v2.encode_infer(np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="finite"):
        v2.encode_infer(np.full((1, 2, 2), np.nan, np.float32))


@pytest.mark.parametrize("shape_of", [lambda n: [n], lambda n: [n, 1]])
def test_decode_infer_takes_b_and_b1_outputs_exactly(shape_of):
    out = np.random.default_rng(1).random((4, 3)).astype(np.float32)
    doc = orjson.loads(orjson.dumps(answer(out, shape_of), option=orjson.OPT_SERIALIZE_NUMPY))
    got = v2.decode_infer(doc, 4)
    assert got.dtype == np.float32 and np.array_equal(got, out)
    # float32 values printed as float32 (ours) or as their float64 (Triton) both come back exact
    tensors = answer(out)["outputs"]
    as32 = [dict(o, data=np.ascontiguousarray(out[:, k])) for k, o in enumerate(tensors)]
    doc32 = orjson.loads(orjson.dumps({"outputs": as32}, option=orjson.OPT_SERIALIZE_NUMPY))
    assert np.array_equal(v2.decode_infer(doc32, 4), out)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["outputs"].pop(1), "outputs"),
        (lambda d: d["outputs"][0].update(shape=[2, 2]), "outputs.p_lstm.shape"),
        (lambda d: d["outputs"][2].update(data=[0.1]), "outputs.bull_prob.data"),
        (lambda d: d["outputs"][2].update(data=["a", "b"]), "outputs.bull_prob.data"),
        (lambda d: d["outputs"][1].update(data=[float("nan"), 0.2]), "outputs.p_tft.data"),
        (lambda d: d["outputs"][1].update(datatype="BYTES"), "outputs.p_tft.datatype"),
        (lambda d: d.pop("outputs"), "outputs"),
    ],
)
def test_decode_infer_names_what_is_wrong(edit, field):
    doc = answer(np.full((2, 3), 0.5, np.float32))
    edit(doc)
    with pytest.raises(WireError) as e:
        v2.decode_infer(doc, 2)
    assert e.value.field == field


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
    """A scripted V2-only endpoint (Triton-like): records every request."""

    def __init__(self, meta: dict, config: dict | None, out: np.ndarray) -> None:
        self.meta, self.config, self.out = meta, config, out
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.seen.append(f"{request.method} {path}")
        if request.method == "GET" and path == "/v2/models/mlsignal":
            return httpx.Response(200, json=self.meta)
        if request.method == "GET" and path == "/v2/models/mlsignal/config" and self.config:
            return httpx.Response(200, json=self.config)
        if request.method == "POST" and path.endswith("/infer"):
            n = orjson.loads(request.content)["inputs"][0]["shape"][0]
            return httpx.Response(200, json=answer(self.out[:n]))
        return httpx.Response(404, json={"error": "Not Found"})


def _client(script: V2Script, protocol: str = "auto", **kw) -> RemoteClient:
    kw.setdefault("contract_hash", H)
    return RemoteClient([URL], protocol=protocol, transport=httpx.MockTransport(script), **kw)


def test_auto_detects_v2_once_checks_the_config_hash_and_pins_the_version():
    out = np.random.default_rng(2).random((2, 3)).astype(np.float32)
    config = {"parameters": {f"contract_hash_{TV}": {"string_value": H}}}
    script = V2Script(metadata(), config, out)
    client = _client(script)
    windows = np.zeros((2, 4, 3), np.float32)
    made = []
    reply = client.enhance({"symbols": []}, lambda: made.append(1) or windows)
    assert reply.protocol == "v2" and np.array_equal(reply.doc["outputs"], out)
    assert reply.doc["matched"] == "triton_config" and reply.attempts == 1
    again = client.enhance({"symbols": []}, lambda: windows)
    assert np.array_equal(again.doc["outputs"], out) and made == [1]
    infer = f"POST /v2/models/mlsignal/versions/{TV}/infer"
    assert script.seen == [
        "GET /v1/models",
        "GET /v2/models/mlsignal",
        "GET /v2/models/mlsignal/config",
        infer,
        infer,
    ]
    assert client.endpoint_protocols() == {URL: "v2"}


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
    assert reply.protocol == "mlsignal" and seen == ["GET /v1/models", "POST /v1/enhance"]
    assert client.endpoint_protocols() == {URL: "unknown"}  # not proven: asked again next call


def test_without_windows_a_v2_endpoint_is_an_error():
    script = V2Script(metadata(), None, np.zeros((1, 3), np.float32))
    with pytest.raises(RemoteError, match="speaks only V2"):
        _client(script).enhance({"symbols": []})
