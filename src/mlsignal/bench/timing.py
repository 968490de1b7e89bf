"""Timing helpers: warm up, repeat, report median and p99 in milliseconds."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Timing:
    """Latency statistics of one path at one batch size."""

    median_ms: float
    p99_ms: float
    reps: int

    def per_second(self, batch: int) -> float:
        """Windows per second at the median latency."""
        return batch / (self.median_ms / 1e3) if self.median_ms > 0 else float("inf")


def measure(
    fn: Callable[[], object], budget_s: float, warmup: int = 3, max_reps: int = 2000
) -> Timing:
    """Call ``fn`` ``warmup`` times, then repeatedly for about ``budget_s`` seconds.

    At least 5 timed repetitions run whatever the budget, so slow paths still report. The
    warm-up stops early (after two calls: a first CUDA call may set things up) once it has
    used a third of the budget: a 300 ms batch needs no third warm-up call.
    """
    end = time.perf_counter() + budget_s / 3
    for i in range(warmup):
        fn()
        if i >= 1 and time.perf_counter() > end:
            break
    times: list[float] = []
    end = time.perf_counter() + budget_s
    while len(times) < 5 or (time.perf_counter() < end and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    arr = np.asarray(times) * 1e3
    return Timing(float(np.median(arr)), float(np.percentile(arr, 99)), len(arr))
