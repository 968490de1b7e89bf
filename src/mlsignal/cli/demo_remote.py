"""The remote half of ``mlsignal demo``: a real server on loopback, stopped part way."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(bundle: str, port: int, log_path: Path) -> subprocess.Popen:
    """Start ``mlsignal serve`` on 127.0.0.1:port and wait until /readyz answers 200."""
    import httpx

    cmd = [sys.executable, "-m", "mlsignal.cli.main", "serve", "--bundle", bundle,
           "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]  # fmt: skip
    log = log_path.open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server not ready after 60 s; see {log_path}")


def remote_demo(bundle: str, bars: Any, n: int, local: Any) -> str:
    """Replay ``n`` bars through a loopback server, kill it half way, return a summary."""
    from mlsignal.enhancer import MLSignalEnhancer
    from mlsignal.rules import last_rule_scores

    port = free_port()
    proc = start_server(bundle, port, Path(bundle) / ".." / "demo-server.log")
    url = f"http://127.0.0.1:{port}"
    remote = MLSignalEnhancer(bundle, remote_urls=url, timeout_s=1.0, local_fallback="eager")
    need, rows, diffs = remote.min_bars, [], []
    try:
        for k, end in enumerate(range(len(bars) - n, len(bars))):
            if k == n // 2:
                proc.kill()  # the GPU box dies mid-session: no warning, no goodbye
                proc.wait()
            window = bars.iloc[end + 1 - need : end + 1]
            ss, bs = last_rule_scores(window)
            _, _, info = remote.enhance_signal(window, ss, bs)
            _, _, mine = local.enhance_signal(window, ss, bs)
            diffs.append(abs(info["bull_prob"] - mine["bull_prob"]))
            rows.append(info)
    finally:
        proc.kill()
        remote.close()
    return _summary(url, rows, diffs, n)


def _summary(url: str, rows: list[dict[str, Any]], diffs: list[float], n: int) -> str:
    by_source = Counter(r["source"] for r in rows)
    lines = [f"remote: {n} bars through {url}; server killed (SIGKILL) before bar {n // 2 + 1}"]
    for source in ("remote", "fallback", "rules"):
        lat = [r["latency_ms"] for r in rows if r["source"] == source]
        if lat:
            lines.append(
                f"  {source:<8} {len(lat):>4} bars  latency median {np.median(lat):6.2f} ms, "
                f"max {np.max(lat):7.2f} ms"
            )
    reasons = Counter(r["fallback_reason"] for r in rows if r.get("fallback_reason"))
    for reason, count in reasons.most_common(3):
        lines.append(f"  fallback x{count}: {reason}")
    lines.append(
        f"  every bar answered: {len(rows) == n} ({dict(by_source)}); "
        f"max |bull_prob remote-or-fallback - local| = {max(diffs):.2g}"
    )
    return "\n".join(lines)
