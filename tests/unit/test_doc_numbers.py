"""Every measured number in docs/DEPLOY.md, docs/DEPLOY.zh-CN.md, docs/scaling.md and the
comments that ``mlsignal export-triton`` writes into config.pbtxt comes from the raw JSON
behind docs/BENCHMARKS.md (docs/img/*.json, docs/bench/*.json).

``QUOTES`` is the table: a document, the text it quotes with ``{}`` where each number goes,
and for each number where it comes from (a JSON file and a path in it, or arithmetic on such
values) and how it is rounded. The text, filled with the JSON's values, must appear in the
document (whitespace-normalised). Then every timing or throughput in those documents (a
number with ``ms``, ``µs``, ``windows/s``, ``K/s``, ``req/s``, ``x``, ``×``, ``%``, ``倍``, or
a number with thousands separators) must lie inside a quote checked here or be one of
``NOT_MEASURED`` (configuration values, the brief's own words), each with its reason. So a new
or edited number in these documents fails until it is tied to its JSON.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from mlsignal.triton_export import DEFAULTS

ROOT = Path(__file__).resolve().parents[2]

H200 = "docs/img/bench-h200.json"  # 2026-11-26, H200 host, 16 cores (issue 5)
VM2 = "docs/img/bench-cpu-2core.json"  # 2026-11-26, the 2-core VM (issue 5)
RUN2_W1 = "docs/bench/h200-2026-11-30-run2-bench-w1.json"  # serving paths, 1 worker
RUN2_W8 = "docs/bench/h200-2026-11-30-run2-bench-w8.json"  # 8 workers
RUN3_W4 = "docs/bench/h200-2026-11-30-run3-bench-w4.json"  # 4 workers
RUN5_W4 = "docs/bench/h200-2026-11-30-run5-bench-w4.json"  # 4 workers, all ready first
VM2_SERVING = "docs/bench/vm2core-2026-11-30-bench.json"  # serving paths on the 2-core VM
SERVING = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs" / "bench").glob("h200-*.json"))
SERVING_W4_UP = [f for f in SERVING if f != RUN2_W1]  # the runs with 4 to 12 workers
RAY1, RAY2, RAY3 = (f"docs/bench/h200x2-2026-11-30-ray-run{i}.json" for i in (1, 2, 3))  # 2x H200

Value = Callable[[], float]


@cache
def _load(file: str) -> dict:
    return json.loads((ROOT / file).read_text(encoding="utf-8"))


def J(file: str, path: str) -> Value:
    """The number at ``path`` in ``file``: dotted keys; ``rows[k=v,...]`` picks the one list
    item whose fields equal those values."""

    def get() -> float:
        node: object = _load(file)
        for part in re.findall(r"[^.\[\]]+(?:\[[^\]]*\])?", path):
            key, _, sel = part.partition("[")
            node = node[key]  # type: ignore[index]
            if sel:
                want = dict(kv.split("=", 1) for kv in sel.rstrip("]").split(","))
                hits = [r for r in node if all(str(r[k]) == v for k, v in want.items())]
                assert len(hits) == 1, f"{file}: {path} selects {len(hits)} items"
                node = hits[0]
        assert isinstance(node, int | float), f"{file}: {path} is {node!r}"
        return float(node)

    get.__doc__ = f"{file}: {path}"
    return get


def fwd(file: str, backend: str, device: str, batch: int, key: str = "median_ms") -> Value:
    """A ``forward`` row of a ``mlsignal bench`` JSON."""
    return J(file, f"rows[what=forward,backend={backend},device={device},batch={batch}].{key}")


def bar(file: str, what: str, backend: str, device: str) -> Value:
    """An ``enhance_signal`` / ``enhance_bar`` row's median ms."""
    return J(file, f"rows[what={what},backend={backend},device={device},batch=1].median_ms")


def serving(file: str, path: str) -> Value:
    return J(file, f"serving.{path}")


def extreme(values: list[Value], pick: Callable[..., float]) -> Value:
    """``pick`` (min or max) of several values."""
    return lambda: pick(v() for v in values)


def over(files: list[str], path: str, pick: Callable[..., float]) -> Value:
    """``pick`` (min or max) of ``serving.path`` over several runs."""
    return extreme([serving(f, path) for f in files], pick)


def fmt(value: float, spec: str) -> str:
    """``k0``/``k1``: thousands with 0/1 decimals (the ``K`` is in the text); ``,``: a whole
    number with thousands separators; else a format spec."""
    if spec.startswith("k"):
        return format(value / 1e3, f".{spec[1:]}f")
    if spec == ",":
        return f"{round(value):,}"
    return format(value, spec)


@dataclass(frozen=True)
class Quote:
    doc: str  # a file, or "triton:gpu" / "triton:cpu" (the comment lines of config.pbtxt)
    text: str  # with {} for each number
    values: tuple[tuple[Value, str], ...]  # (where the number comes from, its rounding)

    def filled(self) -> str:
        return self.text.format(*(fmt(v(), spec) for v, spec in self.values))


def Q(doc: str, text: str, *values: tuple[Value, str]) -> Quote:
    return Quote(doc, text, values)


EN, ZH, SC = "docs/DEPLOY.md", "docs/DEPLOY.zh-CN.md", "docs/scaling.md"
GRAPHS, CUDA = "torch+graphs", "cuda:0"
# the forward medians of the table "The numbers this guide uses", by (backend, device, file)
TABLE = {
    "torch_cpu": (("torch", "cpu", H200), (".1f", ".1f", ".0f", "k0")),
    "onnx_cpu": (("onnx", "cpu", H200), (".1f", ".1f", ".0f", "k1")),
    "onnx_vm": (("onnx", "cpu", VM2), (".1f", ".1f", ".0f", "k1")),
    "eager": (("torch", "cuda:0", H200), (".1f", ".1f", ".1f", "k0")),
    "graphs": (("torch+graphs", "cuda:0", H200), (".2f", ".2f", ".2f", "k0")),
}


def table_row(doc: str, label: str, name: str) -> Quote:
    (backend, device, file), specs = TABLE[name]
    values = [
        (fwd(file, backend, device, b), s) for b, s in zip((1, 16, 256), specs[:3], strict=True)
    ]
    values.append((fwd(file, backend, device, 1024, "windows_per_s"), specs[3]))
    return Quote(
        doc, f"| {label} | {{}} ms | {{}} ms | {{}} ms | ~{{}}K windows/s |", tuple(values)
    )


one_ms = (fwd(H200, "torch", "cuda:0", 1), ".1f")  # eager CUDA, batch 1
sixteen_ms = (fwd(H200, "torch", "cuda:0", 16), ".1f")
graphs_1 = (fwd(H200, GRAPHS, CUDA, 1), ".2f")
onnx_1 = (fwd(H200, "onnx", "cpu", 1), ".1f")
onnx_vm_1 = (fwd(VM2, "onnx", "cpu", 1), ".1f")
bar_gpu = (bar(H200, "enhance_bar", GRAPHS, CUDA), ".2f")
bar_onnx = (bar(H200, "enhance_bar", "onnx", "cpu"), ".1f")
bar_vm = (bar(VM2, "enhance_bar", "onnx", "cpu"), ".1f")
signal_gpu = (bar(H200, "enhance_signal", GRAPHS, CUDA), ".1f")
graphs_256 = (fwd(H200, GRAPHS, CUDA, 256), ".2f")
onnx_256 = (fwd(H200, "onnx", "cpu", 256), ".0f")
vs_ort = ((fwd(H200, GRAPHS, CUDA, 256, "speedup_vs_onnx_default"), ".0f"),
          (fwd(H200, GRAPHS, CUDA, 1024, "speedup_vs_onnx_default"), ".0f"))  # fmt: skip
remote = ((J(H200, "server.mlsignal.single.p50_ms"), ".2f"),
          (J(H200, "server.mlsignal.single.p99_ms"), ".2f"),
          (J(VM2, "server.mlsignal.single.p50_ms"), ".1f"))  # fmt: skip
cpu_per_request = (  # server CPU seconds per request, one window per request, 8 workers
    lambda: (
        serving(RUN2_W8, "one_window.server_cores")()
        / serving(RUN2_W8, "one_window.req_per_s")()
        * 1e3
    ),
    ".1f",
)
w4_windows = ((over([RUN3_W4, RUN5_W4], "windows.windows_per_s", min), ","),
              (over([RUN3_W4, RUN5_W4], "windows.windows_per_s", max), ","))  # fmt: skip
w4_config = ((serving(RUN3_W4, "config.windows_per_request"), ".0f"),
             (serving(RUN3_W4, "config.clients"), ".0f"))  # fmt: skip
w1_windows = (serving(RUN2_W1, "windows.windows_per_s"), ",")
burst = ((serving(RUN3_W4, "burst.windows_per_burst"), ","),
         (over([RUN3_W4, RUN5_W4], "burst.last_answer_p50_ms", min), ".1f"),
         (over([RUN3_W4, RUN5_W4], "burst.last_answer_p50_ms", max), ".1f"))  # fmt: skip
bars_best = (over(SERVING, "bars.windows_per_s", max), ",")
bars_best_workers = (serving(RUN2_W8, "config.workers"), ".0f")
graphs_1024_wps = (fwd(H200, GRAPHS, CUDA, 1024, "windows_per_s"), "k0")
per_second = (lambda: 1000 / 60, ".0f")  # 1,000 symbols, one bar a minute each


def ray(file: str, config: str, load: str, key: str, clients: int | None = None) -> Value:
    """One load's number of one configuration in a Ray bench JSON (scripts/gpu-ray-bench)."""
    sel = f"load={load}" + (f",clients={clients}" if clients else "")
    return J(file, f"results[config={config}].loads[{sel}].{key}")


SERVE4, PROXY1, PROXY2 = "serve:4", "ray:1:8:proxy", "ray:2:8:proxy"
RAY_1GPU, RAY_2GPU = "ray:1:16:ha/calls=1", "ray:2:16:ha/calls=1+kill"  # the default shape
proxy_rows = [
    ray(RAY1, c, "windows", "windows_per_s", n) for c in (PROXY1, PROXY2) for n in (16, 64)
]
proxy_req = [ray(RAY1, c, "windows", "req_per_s", n) for c in (PROXY1, PROXY2) for n in (16, 64)]
proxy_range = ((extreme(proxy_rows, min), ","), (extreme(proxy_rows, max), ","))
w4_up_windows = ((over(SERVING_W4_UP, "windows.windows_per_s", min), ","),
                 (over(SERVING_W4_UP, "windows.windows_per_s", max), ","))  # fmt: skip
w4_up_burst = ((over(SERVING_W4_UP, "burst.last_answer_p50_ms", min), ".1f"),
               (over(SERVING_W4_UP, "burst.last_answer_p50_ms", max), ".1f"))  # fmt: skip
gpu_alone = (fwd(RUN2_W1, GRAPHS, CUDA, 1024, "windows_per_s"), ",")
two_gpu_ray_best = (ray(RAY2, "ray:2:8:ha/calls=1", "windows", "windows_per_s", 64), ",")
serve4_64 = (ray(RAY1, SERVE4, "windows", "windows_per_s", 64), ",")
onnx_1024 = (fwd(H200, "onnx", "cpu", 1024), ".0f")
onnx_1024_wps = (fwd(H200, "onnx", "cpu", 1024, "windows_per_s"), "k1")
BURST_5000 = 5000  # the example of point 2: 5,000 symbols on one-minute bars


def per_window_cpu_s(file: str, path: str) -> Value:
    """Server CPU seconds per window of a serving path."""
    return lambda: (
        serving(file, f"{path}.server_cores")() / serving(file, f"{path}.windows_per_s")()
    )


bars_cpu = per_window_cpu_s(RUN2_W8, "bars")


def kill_share() -> float:
    """RAY3's kill: windows/s in the 15 s from the kill over the 7 s before it."""
    kill = next(r for r in _load(RAY3)["results"] if "kill" in r)["kill"]
    rate = dict(zip(kill["seconds_from_kill"], kill["windows_per_s"], strict=True))
    after = [rate[s] for s in range(0, 15)]
    before = [rate[s] for s in range(-7, 0)]
    return (sum(after) / len(after)) / (sum(before) / len(before))


def ray_rows(load: str = "windows", clients: int | None = None) -> list[tuple[str, dict]]:
    """(config, load row) of every HAProxy configuration (``ha``, ``hat``) in the Ray runs."""
    return [
        (r["config"], row)
        for f in (RAY1, RAY2, RAY3)
        for r in _load(f)["results"]
        if ":ha" in r["config"]
        for row in r["loads"]
        if row["load"] == load and (clients is None or row.get("clients") == clients)
    ]


def ha_over_proxy() -> list[float]:
    """Windows/s of each HAProxy row over Serve's proxy with as many model replicas and
    clients (RAY1)."""
    return [
        row["windows_per_s"]
        / ray(RAY1, f"ray:{config.split(':')[1]}:8:proxy", "windows", "windows_per_s",
              row["clients"])()
        for config, row in ray_rows()
    ]  # fmt: skip


def ray_cpu_over_serve() -> list[float]:
    """Server CPU per request of each HAProxy row over plain serve's (64 clients)."""
    plain = (ray(RAY1, SERVE4, "windows", "server_cores", 64)()
             / ray(RAY1, SERVE4, "windows", "req_per_s", 64)())  # fmt: skip
    return [row["server_cores"] / row["req_per_s"] / plain for _, row in ray_rows(clients=64)]


def windows_over_bars() -> list[float]:
    """The windows path's windows/s over the bars path's, run by run (4 to 12 workers)."""
    return [
        serving(f, "windows.windows_per_s")() / serving(f, "bars.windows_per_s")()
        for f in SERVING_W4_UP
    ]


def model_replica_cores() -> list[float]:
    """The busiest model replica process's cores, RAY3's default shape, both loads."""
    key = "cores_by_role.model.max_process_cores"
    return [ray(RAY3, c, "windows", key, n)() for c in (RAY_1GPU, RAY_2GPU) for n in (16, 64)]


def model_replica_gpu_busy() -> list[float]:
    """Busy % of each GPU that holds a model replica, RAY3's default shape, both loads."""
    busy = []
    for config, replicas in ((RAY_1GPU, 1), (RAY_2GPU, 2)):
        loads = next(r for r in _load(RAY3)["results"] if r["config"] == config)["loads"]
        for row in loads:
            if row["load"] == "windows":  # 16 and 64 clients
                busy += row["gpu_busy_pct"][:replicas]
    return busy


def two_against_one(clients: int) -> tuple[tuple[Value, str], ...]:
    """Two GPU replicas against one (RAY3, HAProxy): the ratio, windows/s and p99 of each."""
    two, one = (ray(RAY3, c, "windows", "windows_per_s", clients) for c in (RAY_2GPU, RAY_1GPU))
    p99_two, p99_one = (ray(RAY3, c, "windows", "p99_ms", clients) for c in (RAY_2GPU, RAY_1GPU))
    return ((lambda: two() / one(), ".2f"), (two, ","), (one, ","), (p99_two, ".1f"),
            (p99_one, ".1f"))  # fmt: skip


QUOTES: tuple[Quote, ...] = (
    # -- docs/DEPLOY.md ---------------------------------------------------------------------------
    Q(EN, "eager PyTorch on an H200 ({} ms)", one_ms),
    Q(EN, "ONNX Runtime on the CPU ({}–{} ms)", onnx_1, onnx_vm_1),
    Q(EN, "graphs of a fused forward ({} ms,", graphs_1),
    Q(EN, "takes {} ms on the GPU against {}–{} ms on the CPU", bar_gpu, bar_onnx, bar_vm),
    Q(EN, "(batch 256: {} ms on the GPU against {} ms on 16 CPU cores)", graphs_256, onnx_256),
    table_row(EN, "torch, CPU (16 threads)", "torch_cpu"),
    table_row(EN, "ONNX Runtime, CPU (16 cores)", "onnx_cpu"),
    table_row(EN, "ONNX Runtime, CPU (2-core VM)", "onnx_vm"),
    table_row(EN, "torch, CUDA eager (H200, `ML_CUDA_GRAPHS=0`)", "eager"),
    table_row(EN, "torch, CUDA graphs (H200, the default on CUDA)", "graphs"),
    # "5.0 ms with ONNX or torch": both rows round to it
    Q(EN, "`enhance_signal` on 256 bars takes {} ms with ONNX or torch on the CPU and {} ms "
      "with CUDA graphs", (bar(H200, "enhance_signal", "onnx", "cpu"), ".1f"), signal_gpu),
    Q(EN, "`enhance_signal` on 256 bars takes {} ms with ONNX or torch on the CPU",
      (bar(H200, "enhance_signal", "torch", "cpu"), ".1f")),
    Q(EN, "the live-loop path) {} ms with ONNX on the CPU and {} ms with CUDA graphs ({} ms on "
      "the 2-core VM)", bar_onnx, bar_gpu, bar_vm),
    Q(EN, "one client: p50 {} ms, p99 {} ms on the H200 host; p50 {} ms on the 2-core VM",
      *remote),
    Q(EN, "the GPU is {}–{}x faster than ONNX Runtime on 16 CPU cores (batch 256 to 1024)",
      *vs_ort),
    Q(EN, "kernel launches ({} ms at batch 1, {} ms at batch 16)", one_ms, sixteen_ms),
    Q(EN, "answers one window in {} ms ({} ms on a 2-core VM)", onnx_1, onnx_vm_1),
    Q(EN, "One server process spends about {} ms of CPU per request", cpu_per_request),
    Q(EN, "four workers served {}–{} windows/s of binary V2 requests ({} windows each, {} "
      "clients) against {} with one", *w4_windows, *w4_config, w1_windows),
    Q(EN, "a bar-close burst of {} symbols with the last answer {}–{} ms (median)", *burst),
    Q(EN, "the server's CPU: {} windows/s at best, with {} workers", bars_best,
      bars_best_workers),
    Q(EN, "one GPU serves them all: {}–{} windows/s with four worker processes", *w4_windows),
    Q(EN, "eager PyTorch takes {} ms at batch 1 and {} ms at batch 16", one_ms, sixteen_ms),
    Q(EN, "kernels' own time ({} ms at batch 1 on the H200)", graphs_1),
    Q(EN, "The H200 reaches ~{}K windows/s (batch 1024, float32 with CUDA graphs",
      graphs_1024_wps),
    Q(EN, "1,000 symbols on a one-minute bar need {} windows per second", per_second),
    Q(EN, "`enhance_signal` on 256 bars takes {} ms with the model on the GPU ({} ms of it the "
      "forward), `enhance_bar` {} ms", signal_gpu, graphs_1, bar_gpu),
    # -- docs/DEPLOY.zh-CN.md: the same numbers ---------------------------------------------------
    Q(ZH, "H200 上 eager 模式的 PyTorch（{} ms）", one_ms),
    Q(ZH, "CPU 上的 ONNX Runtime（{}–{} ms）", onnx_1, onnx_vm_1),
    Q(ZH, "（{} ms，见 docs/BENCHMARKS.md）", graphs_1),
    Q(ZH, "（`enhance_bar`）在 GPU 上 {} ms，CPU 上 {}–{} ms", bar_gpu, bar_onnx, bar_vm),
    Q(ZH, "（batch 256：GPU {} ms，16 核 CPU {} ms）", graphs_256, onnx_256),
    table_row(ZH, "torch，CPU（16 线程）", "torch_cpu"),
    table_row(ZH, "ONNX Runtime，CPU（16 核）", "onnx_cpu"),
    table_row(ZH, "ONNX Runtime，CPU（2 核 VM）", "onnx_vm"),
    table_row(ZH, "torch，CUDA eager（H200，`ML_CUDA_GRAPHS=0`）", "eager"),
    table_row(ZH, "torch，CUDA Graph（H200，CUDA 上的默认路径）", "graphs"),
    Q(ZH, "在 CPU 上（ONNX 或 torch）为 {} ms，CUDA Graph 为 {} ms；",
      (bar(H200, "enhance_signal", "onnx", "cpu"), ".1f"), signal_gpu),
    Q(ZH, "在 CPU 上（ONNX 或 torch）为 {} ms，",
      (bar(H200, "enhance_signal", "torch", "cpu"), ".1f")),
    Q(ZH, "CPU 上 ONNX 为 {} ms，CUDA Graph 为 {} ms（2 核 VM 上 {} ms）",
      bar_onnx, bar_gpu, bar_vm),
    Q(ZH, "H200 主机上 p50 {} ms、p99 {} ms；2 核 VM 上 p50 {} ms", *remote),
    Q(ZH, "GPU 比 16 核 CPU 上的 ONNX Runtime 快 {}–{} 倍（batch 256 到 1024）", *vs_ort),
    Q(ZH, "（batch 1 时 {} ms，batch 16 时 {} ms）", one_ms, sixteen_ms),
    Q(ZH, "处理一个窗口需 {} ms（2 核 VM 上 {} ms）", onnx_1, onnx_vm_1),
    Q(ZH, "一个服务进程处理每个请求大约要花 {} ms 的 CPU", cpu_per_request),
    Q(ZH, "（每个请求 {} 个窗口、{} 个客户端）达到 {}–{} windows/s，一个 worker 是 {}；",
      *w4_config, *w4_windows, w1_windows),
    Q(ZH, "一次 {} 个品种的收盘突发，最后一个应答在突发后 {}–{} ms（中位数）到达", *burst),
    Q(ZH, "它的瓶颈是服务端的 CPU：{} 个 worker 时最多 {} windows/s", bars_best_workers,
      bars_best),
    Q(ZH, "四个 worker 进程 {}–{} windows/s", *w4_windows),
    Q(ZH, "PyTorch 在 batch 1 时为 {} ms，batch 16 时为 {} ms", one_ms, sixteen_ms),
    Q(ZH, "（H200 上 batch 1 为 {} ms）", graphs_1),
    Q(ZH, "H200 可达 ~{}K windows/s（batch 1024，float32，", graphs_1024_wps),
    Q(ZH, "1,000 个品种、1 分钟 K 线，每秒只需要 {} 个窗口", per_second),
    Q(ZH, "256 根 K 线的 `enhance_signal` 为 {} ms（其中前向计算 {} ms），`enhance_bar` 为 {} ms",
      signal_gpu, graphs_1, bar_gpu),
    # -- docs/scaling.md ------------------------------------------------------------------------
    Q(SC, "One Python process spends about {} ms of CPU per request", cpu_per_request),
    Q(SC, "the windows path went from {} windows/s with one worker to {}–{} with four to twelve",
      w1_windows, *w4_up_windows),
    Q(SC, "where the GPU is {}–{}% busy",
      (over(SERVING_W4_UP, "windows.gpu_busy_pct", min), ".0f"),
      (over(SERVING_W4_UP, "windows.gpu_busy_pct", max), ".0f")),
    Q(SC, "Startup is the model load per worker, in parallel ({}–{} s)",
      *((over(SERVING_W4_UP, "startup_s", pick), ".0f") for pick in (min, max))),
    Q(SC, "That is {}–{}× the server's rate of the bars path in the same runs",
      *((lambda pick=pick: pick(windows_over_bars()), ".0f") for pick in (min, max))),
    Q(SC, "Ray Serve (below) spends {}–{}×", (lambda: min(ray_cpu_over_serve()), ".0f"),
      (lambda: max(ray_cpu_over_serve()), ".0f")),
    Q(SC, "its process {} cores busy", (ray(RAY1, PROXY1, "windows",
      "cores_by_role.serve_proxy.max_process_cores", 64), ".1f")),
    Q(SC, "{}–{}× the windows/s on the same replicas", (lambda: min(ha_over_proxy()), ".1f"),
      (lambda: max(ha_over_proxy()), ".1f")),
    Q(SC, "bound by its one Python process ({}–{} cores busy) while its GPU is {}–{}% busy",
      *((lambda pick=pick: pick(model_replica_cores()), ".1f") for pick in (min, max)),
      *((lambda pick=pick: pick(model_replica_gpu_busy()), ".0f") for pick in (min, max))),
    Q(SC, "the {} in flight on it got a 503", (J(RAY3, "results[config=" + RAY_2GPU +
      "].kill.summary.retried"), ".0f")),
    Q(SC, "Serve started a new replica process {} s later, its GPU was busy again in second {}, "
      "and meanwhile one GPU carried the load at {}% of the two-replica rate",
      (J(RAY3, f"results[config={RAY_2GPU}].kill.summary.new_replica_process_after_s"), ".1f"),
      (J(RAY3, f"results[config={RAY_2GPU}].kill.summary.victim_gpu_busy_again_in_second"), ".0f"),
      (lambda: 100 * kill_share(), ".0f")),
    Q(SC, "whose JSON and feature work are the server's CPU: {} windows/s at best with {} "
      "workers", bars_best, bars_best_workers),
    Q(SC, "got their last answer {}–{} ms later (p99 {}–{} ms) with 4–12 workers, {} ms with one",
      *w4_up_burst,
      (over(SERVING_W4_UP, "burst.last_answer_p99_ms", min), ".1f"),
      (over(SERVING_W4_UP, "burst.last_answer_p99_ms", max), ".1f"),
      (serving(RUN2_W1, "burst.last_answer_p50_ms"), ".0f")),
    Q(SC, "(the GPU alone does {} windows/s at batch 1,024)", gpu_alone),
    Q(SC, "half of one plain server on one GPU ({} against {} windows/s", two_gpu_ray_best,
      serve4_64),
    Q(SC, "it bounds a node at {}–{} windows/s ({}–{} requests of 64 windows per second",
      *proxy_range, (extreme(proxy_req, min), ".0f"), (extreme(proxy_req, max), ".0f")),
    Q(SC, "queue delay {} µs; CPU `256`, `[16, 256]`, {} µs.",
      (lambda: DEFAULTS["gpu"].queue_delay_us, ".0f"),
      (lambda: DEFAULTS["cpu"].queue_delay_us, ".0f")),
    Q(SC, "| model forward, PyTorch CUDA eager | {} ms at batch 1, {} ms at 16, {} ms at 256, "
      "{} ms at 1024 (~{}K windows/s) |", one_ms, sixteen_ms,
      (fwd(H200, "torch", "cuda:0", 256), ".1f"), (fwd(H200, "torch", "cuda:0", 1024), ".1f"),
      (fwd(H200, "torch", "cuda:0", 1024, "windows_per_s"), "k0")),
    Q(SC, "| model forward, CUDA graphs (the default) | {} ms at batch 1, {} ms at 16, {} ms at "
      "256, {} ms at 1024 (~{}K/s; ~{}K/s in bf16) |", graphs_1,
      (fwd(H200, GRAPHS, CUDA, 16), ".2f"), graphs_256, (fwd(H200, GRAPHS, CUDA, 1024), ".1f"),
      graphs_1024_wps, (fwd(H200, "torch+graphs+bf16", CUDA, 1024, "windows_per_s"), "k0")),
    Q(SC, "| model forward, ONNX Runtime CPU (16 cores) | {} ms at 1, {} ms at 16, {} ms at 256, "
      "{} ms at 1024 (~{}K/s) |", onnx_1, (fwd(H200, "onnx", "cpu", 16), ".1f"), onnx_256,
      onnx_1024, onnx_1024_wps),
    Q(SC, "(features, GARCH, JSON encode and decode {} ms, HTTP)",
      (J(H200, "server.serialisation.total_ms"), ".2f")),
    Q(SC, "answers {}–{} one-symbol requests/s on the H200 host (16 and 64 clients, 2026-11-30), "
      "{}x LitServe",
      (J(RUN2_W1, "server.throughput[clients=16].mlsignal_req_per_s"), ".0f"),
      (J(RUN2_W1, "server.throughput[clients=64].mlsignal_req_per_s"), ".0f"),
      (J(RUN2_W1, "server.throughput[clients=16].speedup_vs_litserve"), ".1f")),
    Q(SC, "windows path (binary, 64 per request) {}–{} windows/s; bars path (64 symbols) up to {}; "
      "a {}-symbol burst answered in {}–{} ms", *w4_up_windows, bars_best,
      (serving(RUN3_W4, "burst.windows_per_burst"), ","), *w4_up_burst),
    Q(SC, "One GPU replica forwards about {}K windows/s.", graphs_1024_wps),
    Q(SC, "is only {} windows/s on average", (lambda: BURST_5000 / 60, ".0f")),
    Q(SC, "one GPU replica forwards it in five passes of 1,024, about {} ms with CUDA graphs",
      (lambda: 5 * fwd(H200, GRAPHS, CUDA, 1024)(), ".1f")),
    Q(SC, "is about {} CPU-seconds ({} ms per symbol, measured with {} workers), so it needs at "
      "least {} busy cores", (lambda: BURST_5000 * bars_cpu(), ".1f"),
      (lambda: 1e3 * bars_cpu(), ".2f"), bars_best_workers,
      (lambda: math.ceil(BURST_5000 * bars_cpu()), ".0f")),
    Q(SC, "the server spends about {} CPU-seconds on it",
      (lambda: BURST_5000 * per_window_cpu_s(RUN3_W4, "windows")(), ".2f")),
    Q(SC, "near 70–80% of the ~{}K windows/s ceiling", graphs_1024_wps),
    Q(SC, "gave {}× the windows/s of one with 16 clients ({} against {}, p99 {} against {} ms) "
      "and {}× with 64 ({} against {}, p99 {} against {} ms), and a {}-symbol burst's last "
      "answer in {} instead of {} ms",
      *two_against_one(16), *two_against_one(64),
      (ray(RAY3, RAY_2GPU, "burst", "windows_per_burst"), ","),
      (ray(RAY3, RAY_2GPU, "burst", "last_answer_p50_ms"), ".1f"),
      (ray(RAY3, RAY_1GPU, "burst", "last_answer_p50_ms"), ".1f")),
    Q(SC, "on one GPU did {} and {} windows/s under the same loads and answered the burst in {} "
      "ms", (ray(RAY1, SERVE4, "windows", "windows_per_s", 16), ","), serve4_64,
      (ray(RAY1, SERVE4, "burst", "last_answer_p50_ms"), ".1f")),
    Q(SC, "a second replica added nothing ({}–{} windows/s either way", *proxy_range),
    Q(SC, "serve about {} windows/s per 16 cores with ONNX Runtime ({} ms per 1,024-window batch",
      (fwd(H200, "onnx", "cpu", 1024, "windows_per_s"), ","), onnx_1024),
    Q(SC, "and {} windows/s on a 2-core VM", (serving(VM2_SERVING, "windows.windows_per_s"), ",")),
    # -- config.pbtxt comments (src/mlsignal/triton_export.py) ----------------------------------
    Q("triton:gpu", "1: {} ms, 16: {} ms, 256: {} ms ({}K windows/s), 1024: {} ms ({}K/s), "
      "4096: {} ms ({}K/s)", one_ms, sixteen_ms,
      (fwd(H200, "torch", "cuda:0", 256), ".1f"),
      (fwd(H200, "torch", "cuda:0", 256, "windows_per_s"), "k0"),
      (fwd(H200, "torch", "cuda:0", 1024), ".1f"),
      (fwd(H200, "torch", "cuda:0", 1024, "windows_per_s"), "k0"),
      (fwd(H200, "torch", "cuda:0", 4096), ".1f"),
      (fwd(H200, "torch", "cuda:0", 4096, "windows_per_s"), "k0")),
    Q("triton:gpu", "256 gives {}% of it",
      (lambda: 100 * fwd(H200, "torch", "cuda:0", 256, "windows_per_s")()
       / fwd(H200, "torch", "cuda:0", 1024, "windows_per_s")(), ".0f")),
    Q("triton:gpu", "waiting up to {} ms", (lambda: DEFAULTS["gpu"].queue_delay_us / 1e3, ".1f")),
    Q("triton:cpu", "1: {} ms, 16: {} ms ({}K windows/s), 256: {} ms ({}K/s), 1024: {} ms "
      "({}K/s)",
      (fwd(H200, "onnx-default", "cpu", 1), ".1f"),
      (fwd(H200, "onnx-default", "cpu", 16), ".1f"),
      (fwd(H200, "onnx-default", "cpu", 16, "windows_per_s"), "k1"),
      (fwd(H200, "onnx-default", "cpu", 256), ".0f"),
      (fwd(H200, "onnx-default", "cpu", 256, "windows_per_s"), "k1"),
      (fwd(H200, "onnx-default", "cpu", 1024), ".0f"),
      (fwd(H200, "onnx-default", "cpu", 1024, "windows_per_s"), "k1")),
)  # fmt: skip

#: Numbers in these documents that look like measurements and are not: (doc, the text
#: around them, why).
NOT_MEASURED: tuple[tuple[str, str, str], ...] = (
    (EN, "(connect 250 ms, read 1 s,", "nginx's timeouts, set in deploy/nginx/mlsignal.conf"),
    (ZH, "（连接 250 ms，读取 1 s，", "nginx's timeouts, set in deploy/nginx/mlsignal.conf"),
    (EN, '"内网通常 1–5ms"', "the brief's own words, quoted"),
    (ZH, "“内网通常 1–5ms”", "the brief's own words, quoted"),
    (EN, "1,000 symbols on a one-minute bar", "an example load, not a measurement"),
    (ZH, "1,000 个品种", "an example load, not a measurement"),
    (EN, "100,000 bars (about 100 MB)", "the live runner's queue limit (src/mlsignal/live)"),
    (ZH, "最多容纳 100,000 根 K 线", "the live runner's queue limit (src/mlsignal/live)"),
    (SC, "2× H200", "the machine: two H200 GPUs"),
    (SC, "tested at 10× its limit", "the load of tests/integration/test_workers.py: 40 clients, 4"),
    (EN, "one 64 × 29 window", "the model's input shape"),
    (ZH, "64 × 29 的窗口", "the model's input shape"),
    (SC, "5,000 symbols on one-minute bars", "an example load (BURST_5000), not a measurement"),
    (SC, "a burst of 5,000 windows at each minute", "the same example load"),
)

#: A timing or throughput: a number (or range) with a unit, or a number with thousands
#: separators (a count of windows or requests).
MEASURE = re.compile(
    r"~?\d+(?:\.\d+)?(?:\s?[–-]\s?\d+(?:\.\d+)?)?\s?(?:K\s?)?"
    r"(?:ms\b|µs\b|windows/s|K/s|req/s|x\b|×|%|\s?倍)"
    r"|(?<![\d,])\d{1,3}(?:,\d{3})+(?![\d,])"
)
_CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")


def normalised(text: str) -> str:
    """Lines joined: no break between two CJK characters, one space elsewhere."""

    def join(m: re.Match) -> str:
        before, after = text[m.start() - 1 : m.start()], text[m.end() : m.end() + 1]
        return "" if _CJK.match(before) or _CJK.match(after) else " "

    return re.sub(r" +", " ", re.sub(r"[ \t]*\n[ \t]*", join, text))


def doc_text(doc: str) -> str:
    if doc.startswith("triton:"):
        return normalised(" ".join(DEFAULTS[doc.split(":")[1]].why))
    return normalised((ROOT / doc).read_text(encoding="utf-8"))


@pytest.mark.parametrize("quote", QUOTES, ids=[f"{q.doc}#{i}" for i, q in enumerate(QUOTES)])
def test_each_quoted_number_is_its_json_value(quote):
    expected = quote.filled()
    assert expected in doc_text(quote.doc), (
        f"{quote.doc} should say {expected!r} (from "
        f"{'; '.join(str(v.__doc__ or 'arithmetic') for v, _ in quote.values)})"
    )


DOCS = (EN, ZH, SC, "triton:gpu", "triton:cpu")


@pytest.mark.parametrize("doc", DOCS)
def test_every_measured_number_is_checked_or_explained(doc):
    text = doc_text(doc)
    covered: list[tuple[int, int]] = []
    for snippet in [q.filled() for q in QUOTES if q.doc == doc] + [
        s for d, s, _ in NOT_MEASURED if d == doc
    ]:
        covered += [(m.start(), m.end()) for m in re.finditer(re.escape(snippet), text)]
    loose = [
        f"{m.group(0)!r} in ...{text[max(0, m.start() - 60) : m.end() + 30]}..."
        for m in MEASURE.finditer(text)
        if not any(a <= m.start() and m.end() <= b for a, b in covered)
    ]
    assert not loose, (
        f"{doc}: numbers that no QUOTES entry ties to docs/BENCHMARKS.md's JSON (add one, or "
        "reword without the number):\n" + "\n".join(loose)
    )


def test_every_exemption_is_still_in_its_document():
    for doc, snippet, why in NOT_MEASURED:
        assert snippet in doc_text(doc), f"{doc}: {snippet!r} ({why}) is gone: drop the entry"


def test_the_triton_batch_sizes_follow_their_numbers():
    """max_batch_size is where throughput peaks in the rows the comments quote."""
    rows = {"gpu": ("torch", "cuda:0"), "cpu": ("onnx-default", "cpu")}
    for kind, (backend, device) in rows.items():
        batches = (1, 16, 256, 1024, 4096)
        rates = {b: fwd(H200, backend, device, b, "windows_per_s")() for b in batches}
        assert max(rates, key=rates.get) == DEFAULTS[kind].max_batch, (kind, rates)
