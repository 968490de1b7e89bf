"""The serving paths of issue 12, each under the load it is meant for, against one
``mlsignal serve --workers W`` (and the GPU alone, for what bounds it).

- ``single_window``: one client, one window per request, V2 binary: the latency floor.
- ``single_symbol_bars``: one client, one symbol's bars to ``/v1/enhance``.
- ``windows``: V2 binary, ``windows_per_request`` windows per request, ``clients``
  connections: windows/s, p99, GPU busy %, server CPU.
- ``one_window``: one window per request over ``connections`` connections: req/s, p99.
- ``bars``: ``/v1/enhance`` with ``bars_symbols`` symbols of ``min_bars`` bars each.
- ``burst``: ``burst_hosts`` hosts send ``burst_symbols`` windows each at the same instant
  (:mod:`mlsignal.bench.burst`): time to the last answer.

Each run reports the server's CPU (cores kept busy: CPU seconds of the server's processes
over the run's wall time), the load generator's, and the GPU's busy share where
``nvidia-smi`` is there, so a reader sees what bounds each path.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlsignal import wire
from mlsignal.bench.burst import BurstSpec, run_burst
from mlsignal.bench.loadgen import LoadSpec, run_load
from mlsignal.bench.procs import ServerProc, free_port
from mlsignal.bench.server_bench import fmt_ms as _f
from mlsignal.bench.usage import GpuBusy, cpu_seconds
from mlsignal.bundle import GOLDEN_FILE, Bundle
from mlsignal.errors import MLSignalError
from mlsignal.signature import MODEL_NAME
from mlsignal.wire import v2 as wire_v2

INFER_PATH = f"/v2/models/{MODEL_NAME}/infer"


@dataclass(frozen=True)
class PathsConfig:
    """The loads of each path (defaults: the issue's targets) and the server's processes."""

    workers: int = 1
    windows_per_request: int = 64
    clients: int = 16
    connections: int = 256
    bars_symbols: int = 64
    burst_hosts: int = 16
    burst_symbols: int = 125
    bursts: int = 20
    single_requests: int = 500
    requests: int = 20000
    time_limit_s: float = 20.0
    load_processes: int = 1
    startup_timeout_s: float = 300.0
    extra_args: tuple[str, ...] = ()


#: ``--quick``: a few seconds per path on two cores.
QUICK_PATHS = PathsConfig(
    clients=4, connections=16, bars_symbols=16, burst_hosts=4, burst_symbols=32, bursts=5,
    single_requests=30, requests=200, time_limit_s=2.0,
)  # fmt: skip


def windows_from(bundle: Bundle, n: int) -> np.ndarray:
    """``n`` real model windows (the bundle's golden inputs, repeated): float32 ``(n, T, F)``."""
    with np.load(bundle.file(GOLDEN_FILE)) as golden:
        base = golden["inputs"].astype(np.float32)
    reps = -(-n // len(base))
    return np.ascontiguousarray(np.concatenate([base] * reps)[:n])


def infer_load(bundle: Bundle, n: int) -> tuple[bytes, tuple[tuple[str, str], ...], str]:
    """A V2 binary infer body of ``n`` windows: (body, extra headers, content type)."""
    body, headers = wire_v2.encode_request(windows_from(bundle, n)).body()
    ctype = headers.pop("content-type")
    return body, tuple(headers.items()), ctype


def burst_spec(
    url: str, bundle: Bundle, symbols: int, hosts: int, bursts: int, processes: int
) -> BurstSpec:
    """The bar-close burst against server ``url``: ``hosts`` hosts each send ``symbols``
    windows (V2 binary) at the same instant, ``bursts`` times, from at most ``processes``
    load processes."""
    body, headers, ctype = infer_load(bundle, symbols)
    return BurstSpec(
        url + INFER_PATH, body, hosts=hosts, bursts=bursts, windows_per_request=symbols,
        headers=headers, content_type=ctype, processes=min(processes, hosts),
    )  # fmt: skip


def bars_body(bundle: Bundle, symbols: int) -> bytes:
    """``/v1/enhance`` with ``symbols`` symbols of ``min_bars`` real bars each (ss/bs given,
    as the remote client sends them)."""
    from mlsignal.data import load_sample
    from mlsignal.pipeline import SignalRequest, prepare

    bars = load_sample("sp500")
    need = bundle.min_bars
    items = []
    for i in range(symbols):
        end = len(bars) - (i % 500)
        p = prepare(bundle, SignalRequest(f"S{i:04d}", bars.iloc[end - need : end], 40.0, 60.0))
        items.append((p.symbol, wire.BarArrays.from_ns(p.t_ns, p.ohlcv), p.ss, p.bs))
    return wire.dumps(wire.encode_enhance(items, contract_hash=bundle.contract_hash))


def start_server(bundle_dir: Path, cfg: PathsConfig) -> ServerProc:
    """``mlsignal serve --workers W`` on a free loopback port, every worker ready (a worker
    still loading would share the cores and the GPU with the first measurements)."""
    port = free_port()
    args = [
        sys.executable, "-m", "mlsignal.cli.main", "serve", "--bundle", str(bundle_dir),
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(cfg.workers),
        *cfg.extra_args,
    ]  # fmt: skip
    proc = ServerProc("mlsignal serve", args, port, "/readyz").start(cfg.startup_timeout_s)
    try:
        wait_workers(proc.url, cfg.workers, cfg.startup_timeout_s)
    except BaseException:
        proc.cleanup()
        raise
    proc.startup_s = time.perf_counter() - proc.started_at
    return proc


def wait_workers(url: str, workers: int, timeout_s: float) -> None:
    """Until ``workers`` distinct worker pids have answered ``/v1/models`` (new connections
    each time: the kernel hands each to a worker waiting in accept)."""
    import httpx

    seen: set[int] = set()
    end = time.monotonic() + timeout_s
    while len(seen) < workers:
        if time.monotonic() > end:
            raise MLSignalError(f"{len(seen)} of {workers} workers answered in {timeout_s:.0f} s")
        with httpx.Client(trust_env=False, timeout=10.0) as http:
            seen.add(http.get(url + "/v1/models").json()["pid"])
        if len(seen) < workers:
            time.sleep(0.05)


def _usage(server_pid: int, run: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """``run()`` with the server's CPU cores, the load's and the GPU's busy share."""
    import resource

    server0, t0 = cpu_seconds(server_pid), time.perf_counter()
    who = (resource.RUSAGE_CHILDREN, resource.RUSAGE_SELF)  # load processes end with the run
    load0 = [resource.getrusage(w) for w in who]
    with GpuBusy() as gpu:
        result = run()
    wall = time.perf_counter() - t0
    load1 = [resource.getrusage(w) for w in who]
    load_s = sum(
        b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime for a, b in zip(load0, load1, strict=True)
    )
    usage = {
        "server_cores": (cpu_seconds(server_pid) - server0) / wall,
        "load_cores": load_s / wall,
        "gpu_busy_pct": gpu.percent,
        "wall_s": wall,
    }
    return result, usage


def measure_paths(bundle_dir: Path, bundle: Bundle, cfg: PathsConfig) -> dict[str, Any]:
    """Every path against one server; a JSON-able dict."""
    out: dict[str, Any] = {"config": asdict(cfg)}
    with start_server(bundle_dir, cfg) as proc:
        out["startup_s"] = proc.startup_s
        pid = proc.proc.pid  # type: ignore[union-attr]

        def load(path: str, body: bytes, n: int, clients: int, requests: int, ctype: str,
                 headers: tuple = ()) -> dict[str, Any]:  # fmt: skip
            spec = LoadSpec(
                proc.url + path, body, requests, clients=clients, windows_per_request=n,
                time_limit_s=cfg.time_limit_s, warmup=3, content_type=ctype, headers=headers,
                processes=min(cfg.load_processes, clients),
            )  # fmt: skip
            result, usage = _usage(pid, lambda: run_load(spec))
            return {**result.to_dict(), **usage, "windows_per_request": n}

        one_body, one_headers, binary = infer_load(bundle, 1)
        out["single_window"] = load(INFER_PATH, one_body, 1, 1, cfg.single_requests, binary,
                                    one_headers)  # fmt: skip
        out["single_symbol_bars"] = load(
            "/v1/enhance", bars_body(bundle, 1), 1, 1, cfg.single_requests, wire.JSON_TYPE
        )
        n = cfg.windows_per_request
        many_body, many_headers, _ = infer_load(bundle, n)
        out["windows"] = load(INFER_PATH, many_body, n, cfg.clients, cfg.requests, binary,
                              many_headers)  # fmt: skip
        out["one_window"] = load(INFER_PATH, one_body, 1, cfg.connections, cfg.requests, binary,
                                 one_headers)  # fmt: skip
        out["bars"] = load("/v1/enhance", bars_body(bundle, cfg.bars_symbols), cfg.bars_symbols,
                           cfg.clients, max(1, cfg.requests // 10), wire.JSON_TYPE)  # fmt: skip
        spec = burst_spec(proc.url, bundle, cfg.burst_symbols, cfg.burst_hosts, cfg.bursts,
                          cfg.load_processes)  # fmt: skip
        result, usage = _usage(pid, lambda: run_burst(spec))
        out["burst"] = {**result.to_dict(), **usage}
    return out


def format_paths(out: dict[str, Any]) -> str:
    """The paths section of the table output."""
    cfg = out["config"]
    lines = [
        f"serving paths: mlsignal serve --workers {cfg['workers']} (startup "
        f"{out['startup_s']:.1f} s)",
        f"{'path':<20}{'clients':>8}{'win/req':>8}{'ok':>8}{'err':>6}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'req/s':>10}{'win/s':>11}{'srv cores':>10}{'load cores':>11}{'gpu %':>7}",
    ]
    for name in ("single_window", "single_symbol_bars", "windows", "one_window", "bars"):
        r = out[name]
        lines.append(
            f"{name:<20}{r['clients']:>8}{r['windows_per_request']:>8}{r['ok']:>8}"
            f"{r['errors']:>6}{_f(r['p50_ms']):>9}{_f(r['p99_ms']):>9}{r['req_per_s']:>10.0f}"
            f"{r['windows_per_s']:>11.0f}{r['server_cores']:>10.2f}{r['load_cores']:>11.2f}"
            f"{_f(r['gpu_busy_pct']):>7}"
        )
    b = out["burst"]
    lines.append(
        f"burst {b['hosts']} hosts x {b['windows_per_burst'] // max(b['hosts'], 1)} symbols, "
        f"{b['bursts']} bursts: last answer p50 {_f(b['last_answer_p50_ms'])} ms, p99 "
        f"{_f(b['last_answer_p99_ms'])} ms, max {_f(b['last_answer_max_ms'])} ms; request p50 "
        f"{_f(b['request_p50_ms'])} ms; {b['windows_per_s']:.0f} windows/s; errors "
        f"{b['errors']}; server cores {b['server_cores']:.2f}; gpu {_f(b['gpu_busy_pct'])} %"
    )
    return "\n".join(lines)
