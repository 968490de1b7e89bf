"""A real server refuses a malformed bundle on reload and hostile inputs with a 4xx naming
the problem, never a 500; the client's local fallback raises the same DataError.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from bundle_helpers import DAMAGES
from mlsignal import wire
from mlsignal.config import Settings
from mlsignal.enhancer import MLSignalEnhancer
from mlsignal.errors import DataError, TimestampError

pytestmark = pytest.mark.slow

DAY_MS = 86_400_000


@pytest.fixture(scope="module")
def srv(tiny_bundle: Path, tmp_path_factory, server_class) -> Iterator:
    """One server (no keys, CPU) for every test here."""
    server = server_class(tiny_bundle, "--device", "cpu", log_dir=tmp_path_factory.mktemp("logs"))
    server.start()
    yield server
    assert server.stop() == 0
    server.close()


@pytest.fixture(scope="module")
def http(srv) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.url, timeout=60.0) as client:
        yield client


@pytest.fixture
def bars(sp500_bars):
    return sp500_bars.iloc[-300:].copy()


def enhance_doc(bars, t_ms: list[int] | None = None) -> dict:
    doc = wire.encode_bars(bars)
    if t_ms is not None:
        doc["t"] = t_ms
    return {"symbols": [{"symbol": "SPX", "ss": 30.0, "bs": 60.0, "bars": doc}]}


def error_of(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert "\n" not in error
    return error


# --- reload -----------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_reload_to_a_malformed_bundle_is_422_and_keeps_the_model(
    http, tiny_bundle, tmp_path, damage
):
    before = http.get("/v1/models").json()
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    DAMAGES[damage](bundle)
    r = http.post("/v1/admin/reload", json={"bundle": str(bundle)})
    error = error_of(r, 422)
    assert error.startswith("reload failed, old model kept: ") and str(bundle) in error
    after = http.get("/v1/models").json()
    assert (after["contract_hash"], after["loaded_at"]) == (
        before["contract_hash"],
        before["loaded_at"],
    )


# --- bars ---------------------------------------------------------------------------------------
def test_overflowing_volumes_are_422_naming_the_column(http, bars):
    bars.iloc[-5:, bars.columns.get_loc("volume")] = 1e308
    error = error_of(http.post("/v1/enhance", content=wire.dumps(enhance_doc(bars))), 422)
    assert error.startswith("SPX: volume overflows")  # today: 500


@pytest.mark.parametrize("protocol", ["mlsignal", "auto"])
def test_the_client_raises_the_data_error_for_overflowing_volumes(srv, tiny_bundle, bars, protocol):
    # mlsignal: the server answers 422, the local fallback computes and raises; auto (V2):
    # the window is computed here first. Today: OverflowError from both.
    bars.iloc[-5:, bars.columns.get_loc("volume")] = 1e308
    remote = MLSignalEnhancer(
        tiny_bundle, remote_urls=[srv.url], settings=Settings(protocol=protocol)
    )
    try:
        with pytest.raises(DataError, match="volume overflows"):
            remote.enhance_signal(bars, 30.0, 60.0)
    finally:
        remote.close()


@pytest.mark.parametrize(
    ("first_ms", "row"),
    [(9_000_000_000_000_000, 0), (-299 * DAY_MS, 0), (9_214_646_400_000, 100)],
    ids=["year-287k", "before-1970", "2262-01-01-on"],  # row 100: 2262-04-11
)
def test_timestamps_outside_1970_2262_are_422_naming_the_row(http, bars, first_ms, row):
    t_ms = [first_ms + i * DAY_MS for i in range(len(bars))]
    r = http.post("/v1/enhance", content=wire.dumps(enhance_doc(bars, t_ms)))
    error = error_of(r, 422)  # today: 200, and 9e15 ms reads as 1907 in bar_ts
    assert error == (
        f"symbols[0].bars.t[{row}]: {t_ms[row]} ms is outside 1970-01-01..2262-04-10 "
        "(epoch milliseconds)"
    )


def test_local_bars_before_1970_are_refused_with_the_row(tiny_bundle, bars):
    bars.index = bars.index - (bars.index[0] - np.datetime64("1969-12-25"))
    local = MLSignalEnhancer(tiny_bundle, device="cpu")
    with pytest.raises(TimestampError, match=r"row 1\b.*1969-12-25 00:00:00.* is outside 1970-"):
        local.enhance_signal(bars, 30.0, 60.0)


# --- tensors ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def golden(tiny_bundle: Path) -> np.ndarray:
    with np.load(tiny_bundle / "golden.npz") as g:
        return g["inputs"][:2].astype(np.float32)


@pytest.mark.parametrize(("value", "shown"), [(True, "bool True"), ("0.5", "str '0.5'")])
def test_v2_json_tensors_take_numbers_only(http, golden, value, shown):
    data = golden.ravel().tolist()
    data[5] = value
    tensor = {"name": "windows", "shape": list(golden.shape), "datatype": "FP32", "data": data}
    r = http.post("/v2/models/mlsignal/infer", json={"inputs": [tensor]})
    error = error_of(r, 400)  # today: 200 for true and "0.5" (taken as 1.0 and 0.5)
    assert error == f"inputs[0].data: must hold numbers only; value 5 (row-major) is {shown}"


@pytest.mark.parametrize("value", [True, "0.5"])
def test_v1_predict_windows_take_numbers_only(http, golden, value):
    windows = golden.tolist()
    windows[1][2][3] = value
    r = http.post("/v1/predict", json={"windows": windows})
    error = error_of(r, 422)
    row_major = 1 * golden.shape[1] * golden.shape[2] + 2 * golden.shape[2] + 3
    assert error.startswith(f"windows: must hold numbers only; value {row_major} (row-major)")
