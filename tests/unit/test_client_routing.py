"""The client's protocol router with scripted GET answers (no HTTP, no server)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from mlsignal.client.policy import Deadline
from mlsignal.client.routing import Router, Send, Wanted
from mlsignal.errors import RemoteError, VersionMismatchError
from mlsignal.signature import OUTPUT_NAMES, triton_version

H, OTHER = "4f" * 32, "9a" * 32
TV = str(triton_version(H))
URL = "http://v2.test:8000"
V1 = Send("POST", "/v1/enhance", b"{}", cap_ms=800.0)


def metadata(versions: list[str]) -> dict:
    return {
        "name": "mlsignal",
        "versions": versions,
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "windows", "datatype": "FP32", "shape": [-1, 4, 3]}],
        "outputs": [{"name": n, "datatype": "FP32", "shape": [-1, 1]} for n in OUTPUT_NAMES],
    }


class Script:
    """GET answers by path; records the paths asked."""

    def __init__(self, answers: dict[str, tuple[int, object]]) -> None:
        self.answers, self.asked = answers, []

    def get(self, url: str, path: str, deadline: Deadline) -> tuple[int, bytes]:
        self.asked.append(path)
        status, doc = self.answers.get(path, (404, {"error": "not found"}))
        return status, orjson.dumps(doc)

    @staticmethod
    def judge(status: int, raw: bytes, url: str) -> dict:
        assert status == 200, status
        return orjson.loads(raw)


def route(script: Script, want: Wanted, v1: object = V1, calls: list | None = None):
    windows = np.zeros((2, 4, 3), np.float32)

    def make() -> np.ndarray:
        if calls is not None:
            calls.append(1)
        return windows

    router = Router(script.get, script.judge)
    return router, router.route(want, v1, make)


WANT = Wanted("mlsignal", H, accept_mismatch=False)


def test_an_mlsignal_server_gets_the_bars_and_is_remembered():
    script = Script({"/v1/models": (200, {"contract_hash": H})})
    router, r = route(script, WANT)
    assert router.protocols((URL,)) == {URL: "unknown"}
    assert r(URL, Deadline(1.0)) is V1 and r(URL, Deadline(1.0)) is V1
    assert script.asked == ["/v2", "/v1/models"]  # no V2 server metadata: a v1-only server
    assert router.protocols((URL,)) == {URL: "mlsignal"}
    router.forget(URL)
    assert router.protocols((URL,)) == {URL: "unknown"}


@pytest.mark.parametrize(
    ("server", "asked", "protocol"),
    [
        ({"extensions": ["binary_tensor_data"]}, ["/v2", "/v2/models/mlsignal"], "v2-binary"),
        ({"extensions": []}, ["/v2", "/v2/models/mlsignal"], "v2"),
        (None, ["/v2", "/v1/models", "/v2/models/mlsignal"], "v2"),
    ],
    ids=["binary", "json", "no-server-metadata"],
)
def test_a_v2_server_gets_the_windows_encoded_once_at_its_pinned_version(server, asked, protocol):
    answers = {"/v2/models/mlsignal": (200, metadata([H]))}
    if server is not None:
        answers["/v2"] = (200, server)
    script = Script(answers)
    calls: list = []
    bars: list = []
    router, r = route(script, WANT, v1=lambda: bars.append(1) or V1, calls=calls)
    first, second = r(URL, Deadline(1.0)), r(URL, Deadline(1.0))
    assert first == second and len(calls) == 1 and not bars  # the bars' body is never made
    assert first.path == f"/v2/models/mlsignal/versions/{H}/infer" and first.n == 2
    assert first.target is not None and first.target.matched == "contract_hash"
    assert first.infer is not None and first.infer.binary is (protocol == "v2-binary")
    assert first.body is None  # each attempt makes its body (its own timeout)
    assert script.asked == asked
    assert router.protocols((URL,)) == {URL: protocol}


def test_fail_over_from_a_binary_to_a_json_server_computes_the_windows_once():
    binary = Script({"/v2": (200, {"extensions": ["binary_tensor_data"]}),
                     "/v2/models/mlsignal": (200, metadata([H]))})  # fmt: skip
    plain = Script({"/v2": (200, {"extensions": []}), "/v2/models/mlsignal": (200, metadata([H]))})
    calls: list = []
    router = Router(lambda u, p, d: (binary if u == URL else plain).get(u, p, d), Script.judge)
    r = router.route(WANT, None, lambda: calls.append(1) or np.zeros((2, 4, 3), np.float32))
    a, b = r(URL, Deadline(1.0)), r("http://other:8000", Deadline(1.0))
    assert a.infer is not None and a.infer.binary and b.infer is not None and not b.infer.binary
    assert len(calls) == 1
    assert router.protocols((URL, "http://other:8000")) == {
        URL: "v2-binary",
        "http://other:8000": "v2",
    }


def test_a_triton_version_is_checked_against_the_full_hash_in_the_config():
    config = {"parameters": {f"contract_hash_{TV}": {"string_value": H}}}
    script = Script(
        {"/v2/models/mlsignal": (200, metadata([TV])), "/v2/models/mlsignal/config": (200, config)}
    )
    _, r = route(script, WANT, v1=None)
    send = r(URL, Deadline(1.0))
    assert send.target is not None and send.target.matched == "triton_config"
    assert send.path == f"/v2/models/mlsignal/versions/{TV}/infer"

    config = {"parameters": {f"contract_hash_{TV}": {"string_value": OTHER}}}
    script.answers["/v2/models/mlsignal/config"] = (200, config)
    _, r = route(script, WANT, v1=None)
    with pytest.raises(VersionMismatchError, match="model version mismatch"):
        r(URL, Deadline(1.0))
    _, r = route(script, Wanted("mlsignal", H, accept_mismatch=True), v1=None)
    send = r(URL, Deadline(1.0))
    assert send.target is not None and send.target.matched == "accepted"
    assert send.path == "/v2/models/mlsignal/infer"


def test_v2_without_the_model_or_without_windows_is_a_remote_error():
    _, r = route(Script({}), WANT, v1=None)
    with pytest.raises(RemoteError, match="has no model 'mlsignal': 404"):
        r(URL, Deadline(1.0))
    script = Script({"/v2/models/mlsignal": (200, metadata([H]))})
    router = Router(script.get, script.judge)
    with pytest.raises(RemoteError, match="speaks only V2; this call has no windows"):
        router.route(WANT, V1, None)(URL, Deadline(1.0))
