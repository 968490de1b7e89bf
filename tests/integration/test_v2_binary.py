"""The real Triton HTTP client (tritonclient.http) against a real `mlsignal serve` process.

With its defaults it sends the windows as binary tensor data and asks every output back in
binary; with ``binary_data=False`` it sends and asks JSON. Either way the outputs equal the
in-process runtime's for the same windows, bit for bit. Malformed binary requests get a 400
whose message names the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from mlsignal.bundle import load_bundle
from mlsignal.runtime import load_runtime
from mlsignal.signature import OUTPUT_NAMES

httpclient = pytest.importorskip("tritonclient.http", reason="pip install 'tritonclient[http]'")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.slow

MAX_WINDOWS = 8  # the server's --max-symbols: the golden batch fits, one more does not


@pytest.fixture(scope="module")
def srv(tiny_bundle: Path, tmp_path_factory, server_class) -> Iterator:
    server = server_class(
        tiny_bundle, "--device", "cpu", "--max-symbols", str(MAX_WINDOWS),
        log_dir=tmp_path_factory.mktemp("logs"),
    )  # fmt: skip
    server.start()
    yield server
    assert server.stop() == 0
    server.close()


@pytest.fixture(scope="module")
def triton(srv) -> Iterator:
    client = httpclient.InferenceServerClient(url=srv.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def golden(tiny_bundle: Path) -> np.ndarray:
    with np.load(tiny_bundle / "golden.npz") as g:
        return g["inputs"].astype(np.float32)


@pytest.fixture(scope="module")
def expected(tiny_bundle: Path, golden: np.ndarray) -> np.ndarray:
    """The in-process runtime's outputs for the golden windows, ``(8, 3)`` float32."""
    return load_runtime(load_bundle(tiny_bundle), "cpu").predict(golden)


def windows_input(golden: np.ndarray, binary_data: bool = True):
    tensor = httpclient.InferInput("windows", list(golden.shape), "FP32")
    return tensor.set_data_from_numpy(golden, binary_data=binary_data)


def assert_bit_for_bit(result, expected: np.ndarray, names=OUTPUT_NAMES) -> None:
    for name in names:
        got = result.as_numpy(name)
        want = expected[:, OUTPUT_NAMES.index(name)]
        assert got.dtype == np.float32 and np.array_equal(got, want), name


def test_tritonclient_with_its_defaults_gets_binary_outputs_bit_for_bit(
    triton, golden, expected, tiny_bundle
):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("mlsignal")
    assert "binary_tensor_data" in triton.get_server_metadata()["extensions"]
    meta = triton.get_model_metadata("mlsignal")
    assert meta["inputs"][0]["shape"] == [-1, 64, 29]
    # no outputs named: tritonclient asks binary_data_output, every output comes back
    result = triton.infer("mlsignal", [windows_input(golden)])
    assert_bit_for_bit(result, expected)
    for name in OUTPUT_NAMES:
        assert result.get_output(name)["parameters"] == {"binary_data_size": 4 * len(golden)}
    # outputs named with InferRequestedOutput's default (binary_data=True), a version, an id
    h = load_bundle(tiny_bundle).contract_hash
    asked = [httpclient.InferRequestedOutput(n) for n in ("bull_prob", "p_lstm")]
    result = triton.infer(
        "mlsignal", [windows_input(golden)], model_version=h, outputs=asked, request_id="r-1"
    )
    doc = result.get_response()
    assert doc["id"] == "r-1" and doc["model_version"] == h
    assert [o["name"] for o in doc["outputs"]] == ["p_lstm", "bull_prob"]  # only those asked
    assert result.as_numpy("p_tft") is None
    assert_bit_for_bit(result, expected, ("p_lstm", "bull_prob"))


def test_tritonclient_with_json_tensors_gets_the_same_numbers(triton, golden, expected):
    asked = [httpclient.InferRequestedOutput(n, binary_data=False) for n in OUTPUT_NAMES]
    result = triton.infer("mlsignal", [windows_input(golden, False)], outputs=asked)
    assert all("data" in result.get_output(n) for n in OUTPUT_NAMES)
    assert_bit_for_bit(result, expected)
    # binary in, one output in JSON and the others in binary
    asked[1] = httpclient.InferRequestedOutput("p_tft", binary_data=True)
    result = triton.infer("mlsignal", [windows_input(golden)], outputs=asked)
    assert "data" not in result.get_output("p_tft") and "data" in result.get_output("p_lstm")
    assert_bit_for_bit(result, expected)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_compressed_requests_are_read(triton, golden, expected, algorithm):
    result = triton.infer(
        "mlsignal",
        [windows_input(golden)],
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,  # answered uncompressed, as HTTP allows
    )
    assert_bit_for_bit(result, expected)


def test_a_request_timeout_past_before_inference_is_a_504(triton, golden):
    with pytest.raises(InferenceServerException) as e:
        triton.infer("mlsignal", [windows_input(golden)], timeout=1)  # 1 µs from arrival
    assert e.value.status() == "504" and "deadline exceeded" in e.value.message()


def _binary_request(golden: np.ndarray, **tensor: object) -> tuple[bytes, bytes]:
    raw = golden.tobytes()
    meta = {"name": "windows", "shape": list(golden.shape), "datatype": "FP32"}
    meta["parameters"] = {"binary_data_size": len(raw)}
    meta.update(tensor)
    return json.dumps({"inputs": [meta]}).encode(), raw


def test_malformed_binary_requests_get_400_naming_the_field(srv, golden):
    nan = golden.copy()
    nan[3, 10, 5] = np.inf
    nine = np.concatenate([golden, golden[:1]])
    head, raw = _binary_request(golden)
    cases = [
        (head + raw, str(len(head) + len(raw) + 1), "Inference-Header-Content-Length: is"),
        (head + raw[:-4], str(len(head)), "body: has 59388 bytes after"),
        (
            b"".join(_binary_request(golden, parameters={"binary_data_size": 100})),
            None,
            "inputs[0].parameters.binary_data_size: is 100 bytes; shape [8, 64, 29] of FP32 "
            "needs 59392",
        ),
        (b"".join(_binary_request(golden, datatype="FP64")), None, "inputs[0].datatype"),
        (b"".join(_binary_request(nan)), None, "inputs[0]: must be finite; window 3, step 10"),
        (b"".join(_binary_request(nine)), None, "inputs[0].shape: is [9, 64, 29]"),
        (head + raw, "", "Inference-Header-Content-Length: is ''"),
    ]
    with httpx.Client(base_url=srv.url, timeout=20.0) as http:
        for body, length, message in cases:
            if length is None:
                length = str(body.index(b"}]}") + 3)  # the JSON header as sent
            r = http.post(
                "/v2/models/mlsignal/infer",
                content=body,
                headers={"Inference-Header-Content-Length": length},
            )
            assert r.status_code == 400, (message, r.text)
            assert r.json()["error"].startswith(message), r.json()
        sent_without_header = http.post("/v2/models/mlsignal/infer", content=head + raw)
        assert sent_without_header.status_code == 400
        assert "needs the Inference-Header-Content-Length header" in sent_without_header.text
