"""Server benchmarks: ``mlsignal serve`` and the LitServe baseline under the same load.

Both servers run as subprocesses on a free loopback port, one at a time (never both at
once: they would share the cores). Each gets the body the remote client sends for one
symbol's ``enhance_signal`` (bars trimmed to the bundle's ``min_bars``, rule scores resolved,
the contract-hash pin and ``deadline_ms`` added, orjson-encoded), and is measured:

- single client: one keep-alive connection, one request at a time: p50/p99 latency;
- throughput: N concurrent clients, a fixed request count (and a time limit): req/s,
  windows/s, p50/p99, errors.

``speedup_vs_litserve`` is, for one client, LitServe's p50 over ours; under load, our req/s
over LitServe's at the same client count, shown next to both p99s (the issue's target is
"1.5x at equal or better p99"). The serialisation cost of the body and the response
(encode and decode, in-process) is measured apart, to see whether JSON dominates.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from mlsignal import wire
from mlsignal.bench.loadgen import LoadResult, LoadSpec, run_load
from mlsignal.bench.procs import ServerProc, free_port
from mlsignal.bench.timing import measure
from mlsignal.bundle import Bundle
from mlsignal.errors import MLSignalError

ENHANCE_PATH = "/v1/enhance"
#: What the remote client sends as ``deadline_ms`` with its default 3 s timeout.
CLIENT_DEADLINE_MS = 3000
#: Every good enhance answer, from either server, has this key.
EXPECT = b'"results"'


@dataclass(frozen=True)
class ServerBenchConfig:
    """How much load; ``clients`` are the concurrency levels of the throughput runs."""

    single_requests: int = 500
    requests: int = 2000
    clients: tuple[int, ...] = (16, 64)
    time_limit_s: float = 60.0
    warmup: int = 10
    litserve: bool = True
    startup_timeout_s: float = 120.0


#: ``--quick``: enough requests for a p50 and a rate, few enough for 30 s on two cores.
QUICK_SERVER = ServerBenchConfig(
    single_requests=30, requests=100, clients=(16,), time_limit_s=2.5, warmup=2
)


def enhance_body(bundle: Bundle, symbol: str = "SPX") -> bytes:
    """The exact ``/v1/enhance`` body the remote client sends for one symbol's last bar."""
    from mlsignal.data import load_sample
    from mlsignal.pipeline import SignalRequest, prepare

    p = prepare(bundle, SignalRequest(symbol, load_sample("sp500")))  # as the enhancer does
    arrays = wire.BarArrays.from_ns(p.t_ns, p.ohlcv)
    doc = wire.encode_enhance([(p.symbol, arrays, p.ss, p.bs)])  # as RemoteMode.enhance
    doc.pop("deadline_ms")  # RemoteClient: takes the caller's deadline out, pins, dumps,
    doc["contract_hash"] = bundle.contract_hash  # then appends its own deadline_ms
    raw = wire.dumps(doc)
    return raw[:-1] + b',"deadline_ms":%d}' % CLIENT_DEADLINE_MS


def serialisation_cost(
    bundle: Bundle, body: bytes, response: bytes, budget_s: float
) -> dict[str, Any]:
    """Median ms of each JSON step of one enhance round trip, measured in-process."""
    from mlsignal.data import load_sample
    from mlsignal.pipeline import SignalRequest, prepare

    p = prepare(bundle, SignalRequest("SPX", load_sample("sp500")))
    arrays = wire.BarArrays.from_ns(p.t_ns, p.ohlcv)
    doc = wire.loads(response)
    steps = {
        "client_encode_request": lambda: wire.dumps(
            wire.encode_enhance([("SPX", arrays, p.ss, p.bs)])
        ),
        "server_decode_request": lambda: wire.decode_enhance(wire.loads(body), 512, 5000),
        "server_encode_response": lambda: wire.dumps(doc),
        "client_decode_response": lambda: wire.loads(response),
    }
    out: dict[str, Any] = {k: measure(f, budget_s).median_ms for k, f in steps.items()}
    out["total_ms"] = sum(out.values())
    out["request_bytes"], out["response_bytes"] = len(body), len(response)
    return out


def start_mlsignal(bundle_dir: Path, timeout_s: float) -> ServerProc:
    """``mlsignal serve`` on a free loopback port, ready (``/readyz`` 200)."""
    port = free_port()
    args = [
        sys.executable, "-m", "mlsignal.cli.main", "serve",
        "--bundle", str(bundle_dir), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    return ServerProc("mlsignal serve", args, port, "/readyz").start(timeout_s)


def litserve_settings() -> dict[str, Any]:
    """How the baseline runs: LitServe's batching matched to ours, and its fast ZeroMQ queue
    wherever pyzmq is installed (LitServe recommends it above 100 requests/s); else defaults."""
    import importlib.metadata
    import importlib.util

    from mlsignal.bench import litserve_app as app

    return {
        "version": importlib.metadata.version("litserve"),
        "max_batch_size": app.DEFAULT_MAX_BATCH,
        "batch_timeout_ms": app.DEFAULT_BATCH_TIMEOUT_MS,
        "fast_queue": importlib.util.find_spec("zmq") is not None,
        "workers_per_device": 1,
    }


def start_litserve(
    bundle_dir: Path, device: str, backend: str, settings: dict[str, Any], timeout_s: float
) -> ServerProc:
    """The LitServe baseline (:mod:`mlsignal.bench.litserve_app`), ready (``/health`` 200)."""
    port = free_port()
    args = [
        sys.executable, "-m", "mlsignal.bench.litserve_app", "--bundle", str(bundle_dir),
        "--port", str(port), "--device", device, "--backend", backend,
        "--max-batch", str(settings["max_batch_size"]),
        "--batch-timeout-ms", str(settings["batch_timeout_ms"]),
    ]  # fmt: skip
    if settings["fast_queue"]:
        args.append("--fast-queue")
    return ServerProc("litserve", args, port, "/health").start(timeout_s)


def first_answer(url: str, body: bytes) -> bytes:
    """One enhance call; its response body, or an error with the server's answer."""
    try:
        r = httpx.post(
            url + ENHANCE_PATH,
            content=body,
            headers={"content-type": wire.JSON_TYPE},
            timeout=30.0,
            trust_env=False,
        )
    except httpx.HTTPError as e:
        raise MLSignalError(f"{url}{ENHANCE_PATH}: {type(e).__name__} {e}") from None
    if r.status_code != 200 or EXPECT not in r.content:
        raise MLSignalError(f"{url}{ENHANCE_PATH} answered {r.status_code}: {r.text[:300]}")
    return r.content


def measure_server(url: str, body: bytes, cfg: ServerBenchConfig) -> dict[str, Any]:
    """Single-client latency and throughput at each client count against ``url``."""

    def load(clients: int, requests: int) -> LoadResult:
        spec = LoadSpec(
            url + ENHANCE_PATH,
            body,
            requests,
            clients=clients,
            time_limit_s=cfg.time_limit_s,
            warmup=cfg.warmup,
            expect=EXPECT,
        )
        return run_load(spec)

    single = load(1, cfg.single_requests).to_dict()
    return {"single": single, "load": [load(n, cfg.requests).to_dict() for n in cfg.clients]}


def _serve_and_measure(
    proc: ServerProc, body: bytes, cfg: ServerBenchConfig
) -> tuple[dict[str, Any], bytes]:
    """Measure a started server, then stop it; the results and its first answer."""
    with proc:
        answer = first_answer(proc.url, body)
        result = measure_server(proc.url, body, cfg)
        result["startup_s"] = proc.startup_s
    return result, answer


def _served_model(url: str) -> dict[str, Any]:
    """``/v1/models`` of ``mlsignal serve``: the device and backend it picked."""
    try:
        return httpx.get(url + "/v1/models", trust_env=False, timeout=10.0).json()
    except (httpx.HTTPError, ValueError) as e:
        raise MLSignalError(f"{url}/v1/models: {e}") from None


def _same_results(a: bytes, b: bytes) -> bool:
    """Both servers gave the same enhanced scores and bull_prob (the work was the same)."""
    ra, rb = wire.loads(a)["results"], wire.loads(b)["results"]
    keys = ("enhanced_ss", "enhanced_bs")
    return len(ra) == len(rb) and all(
        all(abs(x[k] - y[k]) <= 1e-6 for k in keys)
        and abs(x["ml_info"]["bull_prob"] - y["ml_info"]["bull_prob"]) <= 1e-6
        for x, y in zip(ra, rb, strict=True)
    )


def run_server_bench(
    bundle_dir: Path, bundle: Bundle, cfg: ServerBenchConfig, skipped: list[str]
) -> dict[str, Any]:
    """Every server measurement, in one JSON-able dict; what could not run goes to ``skipped``."""
    body = enhance_body(bundle)
    proc = start_mlsignal(bundle_dir, cfg.startup_timeout_s)
    try:
        model = _served_model(proc.url)
    except BaseException:
        proc.cleanup()
        raise
    ours, answer = _serve_and_measure(proc, body, cfg)
    out: dict[str, Any] = {
        "endpoint": ENHANCE_PATH,
        "symbols_per_request": 1,
        "device": model.get("device"),
        "backend": model.get("backend"),
        "mlsignal": ours,
    }
    if cfg.litserve:
        try:
            settings = litserve_settings()
            lit = start_litserve(
                bundle_dir, out["device"], out["backend"], settings, cfg.startup_timeout_s
            )
            theirs, lit_answer = _serve_and_measure(lit, body, cfg)
        except (MLSignalError, OSError, ImportError) as e:
            skipped.append(f"litserve: {str(e).splitlines()[0]}")
        else:
            out["litserve"] = theirs | {"settings": settings}
            out["same_results_as_litserve"] = _same_results(answer, lit_answer)
    out["serialisation"] = serialisation_cost(bundle, body, answer, 0.2)
    add_server_ratios(out)
    return out


def add_server_ratios(out: dict[str, Any]) -> None:
    """``speedup_vs_litserve`` next to the latencies and rates it comes from."""
    ours, theirs = out["mlsignal"], out.get("litserve")
    s = ours["single"]
    single = {"mlsignal_p50_ms": s["p50_ms"], "mlsignal_p99_ms": s["p99_ms"]}
    if theirs is not None:
        t = theirs["single"]
        single |= {
            "litserve_p50_ms": t["p50_ms"],
            "litserve_p99_ms": t["p99_ms"],
            "speedup_vs_litserve": _ratio(t["p50_ms"], s["p50_ms"]),
        }
    out["single_client"] = single
    rows = []
    lit_load = {r["clients"]: r for r in theirs["load"]} if theirs else {}
    for r in ours["load"]:
        row = {"clients": r["clients"], "mlsignal_req_per_s": r["req_per_s"],
               "mlsignal_p99_ms": r["p99_ms"], "mlsignal_errors": r["errors"]}  # fmt: skip
        t = lit_load.get(r["clients"])
        if t is not None:
            row |= {
                "litserve_req_per_s": t["req_per_s"],
                "litserve_p99_ms": t["p99_ms"],
                "litserve_errors": t["errors"],
                "speedup_vs_litserve": _ratio(r["req_per_s"], t["req_per_s"]),
                "p99_equal_or_better": None
                if r["p99_ms"] is None or t["p99_ms"] is None
                else r["p99_ms"] <= t["p99_ms"],
            }
        rows.append(row)
    out["throughput"] = rows
    ser, p50 = out["serialisation"], s["p50_ms"]
    ser["share_of_single_client_p50"] = _ratio(ser["total_ms"], p50)


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if not num or not den else num / den


def format_server(out: dict[str, Any]) -> str:
    """The server section of the table output."""
    lines = [
        f"server: POST {out['endpoint']}, 1 symbol per request, "
        f"device={out['device']} backend={out['backend']}",
        f"{'server':<10}{'clients':>8}{'reqs':>7}{'errors':>7}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'mean ms':>9}{'req/s':>9}{'win/s':>9}",
    ]
    for name in ("mlsignal", "litserve"):
        if name not in out:
            continue
        for r in (out[name]["single"], *out[name]["load"]):
            lines.append(
                f"{name:<10}{r['clients']:>8}{r['requests']:>7}{r['errors']:>7}"
                f"{_f(r['p50_ms']):>9}{_f(r['p99_ms']):>9}{_f(r['mean_ms']):>9}"
                f"{r['req_per_s']:>9.1f}{r['windows_per_s']:>9.1f}"
            )
    sc = out["single_client"]
    if "speedup_vs_litserve" in sc:
        lines.append(f"single client: speedup_vs_litserve {_x(sc['speedup_vs_litserve'])} (p50)")
    for t in out["throughput"]:
        if "speedup_vs_litserve" in t:
            better = "<=" if t["p99_equal_or_better"] else ">"
            lines.append(
                f"{t['clients']} clients: speedup_vs_litserve {_x(t['speedup_vs_litserve'])} "
                f"(req/s), p99 {_f(t['mlsignal_p99_ms'])} {better} {_f(t['litserve_p99_ms'])} ms"
            )
    ser = out["serialisation"]
    lines.append(
        f"serialisation: {ser['total_ms']:.3f} ms per round trip "
        f"({ser['request_bytes']} B request, {ser['response_bytes']} B response; "
        f"{_x(ser['share_of_single_client_p50'], '.1%')} of single-client p50)"
    )
    return "\n".join(lines)


def fmt_ms(v: float | None) -> str:
    """A number with 2 decimals, ``-`` for none (the tables' cells)."""
    return "-" if v is None else f"{v:.2f}"


_f = fmt_ms


def _x(v: float | None, fmt: str = ".2f") -> str:
    if v is None:
        return "-"
    return f"{v:{fmt}}" if fmt.endswith("%") else f"{v:{fmt}}x"
