"""Ray Serve on the GPUs: one model replica against two (one per GPU) under the same load.

Run by ``scripts/gpu-ray-bench`` on the lent 2-GPU machine (see that script for the wheels).
Each configuration is started as a real ``mlsignal serve`` subprocess on a free loopback
port, checked with one enhance call, loaded with :mod:`mlsignal.bench.loadgen` (the same
closed-loop client as ``mlsignal bench``), then stopped, one at a time:

- ``uvicorn``: plain ``mlsignal serve --device cuda`` (no Ray), for reference;
- ``ray:R:I``: ``mlsignal serve --engine ray --replicas R --gpus-per-replica 1 --device cuda
  --ingress-replicas I``.

Two bodies, both exactly what the remote client sends (contract-hash pin, ``deadline_ms``):
one symbol of the bundle's ``min_bars`` bars per request, and ``--symbols`` symbols per
request (the same bars under different names). While each load runs, every GPU's
utilisation is sampled through NVML (when ``pynvml`` is there), to show which GPUs worked.

Usage: ``python3 scripts/gpu_ray_bench.py --bundle artifacts/quick --out results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mlsignal import wire
from mlsignal.bench.loadgen import LoadSpec, run_load
from mlsignal.bench.procs import ServerProc, free_port
from mlsignal.bench.server_bench import (
    CLIENT_DEADLINE_MS,
    ENHANCE_PATH,
    EXPECT,
    enhance_body,
    first_answer,
)
from mlsignal.bundle import Bundle, load_bundle

RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}


def many_symbols_body(bundle: Bundle, symbols: int, deadline_ms: int) -> bytes:
    """The remote client's ``/v1/enhance`` body for ``symbols`` symbols (same bars each)."""
    from mlsignal.data import load_sample
    from mlsignal.pipeline import SignalRequest, prepare

    p = prepare(bundle, SignalRequest("SPX", load_sample("sp500")))
    arrays = wire.BarArrays.from_ns(p.t_ns, p.ohlcv)
    items = [(f"SYM{i:04d}", arrays, p.ss, p.bs) for i in range(symbols)]
    doc = wire.encode_enhance(items)
    doc.pop("deadline_ms")
    doc["contract_hash"] = bundle.contract_hash
    return wire.dumps(doc)[:-1] + b',"deadline_ms":%d}' % deadline_ms


def server_args(config: str, bundle: Path, port: int, device: str = "cuda") -> list[str]:
    """The ``mlsignal serve`` command line of one configuration name."""
    base = [
        sys.executable, "-m", "mlsignal.cli.main", "serve", "--bundle", str(bundle),
        "--host", "127.0.0.1", "--port", str(port), "--device", device,
    ]  # fmt: skip
    if config == "uvicorn":
        return base
    kind, replicas, ingress = [*config.split(":"), "1", "1"][:3]
    if kind != "ray":
        raise SystemExit(f"unknown configuration {config!r}: uvicorn or ray:REPLICAS[:INGRESS]")
    per_replica = ["--cpus-per-replica", "0.5"] if device == "cpu" else ["--gpus-per-replica", "1"]
    return [
        *base, "--engine", "ray", "--replicas", replicas, *per_replica,
        "--ingress-replicas", ingress,
    ]  # fmt: skip


class GpuSampler:
    """Mean and peak utilisation (%) of every GPU while it runs, sampled every 0.1 s."""

    def __init__(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            n = pynvml.nvmlDeviceGetCount()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
            self.nvml = pynvml
        except Exception:  # no NVML: no samples, the load still runs
            self.handles, self.nvml = [], None
        self.samples: list[list[int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append(
                [self.nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self.handles]
            )

    def __enter__(self) -> GpuSampler:
        if self.handles:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.handles:
            self._thread.join()

    def summary(self) -> list[dict[str, float]]:
        """Per GPU: mean and max utilisation over the samples."""
        if not self.samples:
            return []
        cols = list(zip(*self.samples, strict=True))
        return [{"mean": sum(c) / len(c), "max": max(c)} for c in cols]


def measure(
    config: str,
    bundle_dir: Path,
    loads: list[dict[str, Any]],
    startup_timeout_s: float,
    device: str = "cuda",
) -> dict[str, Any]:
    """Start one configuration, run every load against it, stop it."""
    port = free_port()
    env = RAY_ENV if config.startswith("ray") else None
    proc = ServerProc(
        config, server_args(config, bundle_dir, port, device), port, "/readyz", env=env
    )
    out: dict[str, Any] = {"config": config, "command": " ".join(proc.args[1:]), "loads": []}
    t0 = time.perf_counter()
    try:
        proc.start(startup_timeout_s)
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"[-3000:]
        return out
    out["startup_s"] = time.perf_counter() - t0
    try:
        for load in loads:
            first_answer(proc.url, load["body"])
            spec = LoadSpec(
                proc.url + ENHANCE_PATH,
                load["body"],
                load["requests"],
                clients=load["clients"],
                time_limit_s=load["time_limit_s"],
                windows_per_request=load["symbols"],
                warmup=load["warmup"],
                expect=EXPECT,
            )
            with GpuSampler() as gpus:
                r = run_load(spec)
            row = {"symbols": load["symbols"], **r.to_dict(), "gpu_util": gpus.summary()}
            out["loads"].append(row)
            print(json.dumps({"config": config, **row}), flush=True)
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"[-3000:]
    finally:
        out["exit_code"] = proc.stop(timeout_s=90)
        out["server_log_tail"] = proc.output_tail(4000)
        proc.log_path.unlink(missing_ok=True)
    return out


def table(results: list[dict[str, Any]]) -> str:
    """A markdown table of every load of every configuration."""
    head = (
        "| server | symbols/request | clients | requests ok | errors | req/s | windows/s "
        "| p50 ms | p99 ms | GPU util mean % |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [head]
    for res in results:
        if not res["loads"]:
            rows.append(f"| {res['config']} | failed: {res.get('error', '?')[:200]} |")
        for r in res["loads"]:
            util = " / ".join(f"{g['mean']:.0f}" for g in r["gpu_util"]) or "n/a"
            rows.append(
                f"| {res['config']} | {r['symbols']} | {r['clients']} | {r['ok']} | "
                f"{r['errors']} | {r['req_per_s']:,.0f} | {r['windows_per_s']:,.0f} | "
                f"{r['p50_ms'] or 0:.1f} | {r['p99_ms'] or 0:.1f} | {util} |"
            )
    return "\n".join(rows)


def main() -> int:
    """Parse the arguments, run every configuration, write the JSON, print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=Path("artifacts/quick"))
    p.add_argument("--configs", default="uvicorn,ray:1,ray:2")
    p.add_argument("--clients", type=int, default=64, help="clients, one-symbol body")
    p.add_argument("--requests", type=int, default=6000, help="requests, one-symbol body")
    p.add_argument("--symbols", type=int, default=64, help="symbols of the many-symbol body")
    p.add_argument("--many-clients", type=int, default=32, help="clients, many-symbol body")
    p.add_argument("--many-requests", type=int, default=1500)
    p.add_argument("--time-limit-s", type=float, default=20.0)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--deadline-ms", type=int, default=CLIENT_DEADLINE_MS)
    p.add_argument("--startup-timeout-s", type=float, default=180.0)
    p.add_argument("--device", default="cuda", help="cuda; cpu only to try the script")
    p.add_argument("--out", type=Path, default=Path("gpu-ray-bench.json"))
    a = p.parse_args()

    bundle = load_bundle(a.bundle)
    loads = [
        {"symbols": 1, "body": enhance_body(bundle), "clients": a.clients,
         "requests": a.requests},
        {"symbols": a.symbols, "body": many_symbols_body(bundle, a.symbols, a.deadline_ms),
         "clients": a.many_clients, "requests": a.many_requests},
    ]  # fmt: skip
    for load in loads:
        load.update(time_limit_s=a.time_limit_s, warmup=a.warmup)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "argv": sys.argv,
        "body_bytes": {str(ld["symbols"]): len(ld["body"]) for ld in loads},
    }
    try:
        import torch

        meta["torch"] = torch.__version__
        meta["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        import ray

        meta["ray"] = ray.__version__
    except ImportError as e:
        meta["import_error"] = str(e)
    print(json.dumps(meta), flush=True)
    results = []
    for config in a.configs.split(","):
        results.append(measure(config.strip(), a.bundle, loads, a.startup_timeout_s, a.device))
        a.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    for res in results:
        if "error" in res:
            print(f"--- {res['config']}: {res['error']}\n{res.get('server_log_tail', '')}")
    print(table(results))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
