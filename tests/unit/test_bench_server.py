"""Smoke tests of the server benchmarks: the load generator against real servers, the
loopback guard, and `mlsignal bench` with the server, LitServe and --plot. No timings are
asserted: numbers belong in `mlsignal bench`, not in tests."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from mlsignal.bench.loadgen import LoadSpec, check_loopback, run_load
from mlsignal.bench.procs import free_port
from mlsignal.bench.server_bench import EXPECT, enhance_body
from mlsignal.bundle import load_bundle
from mlsignal.cli.main import main
from mlsignal.errors import ConfigError


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1:8000/v1/enhance",
        "http://example.com/v1/enhance",
        "http://0.0.0.0:8000/",
        "https://127.0.0.1:8000/",
    ],
)
def test_loadgen_refuses_non_loopback(url):
    with pytest.raises(ConfigError):
        run_load(LoadSpec(url, b"{}", requests=1))


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://127.0.0.1:9/x", "127.0.0.1"),
        ("http://localhost:9/", "127.0.0.1"),
        ("http://[::1]:9/", "::1"),
    ],
)
def test_loadgen_accepts_loopback(url, host):
    assert check_loopback(url)[:2] == (host, 9)


def test_loadgen_counts_a_refused_connection_as_errors():
    r = run_load(LoadSpec(f"http://127.0.0.1:{free_port()}/", None, requests=3, clients=2))
    assert r.ok == 0 and r.errors == 3 and r.p50_ms is None
    assert set(r.error_kinds) <= {"ConnectionRefusedError", "OSError"}


def _flaky_server(fail_every: int) -> tuple[str, threading.Event]:
    """A loopback HTTP/1.1 server answering 503 to every ``fail_every``-th request, 200 else."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop, count, lock = threading.Event(), [0], threading.Lock()

    def serve(conn: socket.socket) -> None:
        with conn:
            buf = b""
            while not stop.is_set():
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                with lock:
                    count[0] += 1
                    status = b"503 Service Unavailable" if count[0] % fail_every == 0 else b"200 OK"
                conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\nok")

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()
        listener.close()

    threading.Thread(target=accept, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/x", stop


def test_loadgen_retries_transient_failures_once_like_the_client():
    url, stop = _flaky_server(fail_every=3)
    try:
        plain = run_load(LoadSpec(url, b"{}", requests=30, clients=2))
        assert plain.error_kinds == {"http_503": 10} and plain.retried == 0
        t0 = time.time()
        r = run_load(LoadSpec(url, b"{}", requests=30, clients=1, retries=1, timeline=True))
        # one client: a retry is the next request the server sees, never a 503 itself
        assert (r.ok, r.errors) == (30, 0) and r.retried == r.retried_kinds["http_503"] == 14
        assert len(r.done_at) == 30 and sum(r.per_second(t0, 60)) == 30
        assert [k for _, k in r.events] == ["retry:http_503"] * r.retried
        assert "done_at" not in r.to_dict() and r.to_dict()["retried"] == r.retried
    finally:
        stop.set()


def test_loadgen_against_a_real_server(tiny_bundle, server_factory):
    """The enhance body the remote client sends: every request answered, none an error."""
    server = server_factory(tiny_bundle).start()
    body = enhance_body(load_bundle(tiny_bundle))
    url = server.url + "/v1/enhance"
    r = run_load(LoadSpec(url, body, requests=12, clients=3, warmup=1, expect=EXPECT))
    assert (r.ok, r.errors, r.not_sent) == (12, 0, 0), r.error_kinds
    assert 0 < r.p50_ms <= r.p99_ms <= r.max_ms and r.req_per_s > 0
    # a wrong path is counted by status, not raised; httpx speaks to the same server
    bad = run_load(LoadSpec(server.url + "/nope", body, requests=4, clients=2))
    assert bad.error_kinds == {"http_404": 4}
    via_httpx = run_load(LoadSpec(url, body, requests=3, client="httpx", expect=EXPECT))
    assert via_httpx.ok == 3 and via_httpx.errors == 0


def test_bench_cli_server_litserve_and_plot(tiny_bundle, tmp_path, capsys):
    """`mlsignal bench` end to end: forward rows with both baselines, the server and
    LitServe under load without errors, the same answers from both, and a PNG."""
    png = tmp_path / "bench.png"
    argv = ["bench", "--bundle", str(tiny_bundle), "--quick", "--batches", "1",
            "--requests", "8", "--clients", "2", "--plot", str(png), "--json",
            "--no-paths"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    forward = {r["backend"]: r for r in doc["rows"] if r["what"] == "forward"}
    assert forward["onnx-default"]["speedup_vs_onnx_default"] == 1.0
    assert forward["torch"]["speedup_vs_onnx_default"] is not None
    server = doc["server"]
    assert "litserve" in server, doc["skipped"]
    for name in ("mlsignal", "litserve"):
        runs = [server[name]["single"], *server[name]["load"]]
        assert all(r["errors"] == 0 and r["ok"] > 0 for r in runs), runs
    assert server["same_results_as_litserve"] is True
    assert server["single_client"]["speedup_vs_litserve"] > 0
    (load,) = server["throughput"]
    assert load["clients"] == 2 and load["speedup_vs_litserve"] > 0
    assert server["serialisation"]["total_ms"] > 0


def test_plot_marks_where_the_gpu_starts_to_pay():
    from mlsignal.bench.plot import gpu_crossover

    cpu = [(1, 1.0, 0.0), (16, 5.0, 0.0), (256, 80.0, 0.0)]
    gpu = [(1, 2.0, 0.0), (16, 6.0, 0.0), (256, 9.0, 0.0)]
    assert gpu_crossover({("onnx", "cpu"): cpu, ("torch", "cuda:0"): gpu}) == 256
    assert gpu_crossover({("onnx", "cpu"): cpu}) is None


def test_bench_serving_paths_run_and_say_where_the_cores_go(tiny_bundle, capsys):
    """The serving paths of `mlsignal bench` on this machine's CPU model: every path answers
    without errors, with server and load CPU accounted (no timings asserted)."""
    argv = ["bench", "--bundle", str(tiny_bundle), "--quick", "--batches", "1", "--no-server",
            "--time-limit", "1", "--json"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    serving = doc["serving"]
    assert serving is not None, doc["skipped"]
    for name in ("single_window", "single_symbol_bars", "windows", "one_window", "bars"):
        run = serving[name]
        assert run["ok"] > 0 and run["errors"] == 0, (name, run)
        assert run["server_cores"] > 0 and run["load_cores"] > 0, (name, run)
    burst = serving["burst"]
    assert burst["errors"] == 0 and burst["ok"] == burst["hosts"] * burst["bursts"]
    assert burst["last_answer_p50_ms"] >= burst["request_p50_ms"] > 0
