"""Ray Serve across two GPUs on the fast serving path (issue 16): one model replica against two.

Run by ``scripts/gpu-ray-bench`` on the lent 2-GPU machine (see that script for the wheels).
Each configuration is started as a real server process on a free loopback port, every
ingress process is seen answering, the loads run one after another, then it is stopped:

- ``serve:W``: plain ``mlsignal serve --workers W --device cuda`` on GPU 0 (the reference);
- ``ray:R:I:MODE``: ``mlsignal serve --engine ray --replicas R --gpus-per-replica 1 --device
  cuda --ingress-replicas I`` (a local Ray cluster), with ``MODE`` ``ha``: HAProxy in front of
  the ingress replicas' own HTTP servers (``RAY_SERVE_ENABLE_HA_PROXY=1``), or ``proxy``:
  Serve's default, one Python HTTP proxy per node in front of them;
- ``/calls=N`` and ``/batch=N`` add ``--ingress-calls N`` and ``--max-batch N``; ``MODE``
  ``hat`` is ``ha`` with ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (Serve's own throughput switches);
- a ``+kill`` suffix adds the kill test after the loads.

The loads are those of ``mlsignal bench``'s serving paths (:mod:`mlsignal.bench.paths`):

- ``windows``: V2 binary bodies of ``--windows`` real model windows per request (64), over
  each of ``--clients`` closed-loop connections (16, 64), shared by ``--load-processes``;
- ``burst``: ``--burst-hosts`` hosts send ``--burst-symbols`` windows each at the same instant
  (16 x 125 = 2,000 symbols), ``--bursts`` times: the time to the last answer.

While each load runs: every GPU's busy % (NVML, every 0.1 s), the CPU cores of the server's
processes by role (the Serve proxy or HAProxy, ingress replicas, model replicas, Ray's own
processes; plain ``serve``'s workers), the busiest single process of each role, and the
load generator's cores: the numbers that say what bounds a configuration.

The kill test: the windows load, retried once like the remote client (``retries=1``), with
every answer's time kept; ``--kill-at-s`` into it one model replica process gets SIGKILL.
Reported: answers and windows per second around the kill, retries and requests lost, when a
replacement replica process appeared and when its GPU was busy again.

Usage: ``python3 scripts/gpu_ray_bench.py --out results.json [--configs ...]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mlsignal.bench.burst import run_burst
from mlsignal.bench.loadgen import LoadSpec, run_load
from mlsignal.bench.paths import INFER_PATH, burst_spec, infer_load, wait_workers
from mlsignal.bench.procs import ServerProc, free_port
from mlsignal.bench.usage import descendants
from mlsignal.bundle import load_bundle

APP = "mlsignal"
MODEL_TITLE = f"ray::ServeReplica:{APP}:mlsignal-model"
#: Process roles, by what their command line contains (first match wins).
ROLES = (
    (MODEL_TITLE, "model"),
    (f"ray::ServeReplica:{APP}:mlsignal-ingress", "ingress"),
    ("ProxyActor", "serve_proxy"),
    ("haproxy", "haproxy"),
    ("ServeController", "controller"),
    ("mlsignal.cli.main", "serve"),  # plain serve's supervisor; Ray's driver
    ("mlsignal.cli.serve_workers", "serve"),  # plain serve's workers (ray_other before)
)
_TICK = os.sysconf("SC_CLK_TCK")
#: ``/key=value`` options of a configuration name, and the flags they become.
OPTION_FLAGS = {"calls": "--ingress-calls", "batch": "--max-batch"}


# --- processes ----------------------------------------------------------------------------
def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def role_of(cmdline: str) -> str:
    """The role of a server process, by its command line (Ray titles its actors)."""
    for needle, role in ROLES:
        if needle in cmdline:
            return role
    return "ray_other"  # raylet, GCS, dashboard agents, idle workers


def model_pids() -> list[int]:
    """Live model replica processes (their Ray title; zombies left out)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not _cmdline(int(entry.name)).startswith(MODEL_TITLE):
            continue
        with contextlib.suppress(OSError):
            if (entry / "stat").read_text().rsplit(") ", 1)[-1][:1] != "Z":
                pids.append(int(entry.name))
    return sorted(pids)


class CpuByRole:
    """CPU cores of the server's processes by role over a block, and the busiest process."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.result: dict[str, dict[str, float]] = {}

    def _snap(self) -> dict[int, tuple[str, float]]:
        snap = {}
        for pid in descendants(self.root):
            cpu = _cpu_s(pid)
            if cpu is not None:
                snap[pid] = (role_of(_cmdline(pid)), cpu)
        return snap

    def __enter__(self) -> CpuByRole:
        self._t0, self._before = time.perf_counter(), self._snap()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._t0
        after = self._snap()
        out: dict[str, dict[str, float]] = {}
        for pid, (role, cpu) in after.items():
            cores = (cpu - self._before.get(pid, (role, 0.0))[1]) / wall
            r = out.setdefault(role, {"cores": 0.0, "max_process_cores": 0.0, "processes": 0})
            r["cores"] += cores
            r["max_process_cores"] = max(r["max_process_cores"], cores)
            r["processes"] += 1
        self.result = {k: {n: round(v, 3) for n, v in r.items()} for k, r in sorted(out.items())}


class GpuSampler:
    """Every GPU's utilisation (%) every 0.1 s while it runs (NVML), with sample times."""

    def __init__(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            n = pynvml.nvmlDeviceGetCount()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
            self.nvml = pynvml
        except Exception:  # no NVML: no samples, the load still runs
            self.handles, self.nvml = [], None
        self.samples: list[tuple[float, list[int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            utils = [self.nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self.handles]
            self.samples.append((time.time(), utils))

    def __enter__(self) -> GpuSampler:
        if self.handles:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.handles:
            self._thread.join()

    def mean(self) -> list[float]:
        """Mean utilisation of each GPU over the samples."""
        if not self.samples:
            return []
        cols = list(zip(*(u for _, u in self.samples), strict=True))
        return [round(sum(c) / len(c), 1) for c in cols]

    def per_second(self, origin: float, seconds: int) -> list[list[float | None]]:
        """Mean utilisation of each GPU in each second from ``origin``."""
        sums = [[0.0] * len(self.handles) for _ in range(seconds)]
        counts = [0] * seconds
        for t, utils in self.samples:
            k = int(t - origin) if t >= origin else -1
            if 0 <= k < seconds:
                counts[k] += 1
                sums[k] = [s + u for s, u in zip(sums[k], utils, strict=True)]
        return [
            [round(s / counts[k], 1) for s in sums[k]] if counts[k] else [None] * len(self.handles)
            for k in range(seconds)
        ]

    def gpu_of(self, pid: int) -> int | None:
        """The GPU index a process runs on (NVML's compute processes), if visible."""
        for i, h in enumerate(self.handles):
            with contextlib.suppress(Exception):
                if any(p.pid == pid for p in self.nvml.nvmlDeviceGetComputeRunningProcesses(h)):
                    return i
        return None


def load_cores() -> float:
    """CPU seconds of this process and its finished children (the load processes)."""
    return sum(
        u.ru_utime + u.ru_stime
        for u in (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
    )


# --- configurations -----------------------------------------------------------------------
def server_command(
    config: str, bundle: Path, port: int, device: str = "cuda"
) -> tuple[list[str], dict[str, str]]:
    """The command line and extra environment of one configuration name."""
    base = [
        sys.executable, "-m", "mlsignal.cli.main", "serve", "--bundle", str(bundle),
        "--host", "127.0.0.1", "--port", str(port), "--device", device,
    ]  # fmt: skip
    name, *opts = config.split("/")
    kind, *rest = name.split(":")
    extra = []
    for opt in opts:
        key, _, value = opt.partition("=")
        if key not in OPTION_FLAGS or not value:
            raise SystemExit(f"unknown option {opt!r} in {config!r}: calls=N or batch=N")
        extra += [OPTION_FLAGS[key], value]
    if kind == "serve":
        workers = rest[0] if rest else "1"
        return [*base, "--workers", workers, *extra], {"CUDA_VISIBLE_DEVICES": "0"}
    if kind != "ray" or len(rest) != 3 or rest[2] not in ("ha", "hat", "proxy"):
        raise SystemExit(f"unknown configuration {config!r}: serve:W or ray:R:I:(ha|hat|proxy)")
    replicas, ingress, mode = rest
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    if mode in ("ha", "hat"):
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    if mode == "hat":
        env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    per_replica = ["--gpus-per-replica", "1"] if device == "cuda" else ["--cpus-per-replica", "0.5"]
    args = [
        *base, "--engine", "ray", "--app-name", APP, "--replicas", replicas, *per_replica,
        "--ingress-replicas", ingress, *extra,
    ]  # fmt: skip
    return args, env


def stop_all(proc: ServerProc, grace_s: float = 10.0) -> int | None:
    """SIGTERM the server, SIGKILL what is left after ``grace_s`` (Ray's processes too)."""
    pids = descendants(proc.proc.pid) if proc.proc is not None else []
    code = proc.stop(timeout_s=grace_s)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 15
    while time.monotonic() < end and any(_cpu_s(p) is not None for p in pids):
        time.sleep(0.2)  # zombies of a dead parent still read; bounded
    return code


def start(config: str, bundle: Path, a: argparse.Namespace) -> tuple[ServerProc, int]:
    """Start one configuration; wait until every ingress process has answered."""
    port = free_port()
    args, env = server_command(config.split("+")[0], bundle, port, a.device)
    proc = ServerProc(config, args, port, "/readyz", env=env)
    proc.start(a.startup_timeout_s)
    parts = config.split("+")[0].split("/")[0].split(":")
    processes = int(parts[1]) if parts[0] == "serve" else int(parts[2])
    try:
        wait_workers(proc.url, processes, a.startup_timeout_s)
    except BaseException:
        stop_all(proc)
        raise
    return proc, processes


def windows_load(url: str, body: bytes, headers: tuple, ctype: str, clients: int,
                 a: argparse.Namespace, **extra: Any) -> LoadSpec:  # fmt: skip
    return LoadSpec(
        url + INFER_PATH, body, requests=10**7, clients=clients, time_limit_s=a.time_limit_s,
        windows_per_request=a.windows, warmup=3, content_type=ctype, headers=headers,
        processes=min(a.load_processes, clients), **extra,
    )  # fmt: skip


def measured(proc: ServerProc, fn: Any) -> tuple[Any, dict[str, Any]]:
    """``fn()`` with the GPUs' busy %, the server's cores by role and the load's cores."""
    load0, t0 = load_cores(), time.perf_counter()
    with GpuSampler() as gpus, CpuByRole(proc.proc.pid) as cpu:
        result = fn()
    wall = time.perf_counter() - t0
    return result, {
        "gpu_busy_pct": gpus.mean(),
        "server_cores": round(sum(r["cores"] for r in cpu.result.values()), 3),
        "cores_by_role": cpu.result,
        "load_cores": round((load_cores() - load0) / wall, 3),
        "wall_s": round(wall, 2),
    }


def measure(config: str, bundle_dir: Path, a: argparse.Namespace) -> dict[str, Any]:
    """Start one configuration, run every load against it (and the kill test), stop it."""
    bundle = load_bundle(bundle_dir)
    body, headers, ctype = infer_load(bundle, a.windows)
    out: dict[str, Any] = {"config": config, "loads": []}
    t0 = time.perf_counter()
    try:
        proc, processes = start(config, bundle_dir, a)
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"[-3000:]
        return out
    out.update(command=" ".join(proc.args[2:]), startup_s=round(time.perf_counter() - t0, 1))
    out["ingress_processes"] = processes
    try:
        for clients in a.clients:
            spec = windows_load(proc.url, body, headers, ctype, clients, a)
            r, usage = measured(proc, lambda spec=spec: run_load(spec))
            row = {"load": "windows", "windows_per_request": a.windows, **r.to_dict(), **usage}
            out["loads"].append(row)
            print(json.dumps({"config": config, **row}), flush=True)
        spec = burst_spec(proc.url, bundle, a.burst_symbols, a.burst_hosts, a.bursts,
                          a.load_processes)  # fmt: skip
        b, usage = measured(proc, lambda: run_burst(spec))
        row = {"load": "burst", **b.to_dict(), **usage}
        out["loads"].append(row)
        print(json.dumps({"config": config, **row}), flush=True)
        if config.endswith("+kill"):
            out["kill"] = kill_test(proc, body, headers, ctype, a)
            print(json.dumps({"config": config, "kill": out["kill"]["summary"]}), flush=True)
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"[-3000:]
    finally:
        out["exit_code"] = stop_all(proc)
        out["server_log_tail"] = proc.output_tail(3000)
        proc.log_path.unlink(missing_ok=True)
    return out


def kill_test(
    proc: ServerProc, body: bytes, headers: tuple, ctype: str, a: argparse.Namespace
) -> dict[str, Any]:
    """The windows load retried once like the client; one model replica SIGKILLed in it."""
    before = model_pids()
    spec = windows_load(proc.url, body, headers, ctype, a.kill_clients, a, retries=1, timeline=True)
    spec = dataclasses.replace(spec, time_limit_s=a.kill_run_s)
    box: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: box.update(r=run_load(spec)), daemon=True)
    with GpuSampler() as gpus:
        t_start = time.time()
        runner.start()
        time.sleep(a.kill_at_s)
        victim = before[-1]
        victim_gpu = gpus.gpu_of(victim)
        t_kill = time.time()
        os.kill(victim, signal.SIGKILL)
        t_new, new_pid = None, None
        while runner.is_alive():
            if t_new is None:
                fresh = [p for p in model_pids() if p not in before]
                if fresh:
                    t_new, new_pid = time.time(), fresh[0]
            runner.join(0.1)
    r = box["r"]
    lo, hi = -int(t_kill - t_start), int(max(r.done_at, default=t_kill) - t_kill) + 1
    answers = r.per_second(t_kill + lo, hi - lo)
    gpu_s = gpus.per_second(t_kill + lo, hi - lo)
    busy_again = None
    if victim_gpu is not None:
        for k, utils in enumerate(gpu_s):
            if lo + k > 0 and t_new is not None and utils[victim_gpu] and utils[victim_gpu] >= 5:
                busy_again = lo + k
                break
    events = [(round(t - t_kill, 3), kind) for t, kind in r.events]
    summary = {
        "clients": a.kill_clients,
        "replicas_before": len(before),
        "victim_pid": victim,
        "victim_gpu": victim_gpu,
        "ok": r.ok,
        "lost": r.errors,
        "error_kinds": r.error_kinds,
        "retried": r.retried,
        "retried_kinds": r.retried_kinds,
        "new_replica_process_after_s": None if t_new is None else round(t_new - t_kill, 2),
        "new_replica_pid": new_pid,
        "victim_gpu_busy_again_in_second": busy_again,
        "replicas_after": len(model_pids()),
    }
    return {
        "summary": summary,
        "result": r.to_dict(),
        "seconds_from_kill": list(range(lo, hi)),
        "windows_per_s": [n * a.windows for n in answers],
        "gpu_busy_pct_per_s": gpu_s,
        "events_s_from_kill": events[:2000],
    }


# --- the report ---------------------------------------------------------------------------
def _f(x: float | None, fmt: str = ",.0f") -> str:
    return "—" if x is None else format(x, fmt)


def table(results: list[dict[str, Any]]) -> str:
    """A markdown table of every load of every configuration."""
    head = (
        "| config | load | clients | ok | errors | windows/s | p50 ms | p99 ms | GPU busy % "
        "| server cores | by role (cores, busiest process) | load cores |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [head]
    for res in results:
        if not res["loads"]:
            rows.append(f"| {res['config']} | failed: {res.get('error', '?')[:200]} |")
        for r in res["loads"]:
            roles = "; ".join(
                f"{k} {v['cores']:.1f} ({v['max_process_cores']:.2f})"
                for k, v in r["cores_by_role"].items()
                if v["cores"] >= 0.05
            )
            gpu = " / ".join(f"{g:.0f}" for g in r["gpu_busy_pct"]) or "n/a"
            if r["load"] == "windows":
                cells = (r["clients"], r["ok"], r["errors"], _f(r["windows_per_s"]),
                         _f(r["p50_ms"], ".1f"), _f(r["p99_ms"], ".1f"))  # fmt: skip
            else:
                cells = (
                    f"{r['hosts']}x{r['windows_per_burst'] // max(r['hosts'], 1)}", r["ok"],
                    r["errors"], _f(r["windows_per_s"]),
                    "last " + _f(r["last_answer_p50_ms"], ".1f"),
                    "last " + _f(r["last_answer_p99_ms"], ".1f"),
                )  # fmt: skip
            rows.append(
                f"| {res['config']} | {r['load']} | "
                + " | ".join(map(str, cells))
                + f" | {gpu} | {r['server_cores']:.1f} | {roles} | {r['load_cores']:.1f} |"
            )
    return "\n".join(rows)


def main() -> int:
    """Parse the arguments, run every configuration, write the JSON, print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=Path("artifacts/quick"))
    p.add_argument(
        "--configs", default="serve:4,ray:1:16:ha,ray:2:16:ha+kill,ray:1:8:proxy,ray:2:8:proxy"
    )
    p.add_argument("--windows", type=int, default=64, help="windows per request")
    p.add_argument("--clients", default="16,64", help="comma-separated client counts")
    p.add_argument("--load-processes", type=int, default=8)
    p.add_argument("--time-limit-s", type=float, default=8.0)
    p.add_argument("--burst-hosts", type=int, default=16)
    p.add_argument("--burst-symbols", type=int, default=125)
    p.add_argument("--bursts", type=int, default=20)
    p.add_argument("--kill-clients", type=int, default=64)
    p.add_argument("--kill-run-s", type=float, default=30.0)
    p.add_argument("--kill-at-s", type=float, default=10.0)
    p.add_argument("--startup-timeout-s", type=float, default=240.0)
    p.add_argument("--budget-s", type=float, default=470.0, help="start no configuration past this")
    p.add_argument("--config-estimate-s", type=float, default=75.0)
    p.add_argument("--device", default="cuda", help="cuda; cpu only to try the script")
    p.add_argument("--out", type=Path, default=Path("gpu-ray-bench.json"))
    a = p.parse_args()
    a.clients = [int(c) for c in a.clients.split(",")]
    began = time.perf_counter()
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "argv": sys.argv,
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
    results: list[dict[str, Any]] = []
    skipped = []
    for config in (c.strip() for c in a.configs.split(",")):
        if time.perf_counter() - began + a.config_estimate_s > a.budget_s:
            skipped.append(config)
            continue
        print(f"--- {config} at {time.perf_counter() - began:.0f} s", flush=True)
        results.append(measure(config, a.bundle, a))
        doc = {"meta": meta, "results": results, "skipped": skipped}
        a.out.write_text(json.dumps(doc, indent=1))
    a.out.write_text(json.dumps({"meta": meta, "results": results, "skipped": skipped}, indent=1))
    for res in results:
        if "error" in res:
            print(f"--- {res['config']}: {res['error']}\n{res.get('server_log_tail', '')}")
    print(table(results))
    if skipped:
        print("skipped (budget):", ", ".join(skipped))
    print(f"total {time.perf_counter() - began:.0f} s")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
