"""Where the cores and the GPU go during a benchmark run.

- :func:`cpu_seconds`: user + system CPU seconds a process and all its descendants have
  used so far (Linux ``/proc``); the difference over a run divided by its wall time is
  the cores it kept busy.
- :class:`GpuBusy`: samples ``nvidia-smi``'s GPU utilisation (the share of time a kernel
  was running) every 100 ms during a run; ``None`` without ``nvidia-smi``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (``/proc/*/task/*/children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo.extend(int(c) for c in task.read_text().split())
            except OSError:
                continue
    return out


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its live descendants; 0 where unreadable."""
    total = 0
    for p in descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / _TICK


class GpuBusy:
    """``with GpuBusy() as g: ...`` then ``g.percent``: mean GPU utilisation over the block
    (``None`` without ``nvidia-smi`` or without samples). ``index`` picks the GPU."""

    def __init__(self, index: int = 0, period_ms: int = 100) -> None:
        self.index, self.period_ms = index, period_ms
        self.percent: float | None = None
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> GpuBusy:
        exe = shutil.which("nvidia-smi")
        if exe is not None:
            self._proc = subprocess.Popen(
                [exe, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 f"--id={self.index}", f"-lms={self.period_ms}"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            out, _ = self._proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, _ = self._proc.communicate()
        samples = [float(x) for x in out.split() if x.replace(".", "", 1).isdigit()]
        self.percent = sum(samples) / len(samples) if samples else None
