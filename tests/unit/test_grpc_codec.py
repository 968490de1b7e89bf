"""The V2 gRPC messages and codec: the .proto reader, field numbers against Triton's client,
request decoding and validation, the answers, the status of each error, the API key."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2

from mlsignal.errors import (
    DeadlineError,
    DrainingError,
    QueueFullError,
    ReplicaUnavailableError,
    V2Error,
)
from mlsignal.server import proto
from mlsignal.server.grpc_codec import decode_infer, infer_response, metadata_response
from mlsignal.server.grpc_v2 import GrpcConfig, _Abort, _metadata_key, status_of
from mlsignal.server.proto.reader import ProtoSyntaxError, parse
from mlsignal.signature import OUTPUT_NAMES

SHAPE = (64, 29)
RNG = np.random.default_rng(0)


def windows(n: int = 3) -> np.ndarray:
    return RNG.standard_normal((n, *SHAPE)).astype(np.float32)


def raw_request(w: np.ndarray, **kw) -> proto.ModelInferRequest:
    req = proto.ModelInferRequest(model_name="mlsignal", id=kw.pop("id", ""))
    req.inputs.add(name=kw.pop("name", "windows"), datatype=kw.pop("datatype", "FP32"),
                   shape=kw.pop("shape", list(w.shape)))  # fmt: skip
    req.raw_input_contents.append(w.astype("<f4").tobytes())
    for name in kw.pop("outputs", ()):
        req.outputs.add(name=name)
    assert not kw
    return req


def typed_request(w: np.ndarray) -> proto.ModelInferRequest:
    req = proto.ModelInferRequest(model_name="mlsignal")
    t = req.inputs.add(name="windows", datatype="FP32", shape=list(w.shape))
    t.contents.fp32_contents.extend(w.ravel().tolist())
    return req


def field_of(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.field


# --- the .proto and its reader -------------------------------------------------------------
def _fields(desc) -> dict[str, tuple]:
    """name -> (number, label, type, type_name, oneof) of a message and its nested types."""
    p = descriptor_pb2.DescriptorProto()
    desc.CopyToProto(p)
    out = {}

    def walk(prefix: str, m: descriptor_pb2.DescriptorProto) -> None:
        for f in m.field:
            oneof = f.oneof_index if f.HasField("oneof_index") else None
            out[f"{prefix}{f.name}"] = (f.number, f.label, f.type, f.type_name, oneof)
        for n in m.nested_type:
            walk(f"{prefix}{n.name}.", n)
            out[f"{prefix}{n.name}"] = ("map_entry", n.options.map_entry)

    walk("", p)
    return out


def test_messages_match_tritons_field_numbers_and_types():
    triton = pytest.importorskip("tritonclient.grpc.service_pb2")
    names = [d.name for d in proto.FILE.message_types_by_name.values()]
    assert len(names) == 14
    for name in names:
        ours = _fields(proto.FILE.message_types_by_name[name])
        theirs = _fields(getattr(triton, name).DESCRIPTOR)
        assert ours == theirs, name
    service = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert proto.SERVICE.full_name == service.full_name == "inference.GRPCInferenceService"
    for m in proto.SERVICE.methods:
        t = service.methods_by_name[m.name]
        assert (m.input_type.full_name, m.output_type.full_name) == (
            t.input_type.full_name,
            t.output_type.full_name,
        )
        assert not (m.client_streaming or m.server_streaming)
    assert {m.name for m in proto.SERVICE.methods} == {
        "ServerLive", "ServerReady", "ServerMetadata", "ModelMetadata", "ModelReady", "ModelInfer"
    }  # fmt: skip


def test_wire_bytes_interoperate_with_tritons_classes():
    triton = pytest.importorskip("tritonclient.grpc.service_pb2")
    w = windows(2)
    ours = raw_request(w, id="r1", outputs=["bull_prob"])
    ours.inputs[0].parameters["x"].int64_param = 5
    theirs = triton.ModelInferRequest.FromString(ours.SerializeToString())
    assert theirs.id == "r1" and list(theirs.inputs[0].shape) == [2, 64, 29]
    assert theirs.inputs[0].parameters["x"].int64_param == 5
    assert theirs.raw_input_contents[0] == w.tobytes()
    back = proto.ModelInferRequest.FromString(theirs.SerializeToString())
    assert back == ours


def test_reader_builds_maps_oneofs_and_absolute_names():
    fd = parse(
        'syntax = "proto3"; package a.b; /* c */\n'
        "message Outer { message In { int64 v = 1; }\n"
        "  map<string, In> my_map = 1; repeated In ins = 2;\n"
        "  oneof pick { bool x = 3; string y = 4; } }\n"
        "service S { rpc Call(Outer) returns (Outer.In); }\n",
        "t.proto",
    )
    outer = fd.message_type[0]
    entry = next(n for n in outer.nested_type if n.name == "MyMapEntry")
    assert entry.options.map_entry and entry.field[1].type_name == ".a.b.Outer.In"
    fields = {f.name: f for f in outer.field}
    assert fields["my_map"].type_name == ".a.b.Outer.MyMapEntry"
    assert fields["ins"].type_name == ".a.b.Outer.In"
    assert fields["x"].oneof_index == fields["y"].oneof_index == 0
    assert fd.service[0].method[0].output_type == ".a.b.Outer.In"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('syntax = "proto2";', "proto3"),
        ('syntax = "proto3";\nimport "x.proto";', "line 2"),
        ('syntax = "proto3";\nmessage M {\n  enum E { A = 0; }\n}', "line 3"),
        ('syntax = "proto3"; message M { Missing m = 1; }', "unknown message type 'Missing'"),
        ('syntax = "proto3"; service S { rpc A(stream M) returns (M); }', "streaming"),
        ('syntax = "proto3"; message M { int32 x = 1 }', "expected ';'"),
        ('syntax = "proto3"; message M { int32 x = 1; ', "end of file"),
        ('syntax = "proto3"; message M { int32 x = 1; } $', "unexpected character"),
    ],
)
def test_reader_refuses_what_it_does_not_take(text, says):
    with pytest.raises(ProtoSyntaxError, match=says.replace("(", r"\(")):
        parse(text, "t.proto")


# --- decoding ------------------------------------------------------------------------------
def test_raw_and_typed_inputs_decode_to_the_same_windows():
    w = windows(3)
    raw = decode_infer(raw_request(w, id="req-1"), SHAPE, 8)
    assert raw.id == "req-1" and raw.wanted == frozenset(OUTPUT_NAMES)
    assert raw.windows.dtype == np.float32 and raw.windows.flags.writeable
    assert np.array_equal(raw.windows, w)
    typed = decode_infer(typed_request(w), SHAPE, 8)
    assert np.array_equal(typed.windows, w)
    only = decode_infer(raw_request(w, outputs=["bull_prob", "p_tft"]), SHAPE, 8)
    assert only.wanted == {"bull_prob", "p_tft"}


def _bad_requests() -> list[tuple[str, proto.ModelInferRequest]]:
    w = windows(2)
    cases = [("inputs", proto.ModelInferRequest(model_name="mlsignal"))]
    two = raw_request(w)
    two.inputs.add(name="windows", datatype="FP32", shape=[2, 64, 29])
    cases.append(("inputs", two))
    cases.append(("inputs[0].name", raw_request(w, name="x")))
    cases.append(("inputs[0].datatype", raw_request(w, datatype="FP64")))
    cases.append(("inputs[0].shape", raw_request(w, shape=[2, 10, 29])))
    cases.append(("inputs[0].shape", raw_request(w, shape=[2, 64 * 29])))
    cases.append(("inputs[0].shape", raw_request(w, shape=[9, 64, 29])))  # over max_windows
    cases.append(("inputs[0].shape", raw_request(w, shape=[0, 64, 29])))
    short = raw_request(w)
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    cases.append(("raw_input_contents[0]", short))
    extra = raw_request(w)
    extra.raw_input_contents.append(b"")
    cases.append(("raw_input_contents", extra))
    both = raw_request(w)
    both.inputs[0].contents.fp32_contents.append(1.0)
    cases.append(("inputs[0].contents", both))
    nan = w.copy()
    nan[1, 3, 4] = np.nan
    cases.append(("raw_input_contents[0]", raw_request(nan)))
    typed_nan = typed_request(nan)
    cases.append(("inputs[0].contents.fp32_contents", typed_nan))
    typed_short = typed_request(w)
    del typed_short.inputs[0].contents.fp32_contents[-1]
    cases.append(("inputs[0].contents.fp32_contents", typed_short))
    empty = typed_request(w)
    empty.inputs[0].contents.Clear()
    cases.append(("inputs[0].contents", empty))
    wrong_type = typed_request(w)
    wrong_type.inputs[0].contents.fp64_contents.append(1.0)
    cases.append(("inputs[0].contents.fp64_contents", wrong_type))
    shm = raw_request(w)
    shm.inputs[0].parameters["shared_memory_region"].string_param = "r"
    cases.append(("inputs[0].parameters", shm))
    cases.append(("outputs[1].name", raw_request(w, outputs=["bull_prob", "nope"])))
    classify = raw_request(w, outputs=["bull_prob"])
    classify.outputs[0].parameters["classification"].int64_param = 2
    cases.append(("outputs[0].parameters", classify))
    return cases


@pytest.mark.parametrize(("field", "request_"), _bad_requests())
def test_bad_requests_name_the_field(field, request_):
    with pytest.raises(V2Error) as e:
        decode_infer(request_, SHAPE, 8)
    assert field_of(e) == field and str(e.value).startswith(f"{field}: ")


def test_shape_message_is_the_rest_routes():
    with pytest.raises(V2Error) as e:
        decode_infer(raw_request(windows(2), shape=[2, 10, 29]), SHAPE, 8)
    assert str(e.value) == "inputs[0].shape: is [2, 10, 29]; expected [B, 64, 29] with 1 <= B <= 8"


# --- answers -------------------------------------------------------------------------------
def test_infer_response_carries_raw_little_endian_outputs():
    w = windows(4)
    out = RNG.random((4, 3)).astype(np.float32)
    call = decode_infer(raw_request(w, id="abc", outputs=["bull_prob", "p_lstm"]), SHAPE, 8)
    reply = infer_response("f" * 64, call, out)
    assert (reply.model_name, reply.model_version, reply.id) == ("mlsignal", "f" * 64, "abc")
    assert [o.name for o in reply.outputs] == ["p_lstm", "bull_prob"]  # the model's order
    assert all(o.datatype == "FP32" and list(o.shape) == [4] for o in reply.outputs)
    assert len(reply.raw_output_contents) == 2
    got = [np.frombuffer(b, dtype="<f4") for b in reply.raw_output_contents]
    assert np.array_equal(got[0], out[:, 0]) and np.array_equal(got[1], out[:, 2])


def test_metadata_response_from_the_rest_document():
    doc = {
        "name": "mlsignal",
        "versions": ["abc"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "windows", "datatype": "FP32", "shape": [-1, 64, 29]}],
        "outputs": [{"name": n, "datatype": "FP32", "shape": [-1]} for n in OUTPUT_NAMES],
    }
    reply = metadata_response(doc)
    assert list(reply.versions) == ["abc"] and reply.platform == "onnxruntime_onnx"
    assert list(reply.inputs[0].shape) == [-1, 64, 29]
    assert [o.name for o in reply.outputs] == list(OUTPUT_NAMES)


# --- statuses, keys, config ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "code", "kind"),
    [
        (V2Error("inputs[0].shape", "bad"), "INVALID_ARGUMENT", "invalid"),
        (QueueFullError(10), "UNAVAILABLE", "overloaded"),
        (DrainingError(), "UNAVAILABLE", "draining"),
        (ReplicaUnavailableError("gone"), "UNAVAILABLE", "unavailable"),
        (DeadlineError(), "DEADLINE_EXCEEDED", "deadline"),
        (RuntimeError("secret detail"), "INTERNAL", "internal"),
    ],
)
def test_status_of_each_error(exc, code, kind):
    status, message, got_kind = status_of(exc)
    assert (status.name, got_kind) == (code, kind)
    assert message == ("internal error" if code == "INTERNAL" else str(exc))


def test_abort_keeps_its_status():
    status, message, kind = status_of(_Abort(grpc.StatusCode.NOT_FOUND, "unknown model", "nf"))
    assert (status, message, kind) == (grpc.StatusCode.NOT_FOUND, "unknown model", "nf")


@pytest.mark.parametrize(
    ("metadata", "key"),
    [
        ((("authorization", "Bearer k1"),), b"k1"),
        ((("authorization", "bearer  k2 "),), b"k2"),
        ((("x-api-key", "k3"),), b"k3"),
        ((("authorization", "Basic abc"),), None),
        ((("user-agent", "grpc"), ("key-bin", b"\x00")), None),
        (None, None),
    ],
)
def test_metadata_key(metadata, key):
    assert _metadata_key(metadata) == key


def test_grpc_config_checks_itself():
    assert GrpcConfig(8001).address == "127.0.0.1:8001"
    assert GrpcConfig(8001, "::1").address == "[::1]:8001"
    for bad in (-1, 70000, True, "8001"):
        with pytest.raises(ValueError, match="--grpc-port"):
            GrpcConfig(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="go together"):
        GrpcConfig(8001, certfile="c.pem")
