"""``mlsignal bench --plot FILE.png``: latency and windows/s against batch size per path."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from mlsignal.errors import ConfigError


def plot_forward(result: dict[str, Any], path: str | Path) -> Path:
    """Median forward latency (log-log) and windows/s against batch size, one line per path.

    CPU paths are solid, GPU paths dashed, so where the lines cross is the batch size from
    which the GPU pays. Needs matplotlib (``pip install 'mlsignal[plot]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'mlsignal[plot]'") from None
    lines: dict[tuple[str, str], list[tuple[int, float, float]]] = defaultdict(list)
    for r in result["rows"]:
        if r["what"] == "forward":
            lines[(r["backend"], r["device"])].append(
                (r["batch"], r["median_ms"], r["windows_per_s"])
            )
    if not lines:
        raise ConfigError("--plot: no forward rows to plot")
    fig, (ax_ms, ax_rate) = plt.subplots(1, 2, figsize=(12, 4.8))
    for (backend, device), pts in sorted(lines.items()):
        pts.sort()
        batch, ms, rate = zip(*pts, strict=True)
        style = "-" if device == "cpu" else "--"
        label = f"{backend} {device}"
        ax_ms.plot(batch, ms, style, marker="o", label=label)
        ax_rate.plot(batch, rate, style, marker="o", label=label)
    for ax, ylabel in ((ax_ms, "median latency, ms"), (ax_rate, "windows per second")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size (windows)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    cross = gpu_crossover(lines)
    if cross is not None:
        for ax in (ax_ms, ax_rate):
            ax.axvline(cross, color="grey", linestyle=":", linewidth=1)
        ax_ms.annotate(f"GPU faster from batch {cross}", (cross, ax_ms.get_ylim()[1]),
                       fontsize=8, ha="left", va="top", xytext=(4, -4),
                       textcoords="offset points")  # fmt: skip
    ax_ms.legend(fontsize=8)
    m = result.get("machine", {})
    names = [g.get("name", "?") if isinstance(g, dict) else str(g) for g in m.get("gpus") or []]
    gpus = ", ".join(names) or "no GPU"
    fig.suptitle(
        f"mlsignal model forward — {m.get('cpu_count')} CPUs, {gpus}, {m.get('date')}",
        fontsize=10,
    )
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def gpu_crossover(lines: dict[tuple[str, str], list[tuple[int, float, float]]]) -> int | None:
    """The smallest batch at which the fastest GPU path beats the fastest CPU path."""
    best: dict[str, dict[int, float]] = {"cpu": {}, "gpu": {}}
    for (_, device), pts in lines.items():
        side = best["cpu" if device == "cpu" else "gpu"]
        for batch, ms, _ in pts:
            side[batch] = min(ms, side.get(batch, float("inf")))
    both = sorted(set(best["cpu"]) & set(best["gpu"]))
    return next((b for b in both if best["gpu"][b] < best["cpu"][b]), None)
