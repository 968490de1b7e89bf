"""deploy/compose.yaml: the server on a GPU and the live runner on the CPU, as Compose runs them.

The file is checked against the repository and the real CLI everywhere; the images are built
and smoke-tested only where a Docker daemon answers (skipped with the reason elsewhere).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from mlsignal.cli.main import build_parser

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"


def _services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_compose_builds_from_the_repository_and_its_commands_parse():
    services = _services()
    assert set(services) == {"server", "live"}
    for name, svc in services.items():
        context = (COMPOSE.parent / svc["build"]["context"]).resolve()
        assert context == ROOT, name
        assert (context / svc["build"]["dockerfile"]).is_file(), name
        args = build_parser().parse_args(["--log-json", *svc["command"]])  # the ENTRYPOINT's
        assert args.bundle == "/bundles/current", name
    server, live = services["server"], services["live"]
    assert server["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "deploy" not in live  # the live runner needs no GPU
    live_args = build_parser().parse_args(live["command"])
    assert live_args.remote == ["http://server:8000"] and live_args.source.startswith("follow:")
    assert "MLSIGNAL_API_KEYS" in server["environment"]
    assert "GPU_INFERENCE_API_KEY" in live["environment"]


def _docker_daemon() -> str | None:
    """Why the images cannot be built here, or ``None`` when a daemon answers."""
    if shutil.which("docker") is None:
        return "no docker command"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    if info.returncode != 0:
        return "no Docker daemon answers (docker info failed)"
    return None


@pytest.mark.slow
def test_compose_images_build_and_start(tmp_path):
    reason = _docker_daemon()
    if reason is not None:
        pytest.skip(reason)
    run = ["docker", "compose", "-f", str(COMPOSE)]
    env = {"MLSIGNAL_API_KEY": "k-test", "PATH": "/usr/bin:/bin:/usr/local/bin"}
    assert subprocess.run([*run, "config", "-q"], env=env, timeout=60).returncode == 0
    assert subprocess.run([*run, "build", "live"], env=env, timeout=1800).returncode == 0
    out = subprocess.run(
        ["docker", "run", "--rm", "mlsignal:cpu", "--version"], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.startswith("mlsignal ")
