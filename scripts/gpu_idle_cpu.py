"""Where an idle `mlsignal serve` spends CPU: per-thread CPU seconds of each process over a
few seconds with no requests (run on the GPU machine; see docs/BENCHMARKS.md).

Usage: python3 scripts/gpu_idle_cpu.py BUNDLE [WORKERS] [SECONDS]
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from mlsignal.bench.procs import ServerProc, free_port
from mlsignal.bench.usage import descendants


def thread_times(pid: int) -> dict[tuple[int, str], float]:
    """(pid, thread name) -> CPU seconds, for ``pid`` and its descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[tuple[int, str], float] = collections.Counter()
    for p in descendants(pid):
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                name = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[(p, name)] += (int(fields[11]) + int(fields[12])) / tick
    return out


def main() -> None:
    bundle, workers = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "2"
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
    port = free_port()
    args = [sys.executable, "-m", "mlsignal.cli.main", "serve", "--bundle", bundle,
            "--port", str(port), "--workers", workers]  # fmt: skip
    with ServerProc("serve", args, port, "/readyz").start(300) as proc:
        httpx.get(proc.url + "/v1/models", timeout=10)
        time.sleep(2.0)
        before = thread_times(proc.proc.pid)
        time.sleep(seconds)
        after = thread_times(proc.proc.pid)
        used = {k: after[k] - before.get(k, 0.0) for k in after}
        total = sum(used.values())
        print(f"idle {seconds:.0f} s, {workers} workers: {total / seconds:.2f} cores in all")
        for (pid, name), s in sorted(used.items(), key=lambda kv: -kv[1])[:15]:
            print(f"  pid {pid:>7} {name:<20} {s / seconds:6.3f} cores")
    if shutil.which("nvidia-smi"):
        subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv"], check=False)


if __name__ == "__main__":
    main()
