"""The V2 infer codec (mlsignal.wire.v2): JSON and binary tensors, requests and responses.

Round trips are bit for bit (float32 in, the same float32 out, whichever encoding), and every
malformed request names the field the server's 400 names.
"""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from mlsignal.errors import V2Error, WireError
from mlsignal.signature import OUTPUT_NAMES
from mlsignal.wire import v2

SHAPE = (4, 3)  # (T, F) of these tests
HL = v2.HEADER_LENGTH


def windows(b: int = 3, seed: int = 0) -> np.ndarray:
    """Random windows with the awkward float32 values too: -0.0, a subnormal, the extremes."""
    arr = np.random.default_rng(seed).standard_normal((b, *SHAPE)).astype(np.float32)
    arr.flat[:4] = [-0.0, np.float32(1e-45), np.finfo(np.float32).max, np.finfo(np.float32).tiny]
    return arr


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def decode(body: bytes, headers: dict[str, str], max_windows: int = 16) -> v2.InferRequest:
    return v2.decode_request(body, headers.get(HL), SHAPE, max_windows)


def triton_body(header: dict, payload: bytes = b"") -> tuple[bytes, dict[str, str]]:
    """A request laid out as tritonclient.http lays it out (json.dumps, then the bytes)."""
    text = json.dumps(header).encode()
    return text + payload, ({HL: str(len(text))} if payload else {})


def binary_input(arr: np.ndarray, **params: object) -> dict:
    size = {"binary_data_size": arr.nbytes, **params}
    return {"name": "windows", "shape": list(arr.shape), "datatype": "FP32", "parameters": size}


# --- requests -------------------------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False])
def test_a_request_round_trips_bit_for_bit(binary):
    arr = windows()
    encoded = v2.encode_request(arr, binary=binary, request_id="7")
    body, headers = encoded.body()
    assert encoded.binary is binary and encoded.n == 3
    call = decode(body, headers)
    assert call.id == "7" and call.timeout_us == 0
    assert same_bits(call.windows, arr)
    assert call.outputs == dict.fromkeys(OUTPUT_NAMES, binary)
    if binary:
        size = int(headers[HL])
        assert headers["content-type"] == v2.BINARY_TYPE
        assert body[size:] == arr.tobytes() and len(body) == size + 3 * 4 * 3 * 4
        head = orjson.loads(body[:size])
        assert head["inputs"][0]["parameters"] == {"binary_data_size": 144}
        assert "data" not in head["inputs"][0]
    else:
        assert headers == {"content-type": "application/json"} and HL not in headers


def test_each_attempt_carries_its_own_timeout_after_the_same_bytes():
    encoded = v2.encode_request(windows(), binary=True)
    first, h1 = encoded.body(timeout_us=2_500_000)
    second, h2 = encoded.body(timeout_us=900)
    assert decode(first, h1).timeout_us == 2_500_000 and decode(second, h2).timeout_us == 900
    assert first.endswith(encoded.payload) and second.endswith(encoded.payload)
    assert int(h2[HL]) == len(second) - len(encoded.payload)
    json_body, hj = v2.encode_request(windows(), binary=False).body(timeout_us=5)
    assert decode(json_body, hj).timeout_us == 5


def test_encode_request_refuses_bad_windows():
    with pytest.raises(ValueError, match="shape"):
        v2.encode_request(np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="finite"):
        v2.encode_request(np.full((1, 2, 2), np.nan, np.float32))


def test_tritonclients_layout_and_output_choices():
    arr = windows(2)
    # no outputs listed + binary_data_output: every output in binary (tritonclient's default)
    header = {"inputs": [binary_input(arr)], "parameters": {"binary_data_output": True}}
    call = decode(*triton_body(header, arr.tobytes()))
    assert same_bits(call.windows, arr) and call.outputs == dict.fromkeys(OUTPUT_NAMES, True)
    assert not call.windows.flags.writeable  # a view of the body: no copy
    # per-output binary_data overrides the request's; the order is the model's
    header["outputs"] = [
        {"name": "bull_prob", "parameters": {"binary_data": False}},
        {"name": "p_lstm"},
    ]
    call = decode(*triton_body(header, arr.tobytes()))
    assert list(call.outputs.items()) == [("p_lstm", True), ("bull_prob", False)]
    # JSON data in, outputs asked without parameters: JSON out, exactly as before
    plain = {"inputs": [{**binary_input(arr), "parameters": {}, "data": arr.ravel().tolist()}]}
    call = decode(*triton_body(plain))
    assert same_bits(call.windows, arr) and call.outputs == dict.fromkeys(OUTPUT_NAMES, False)


def _bad_cases() -> list[tuple[str, object, str, str]]:
    arr = windows(2)
    raw = arr.tobytes()
    head = {"inputs": [binary_input(arr)]}
    nan = arr.copy()
    nan[1, 2, 0] = np.nan
    raw_list = arr.ravel().tolist()  # 1e39 in it overflows float32: inf
    json_input = {**binary_input(arr), "parameters": {}, "data": raw_list}
    return [
        ("header beyond the body", (head, raw, "99999"), v2.HEADER_LENGTH, "from 1 to the body's"),
        ("header not a number", (head, raw, "12x"), v2.HEADER_LENGTH, "'12x'"),
        ("header zero", (head, raw, "0"), v2.HEADER_LENGTH, "from 1"),
        ("no header", (head, b"", None), v2.HEADER_LENGTH, "is required"),
        (
            "size not shape x 4",
            ({"inputs": [binary_input(arr, binary_data_size=95)]}, raw[:95], ""),
            "inputs[0].parameters.binary_data_size",
            "is 95 bytes; shape [2, 4, 3] of FP32 needs 96",
        ),
        ("body short", (head, raw[:-4], ""), "body", "has 92 bytes after"),
        ("body long", (head, raw + b"\0\0\0\0", ""), "body", "has 100 bytes after"),
        (
            "datatype",
            ({"inputs": [dict(binary_input(arr), datatype="FP64")]}, raw, ""),
            "inputs[0].datatype",
            "must be 'FP32', got 'FP64'",
        ),
        ("non-finite bytes", (head, nan.tobytes(), ""), "inputs[0]", "window 1, step 2, feature 0"),
        (
            "non-finite JSON",
            ({"inputs": [dict(json_input, data=[1e39, *raw_list[1:]])]}, b"", None),
            "inputs[0].data",
            "must be finite",
        ),
        (
            "too many windows",
            ({"inputs": [binary_input(windows(3))]}, windows(3).tobytes(), ""),
            "inputs[0].shape",
            "1 <= B <= 2",
        ),
        (
            "data and bytes",
            ({"inputs": [dict(binary_input(arr), data=[0.0])]}, raw, ""),
            "inputs[0].data",
            "absent",
        ),
        ("bytes, JSON input", ({"inputs": [json_input]}, b"\0\0\0\0", ""), "body", "no input"),
        (
            "negative size",
            ({"inputs": [binary_input(arr, binary_data_size=-4)]}, raw, ""),
            "inputs[0].parameters.binary_data_size",
            "whole number",
        ),
        (
            "binary_data not a bool",
            (dict(head, outputs=[{"name": "p_tft", "parameters": {"binary_data": 1}}]), raw, ""),
            "outputs[0].parameters.binary_data",
            "true or false",
        ),
        (
            "binary_data_output not a bool",
            (dict(head, parameters={"binary_data_output": "yes"}), raw, ""),
            "parameters.binary_data_output",
            "true or false",
        ),
        (
            "timeout",
            (dict(head, parameters={"timeout": -1}), raw, ""),
            "parameters.timeout",
            "microseconds",
        ),
        (
            "shared memory",
            ({"inputs": [binary_input(arr, shared_memory_region="r")]}, raw, ""),
            "inputs[0].parameters.shared_memory_region",
            "not supported",
        ),
        (
            "classification",
            (dict(head, outputs=[{"name": "p_tft", "parameters": {"classification": 2}}]), raw, ""),
            "outputs[0].parameters.classification",
            "not supported",
        ),
    ]


BAD = _bad_cases()


@pytest.mark.parametrize(("case", "request_parts", "field", "text"), BAD, ids=[c[0] for c in BAD])
def test_a_malformed_request_names_the_field(case, request_parts, field, text):
    header, payload, length = request_parts
    head = json.dumps(header).encode()
    if length == "":  # the right length
        length = str(len(head))
    with pytest.raises(V2Error) as e:
        v2.decode_request(head + payload, length, SHAPE, 2)
    assert e.value.field == field and text in str(e.value), str(e.value)
    assert str(e.value).startswith(f"{field}: ")  # the server answers 400 {"error": this}


def test_a_header_that_is_not_json_is_a_body_error():
    with pytest.raises(WireError, match="body: not valid JSON"):
        v2.decode_request(b"{nope" + b"\0" * 96, "5", SHAPE, 2)
    arr = windows(2)
    body, _ = triton_body({"inputs": [binary_input(arr)]}, arr.tobytes())
    with pytest.raises(WireError, match=f"not valid JSON .*needs the {v2.HEADER_LENGTH} header"):
        v2.decode_request(body, None, SHAPE, 2)  # the bytes sent without the header


# --- responses ------------------------------------------------------------------------------
HEAD = {"id": "9", "model_name": "mlsignal", "model_version": "abc"}


def outputs(n: int = 3, seed: int = 1) -> np.ndarray:
    out = np.random.default_rng(seed).random((n, 3)).astype(np.float32)
    out[0, 0] = np.float32(0.1)  # a value whose float32 and float64 digits differ
    return out


@pytest.mark.parametrize(
    "wanted",
    [
        dict.fromkeys(OUTPUT_NAMES, True),
        dict.fromkeys(OUTPUT_NAMES, False),
        {"p_lstm": True, "p_tft": False, "bull_prob": True},
    ],
    ids=["binary", "json", "mixed"],
)
def test_a_response_round_trips_bit_for_bit(wanted):
    out = outputs()
    body, headers = v2.encode_response(HEAD, out, wanted)
    doc, got = v2.decode_response(body, headers.get(HL), 3)
    assert same_bits(got, out)
    assert {k: doc[k] for k in HEAD} == HEAD
    binary = [n for n, b in wanted.items() if b]
    if not binary:
        assert headers == {"content-type": "application/json"}
        return
    size = int(headers[HL])
    assert headers["content-type"] == v2.BINARY_TYPE
    assert [o["name"] for o in doc["outputs"]] == list(OUTPUT_NAMES)
    for o in doc["outputs"]:
        assert ("data" in o) != (o["name"] in binary)
        if o["name"] in binary:
            assert o["parameters"] == {"binary_data_size": 12}
    # the bytes follow the JSON, in the order of the binary outputs in it
    cols = [out[:, OUTPUT_NAMES.index(n)].tobytes() for n in binary]
    assert body[size:] == b"".join(cols)


def test_only_the_outputs_asked_for_are_returned():
    body, headers = v2.encode_response(HEAD, outputs(), {"bull_prob": True})
    doc = orjson.loads(body[: int(headers[HL])])
    assert [o["name"] for o in doc["outputs"]] == ["bull_prob"]
    assert len(body) == int(headers[HL]) + 12


def test_a_response_in_tritons_shapes_and_types_decodes_exactly():
    out = outputs(2)
    tensors, chunks = [], []
    for k, name in enumerate(OUTPUT_NAMES):  # [n, 1], p_tft as FP64 bytes, bull_prob JSON
        col = out[:, k].astype(np.float64 if name == "p_tft" else np.float32)
        tensor = {"name": name, "datatype": "FP64" if name == "p_tft" else "FP32", "shape": [2, 1]}
        if name == "bull_prob":
            tensor["data"] = col.tolist()
        else:
            tensor["parameters"] = {"binary_data_size": col.nbytes}
            chunks.append(col.tobytes())
        tensors.append(tensor)
    head = json.dumps({"outputs": tensors}).encode()
    _, got = v2.decode_response(head + b"".join(chunks), str(len(head)), 2)
    assert same_bits(got, out)


def _bad_response(edit: str) -> tuple[bytes, str | None]:
    out = outputs(2)
    out[1, 2] = np.inf if edit == "inf" else out[1, 2]
    body, headers = v2.encode_response(HEAD, out, dict.fromkeys(OUTPUT_NAMES, True))
    length = headers[HL]
    if edit == "beyond":
        length = str(len(body) + 1)
    elif edit == "short":
        body = body[:-2]
    elif edit == "long":
        body += b"\0" * 4
    elif edit == "size":
        head = orjson.loads(body[: int(length)])
        head["outputs"][0]["parameters"]["binary_data_size"] = 4
        new = orjson.dumps(head)
        body, length = new + body[int(length) + 4 :], str(len(new))
    return body, length


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        ("beyond", v2.HEADER_LENGTH),
        ("short", "outputs.bull_prob.parameters.binary_data_size"),
        ("long", "body"),
        ("size", "outputs.p_lstm.parameters.binary_data_size"),
        ("inf", "outputs.bull_prob.data"),
    ],
)
def test_a_malformed_response_names_the_field(edit, field):
    body, length = _bad_response(edit)
    with pytest.raises(WireError) as e:
        v2.decode_response(body, length, 2)
    assert e.value.field == field, str(e.value)


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
def test_a_malformed_json_response_names_the_field(edit, field):
    doc = orjson.loads(v2.encode_response(HEAD, outputs(2), dict.fromkeys(OUTPUT_NAMES, False))[0])
    edit(doc)
    with pytest.raises(WireError) as e:
        v2.decode_response(orjson.dumps(doc), None, 2)
    assert e.value.field == field
