"""The remote path end to end: MLSignalEnhancer -> real `mlsignal serve` processes on loopback.

Every test asserts that every call returned a result, and what ml_info says about it.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bundle_helpers import other_model
from mlsignal.bundle import load_bundle
from mlsignal.client import BreakerConfig, RemoteClient
from mlsignal.config import Settings
from mlsignal.enhancer import MLSignalEnhancer, SignalRequest
from mlsignal.errors import RemoteError
from server_process import free_port

pytestmark = pytest.mark.slow


def _remote(bundle: Path, *urls: str, protocol: str = "auto", **kw) -> MLSignalEnhancer:
    kw.setdefault("timeout_s", 2.0)
    settings = Settings(protocol=protocol)
    return MLSignalEnhancer(bundle, remote_urls=list(urls), settings=settings, **kw)


@pytest.mark.parametrize(
    ("protocol", "spoken"),
    [("auto", "v2-binary"), ("mlsignal", "mlsignal")],
    ids=["default-binary-v2", "bars-to-v1"],
)
def test_remote_equals_local_bit_for_bit(
    tiny_bundle, server_factory, local, bars_stream, protocol, spoken
):
    """The default (``auto``): the host computes the windows and sends them in binary to
    `mlsignal serve`'s V2 route; ``mlsignal``: the bars go to /v1/enhance. Same numbers."""
    server = server_factory(tiny_bundle, "--device", "cpu").start()
    remote = _remote(tiny_bundle, server.url, protocol=protocol)
    for bars in bars_stream[:10]:
        r = remote.enhance_signal(bars, 35.0, 55.0)
        m = local.enhance_signal(bars, 35.0, 55.0)
        assert r[:2] == m[:2]
        for key in ("bull_prob", "p_lstm", "p_tft", "regime_vol", "regime", "kelly", "bar_ts"):
            assert r[2][key] == m[2][key], key
        assert r[2]["source"] == "remote" and r[2]["endpoint"] == server.url
        assert r[2]["attempts"] == 1 and r[2]["fallback_reason"] is None
        assert r[2]["model_version"] == m[2]["model_version"]
        assert r[2]["protocol"] == spoken
    assert remote.remote.client.endpoint_protocols() == {
        server.url: "unknown" if protocol == "mlsignal" else spoken  # mlsignal asks nothing
    }
    batch = remote.enhance_batch(
        [
            SignalRequest("A", bars_stream[0], None, None),
            SignalRequest("B", bars_stream[-1], 10, 90),
        ]
    )
    assert [b.symbol for b in batch] == ["A", "B"]
    assert batch[1].ml_info["bull_prob"] == local.enhance_signal(bars_stream[-1])[2]["bull_prob"]
    remote.close()


def test_enhance_bar_in_remote_mode_equals_local(tiny_bundle, server_factory, local, sp500_bars):
    server = server_factory(tiny_bundle, "--device", "cpu").start()
    remote = _remote(tiny_bundle, server.url)
    n = remote.min_bars
    remote.seed("SPX", sp500_bars.iloc[:n])
    for t in range(n, n + 5):
        row = sp500_bars.iloc[t]
        bar = {"timestamp": sp500_bars.index[t], **{c: float(row[c]) for c in row.index}}
        r = remote.enhance_bar("SPX", bar, 35.0, 55.0)
        m = local.enhance_signal(sp500_bars.iloc[: t + 1], 35.0, 55.0)
        assert r[:2] == m[:2]
        for key in ("bull_prob", "regime_vol", "kelly", "bar_ts"):
            assert r[2][key] == m[2][key], key
        assert r[2]["source"] == "remote"
    remote.close()


def test_killed_server_falls_back_and_the_open_circuit_costs_nothing(
    tiny_bundle, server_factory, bars_stream
):
    server = server_factory(tiny_bundle, "--device", "cpu").start()
    remote = _remote(tiny_bundle, server.url, timeout_s=1.0)
    infos = []
    for k, bars in enumerate(bars_stream[:20]):
        if k == 5:
            server.kill()
        infos.append(remote.enhance_signal(bars, 20, 20)[2])
    assert len(infos) == 20
    assert {i["source"] for i in infos[:5]} == {"remote"}
    assert {i["source"] for i in infos[5:]} == {"fallback"}
    assert all(i["fallback_reason"] for i in infos[5:])
    assert "circuit open" in infos[-1]["fallback_reason"]
    client = remote.remote.client
    t0 = time.perf_counter()
    for _ in range(200):
        with pytest.raises(RemoteError, match="circuit open"):
            client.enhance({"symbols": []})
    per_call_ms = (time.perf_counter() - t0) / 200 * 1e3
    assert per_call_ms < 0.5, per_call_ms  # an open circuit adds well under a millisecond
    remote.close()


def test_hung_server_times_out_then_a_background_probe_readmits_it(
    tiny_bundle, server_factory, bars_stream
):
    server = server_factory(tiny_bundle, "--device", "cpu").start()
    remote = _remote(tiny_bundle, server.url, timeout_s=0.5)
    server.pause()  # SIGSTOP: accepts TCP in the kernel, never answers
    t0 = time.perf_counter()
    _, _, info = remote.enhance_signal(bars_stream[0], 20, 20)
    assert time.perf_counter() - t0 < 0.5 + 1.5  # budget + local fallback + slack
    assert info["source"] == "fallback" and "timeout" in info["fallback_reason"].lower()
    server.resume()
    client = RemoteClient(
        [server.url], timeout_s=0.5, breaker=BreakerConfig(failure_threshold=1, reset_after_s=0.3)
    )
    server.pause()
    with pytest.raises(RemoteError):
        client.models()
    assert client.endpoint_states()[server.url] == "open"
    server.resume()
    end = time.monotonic() + 10  # the probe runs in the background, not on a caller's call
    while client.endpoint_states()[server.url] != "closed" and time.monotonic() < end:
        time.sleep(0.05)
    assert client.endpoint_states()[server.url] == "closed"
    assert client.models()["contract_hash"]
    client.close()
    remote.close()


def test_slower_than_the_timeout_falls_back(tiny_bundle, server_factory, bars_stream):
    server = server_factory(tiny_bundle, "--device", "cpu").start()
    remote = _remote(tiny_bundle, server.url, timeout_s=0.02)
    reqs = [SignalRequest(f"S{i}", bars_stream[i % 40], 10, 10) for i in range(120)]
    results = remote.enhance_batch(reqs)  # 120 symbols of features take the server > 20 ms
    assert len(results) == 120
    assert {r.ml_info["source"] for r in results} == {"fallback"}
    assert "timeout" in results[0].ml_info["fallback_reason"].lower()
    remote.close()


def test_wrong_api_key_falls_back_with_the_reason(
    tiny_bundle, server_factory, tmp_path, bars_stream
):
    keys = tmp_path / "keys"
    keys.write_text("right-key-123\n")
    server = server_factory(tiny_bundle, "--device", "cpu", "--api-key-file", str(keys)).start()
    wrong = _remote(tiny_bundle, server.url, api_key="wrong-key")
    _, _, info = wrong.enhance_signal(bars_stream[0], 1, 1)
    assert info["source"] == "fallback" and "401" in info["fallback_reason"]
    assert "wrong-key" not in info["fallback_reason"]
    right = _remote(tiny_bundle, server.url, api_key="right-key-123")
    assert right.enhance_signal(bars_stream[0], 1, 1)[2]["source"] == "remote"
    wrong.close()
    right.close()


def test_a_different_model_version_is_not_used_silently(
    tiny_bundle, server_factory, tmp_path, bars_stream, local
):
    other = other_model(tiny_bundle, tmp_path / "other")
    server = server_factory(other, "--device", "cpu").start()
    pinned = _remote(tiny_bundle, server.url)
    ess, ebs, info = pinned.enhance_signal(bars_stream[0], 30, 60)
    assert info["source"] == "fallback" and "mismatch" in info["fallback_reason"]
    assert (ess, ebs) == local.enhance_signal(bars_stream[0], 30, 60)[:2]
    accepting = _remote(tiny_bundle, server.url, accept_version_mismatch=True)
    _, _, info = accepting.enhance_signal(bars_stream[0], 30, 60)
    assert info["source"] == "remote" and info["protocol"] == "v2-binary"
    assert info["v2_version_check"] == "accepted"  # the unversioned infer URL was used
    h_other = load_bundle(other).contract_hash
    assert info["v2_version"] == h_other and h_other[:12] in info["version_mismatch"]
    by_v1 = _remote(tiny_bundle, server.url, protocol="mlsignal", accept_version_mismatch=True)
    _, _, info = by_v1.enhance_signal(bars_stream[0], 30, 60)
    assert info["source"] == "remote" and "version_mismatch" in info
    assert info["model_version"].startswith("other-")
    pinned.close()
    accepting.close()
    by_v1.close()


def test_overload_gets_fast_503s_and_every_call_still_returns(
    tiny_bundle, server_factory, bars_stream
):
    server = server_factory(
        tiny_bundle,
        "--device",
        "cpu",
        "--max-queue",
        "4",
        "--max-batch",
        "4",
        "--max-wait-ms",
        "20",
    ).start()
    results, errors = [], []

    def worker(i: int) -> None:
        enh = _remote(tiny_bundle, server.url, local_fallback="lazy")
        try:
            reqs = [SignalRequest(f"S{i}-{j}", bars_stream[j], 5, 5) for j in range(3)]
            for _ in range(3):
                results.extend(r.ml_info for r in enh.enhance_batch(reqs))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            enh.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 8 * 3 * 3
    sources = {r["source"] for r in results}
    assert sources <= {"remote", "fallback"} and "remote" in sources
    overloaded = [r for r in results if r["source"] == "fallback"]
    assert overloaded, "expected some 503s with a queue of 4 windows"
    assert all(
        "503" in r["fallback_reason"] or "circuit" in r["fallback_reason"] for r in overloaded
    )


def test_fail_over_between_two_servers(tiny_bundle, server_factory, bars_stream):
    a = server_factory(tiny_bundle, "--device", "cpu").start()
    b = server_factory(tiny_bundle, "--device", "cpu").start()
    remote = _remote(tiny_bundle, a.url, b.url)
    assert remote.enhance_signal(bars_stream[0], 1, 1)[2]["endpoint"] == a.url
    a.kill()
    infos = [remote.enhance_signal(bars, 1, 1)[2] for bars in bars_stream[:8]]
    assert {i["source"] for i in infos} == {"remote"}
    assert {i["endpoint"] for i in infos} == {b.url}
    assert infos[0]["attempts"] == 2  # A refused, B answered
    assert infos[-1]["attempts"] == 1  # A's circuit is open: straight to B
    remote.close()


class _StatusHandler(BaseHTTPRequestHandler):
    status = 500

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"error": "internal error"}'
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_answers_fall_back(tiny_bundle, bars_stream, status):
    """A proxy or a broken server answering 500/503 (a stdlib stub: our server only answers
    503 under overload, tested above, and 500 on an internal error it does not have)."""
    handler = type("H", (_StatusHandler,), {"status": status})
    stub = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{stub.server_address[1]}"
        remote = _remote(tiny_bundle, url, timeout_s=1.0)
        infos = [remote.enhance_signal(bars_stream[k], 1, 1)[2] for k in range(4)]
        assert {i["source"] for i in infos} == {"fallback"}
        assert str(status) in infos[0]["fallback_reason"]
        assert infos[0]["attempts"] == (2 if status == 503 else 1)  # 503 retried once, 500 not
        remote.close()
    finally:
        stub.shutdown()


def test_no_local_fallback_returns_rule_scores(tiny_bundle, bars_stream):
    port = free_port()  # nothing listens there
    remote = _remote(tiny_bundle, f"http://127.0.0.1:{port}", local_fallback="off")
    ess, ebs, info = remote.enhance_signal(bars_stream[0], 12.0, 34.0)
    assert (ess, ebs) == (12.0, 34.0)
    assert info["source"] == "rules" and "refused" in info["fallback_reason"]
    assert "local fallback is off" in info["fallback_reason"]
    remote.close()


def test_cli_enhance_remote(tiny_bundle, server_factory, capsys):
    from mlsignal.cli.main import main

    server = server_factory(tiny_bundle, "--device", "cpu").start()
    argv = ["enhance", "--bundle", str(tiny_bundle), "--data", "sp500", "--ss", "20",
            "--bs", "40", "--remote", server.url, "--json"]  # fmt: skip
    assert main(argv) == 0
    info = json.loads(capsys.readouterr().out)["ml_info"]
    assert info["source"] == "remote" and info["endpoint"] == server.url
    server.kill()
    assert main(argv) == 0
    info = json.loads(capsys.readouterr().out)["ml_info"]
    assert info["source"] == "fallback" and info["fallback_reason"]
