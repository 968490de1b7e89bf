"""The deployment kit (deploy/) checked offline: units, env files, Dockerfiles, nginx.

What cannot run here (docker, nginx, systemd as init) is checked for drift against the code:
every command line in a unit or a Dockerfile parses with the real CLI parser, every variable
in the env example is one the code reads, every file a Dockerfile copies exists. Where
`systemd-analyze` exists, the units are verified with it too.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from mlsignal.cli.main import build_parser
from torch_block import CLI_WITHOUT_TORCH

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"
SRC = ROOT / "src" / "mlsignal"
ENV_FILE = "/etc/mlsignal/mlsignal.env"
STATE_DIR = "/var/lib/mlsignal"
# systemd >= 254 keys; older systemd warns "Unknown key" and ignores them (documented).
NEWER_SYSTEMD_KEYS = {"RestartSteps", "RestartMaxDelaySec"}

UNIT_FILES = {
    "mlsignal-server.service": "serve",
    "mlsignal-live.service": "live",
    "mlsignal-live@.service": "live",
}


def read_unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((UNITS / name).read_text())
    return parser


def unit_values(name: str, section: str, key: str) -> list[str]:
    """Every value of a key that systemd allows more than once (EnvironmentFile=, ...)."""
    values, current = [], None
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and line.startswith(f"{key}="):
            values.append(line.split("=", 1)[1])
    return values


def env_assignments(path: Path, commented: bool = False) -> dict[str, str]:
    """KEY=value lines of an env file; with ``commented``, also the ``#KEY=value`` examples."""
    out = {}
    pattern = r"^(#)?([A-Z][A-Z0-9_]*)=(.*)$"
    for line in path.read_text().splitlines():
        m = re.match(pattern, line.strip())
        if m and (commented or not m.group(1)):
            out[m.group(2)] = m.group(3)
    return out


def variables_read_by_code() -> set[str]:
    """Upper-case names the package reads: string literals such as "ML_INFERENCE_DEVICE"."""
    names = set()
    for path in SRC.rglob("*.py"):
        names |= set(re.findall(r"[\"']([A-Z][A-Z0-9]*_[A-Z0-9_]+)[\"']", path.read_text()))
    return names


def expand(command: str, env: dict[str, str], instance: str = "btc1m") -> list[str]:
    """What systemd runs: %i, ${VAR} (one word) and $VAR (split on whitespace) expanded."""
    command = command.lstrip("-@:+!").replace("%i", instance)
    words = []
    for word in shlex.split(command):
        if re.fullmatch(r"\$[A-Z_][A-Z0-9_]*", word):
            words += env[word[1:]].split()
            continue
        words.append(re.sub(r"\$\{([A-Z_][A-Z0-9_]*)\}", lambda m: env[m.group(1)], word))
    return words


def unit_env(name: str) -> dict[str, str]:
    env = env_assignments(DEPLOY / "mlsignal.env.example")
    if "@" in name:
        env.update(env_assignments(DEPLOY / "live.env.example"))
    return env


def parse_cli(argv: list[str]):
    """Parse with the real parser; argparse errors (SystemExit) fail the test with the argv."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"the CLI rejects {argv}: exit {e.code}")


@pytest.mark.parametrize("name", sorted(UNIT_FILES))
def test_unit_has_the_required_keys(name):
    unit = read_unit(name)
    assert unit.get("Unit", "Description")
    assert "network-online.target" in unit.get("Unit", "After")
    svc = unit["Service"]
    assert svc["User"] == "mlsignal" and svc["Group"] == "mlsignal"
    assert unit_values(name, "Service", "EnvironmentFile")[0] == ENV_FILE
    assert svc["Restart"] in ("always", "on-failure") and float(svc["RestartSec"]) > 0
    assert svc["KillSignal"] == "SIGTERM" and int(svc["TimeoutStopSec"]) > 0
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
    }.items():
        assert svc[key] == value, key
    assert STATE_DIR in svc["ReadWritePaths"].split() and svc["StateDirectory"] == "mlsignal"
    assert svc["CapabilityBoundingSet"] == ""
    assert "PrivateDevices" not in svc  # the GPU needs /dev/nvidia*
    assert unit.get("Install", "WantedBy") == "multi-user.target"


def test_server_stop_timeout_covers_the_drain():
    from mlsignal.cli.serve import GRACEFUL_S

    svc = read_unit("mlsignal-server.service")["Service"]
    assert int(svc["TimeoutStopSec"]) > GRACEFUL_S
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"  # SIGHUP = hot reload (cli/serve.py)
    assert svc["Restart"] == "always"


@pytest.mark.parametrize(("name", "command"), sorted(UNIT_FILES.items()))
def test_execstart_parses_with_the_real_cli(name, command):
    [line] = unit_values(name, "Service", "ExecStart")
    argv = expand(line, unit_env(name))
    assert argv[0] == "/opt/mlsignal/venv/bin/mlsignal"
    args = parse_cli(argv[1:])
    assert args.command == command
    assert args.bundle == unit_env(name)["MLSIGNAL_BUNDLE"]
    if command == "serve":
        assert args.api_key_file == "/etc/mlsignal/api-keys" and args.host == "127.0.0.1"
        from mlsignal.cli.options import server_config

        server_config(args, (b"k",))  # the limits it would start with are valid
    else:
        assert Path(args.db).parent == Path(STATE_DIR)  # inside ReadWritePaths
        assert args.source and args.symbols and "," in args.symbols


def test_unit_variables_are_defined():
    """Every ${VAR} a unit expands is set (uncommented) in an env file it reads."""
    for name in UNIT_FILES:
        [line] = unit_values(name, "Service", "ExecStart")
        env = unit_env(name)
        for var in re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", line):
            assert var in env, f"{name} uses ${var}, set in no env file"
    template = unit_values("mlsignal-live@.service", "Service", "EnvironmentFile")
    assert template == [ENV_FILE, "/etc/mlsignal/live-%i.env"]


def test_env_example_lists_only_variables_the_code_reads():
    listed = env_assignments(DEPLOY / "mlsignal.env.example", commented=True)
    read = variables_read_by_code()
    unknown = sorted(set(listed) - read)
    assert not unknown, f"mlsignal.env.example lists variables no code reads: {unknown}"
    for needed in (
        "GPU_INFERENCE_API_URL",
        "GPU_INFERENCE_API_KEY",
        "GPU_INFERENCE_TIMEOUT",
        "MLSIGNAL_API_KEYS",
        "ML_INFERENCE_DEVICE",
        "ML_INFERENCE_BACKEND",
        "MLSIGNAL_BUNDLE",
    ):
        assert needed in listed, needed
    # The values given are ones the settings accept.
    from mlsignal.config import Settings

    Settings.from_env(env_assignments(DEPLOY / "mlsignal.env.example"))
    Settings.from_env({k: v for k, v in listed.items() if k.startswith("GPU_")})


def test_live_env_example_defines_only_unit_parameters_or_code_variables():
    [line] = unit_values("mlsignal-live@.service", "Service", "ExecStart")
    used_by_unit = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", line))
    read = variables_read_by_code()
    for var in env_assignments(DEPLOY / "live.env.example", commented=True):
        assert var in used_by_unit or var in read, var


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify(tmp_path):
    """systemd's own parser: unknown keys are typos (except the documented newer ones)."""
    mlsignal = shutil.which("mlsignal") or str(Path(sys.executable).parent / "mlsignal")
    for name in UNIT_FILES:  # the same units, with a program path that exists here
        text = (UNITS / name).read_text().replace("/opt/mlsignal/venv/bin/mlsignal", mlsignal)
        (tmp_path / name).write_text(text)
    (tmp_path / "mlsignal-live@btc1m.service").write_text(
        (tmp_path / "mlsignal-live@.service").read_text()
    )
    for name in ("mlsignal-server.service", "mlsignal-live.service", "mlsignal-live@btc1m.service"):
        run = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(tmp_path / name)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        for line in run.stderr.splitlines():
            m = re.search(r"Unknown key '(\w+)'", line)
            assert m is None or m.group(1) in NEWER_SYSTEMD_KEYS, line
            assert "not executable" not in line and "Failed" not in line, line


def dockerfile_instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / name).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_dockerfile_matches_the_repository(name):
    steps = dockerfile_instructions(name)
    for word, rest in steps:
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _dest = rest.split()
            for src in sources:
                assert (ROOT / src).exists(), f"{name} copies {src}, which does not exist"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    args = dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)
    for extra in args["EXTRAS"].split(","):
        assert extra in extras, f"{name}: no extra [{extra}] in pyproject.toml"
    users = [rest for word, rest in steps if word == "USER"]
    assert users == ["mlsignal"], "the image must run as the non-root user"
    [health] = [rest for word, rest in steps if word == "HEALTHCHECK"]
    from mlsignal.server.auth import PUBLIC_PATHS

    assert "/healthz" in health and "/healthz" in PUBLIC_PATHS  # no key needed for the probe
    [entry] = [json.loads(rest) for word, rest in steps if word == "ENTRYPOINT"]
    [cmd] = [json.loads(rest) for word, rest in steps if word == "CMD"]
    assert entry[0] == "mlsignal"
    parsed = parse_cli(entry[1:] + cmd)
    assert parsed.command == "serve" and parsed.host == "0.0.0.0"
    env_line = " ".join(rest for word, rest in steps if word == "ENV")
    assert f"MLSIGNAL_BUNDLE={parsed.bundle}" in env_line
    assert [rest for word, rest in steps if word == "STOPSIGNAL"] == ["SIGTERM"]


def test_cpu_image_is_torch_free_and_cuda_image_installs_torch_first():
    cpu_extras = [r for w, r in dockerfile_instructions("Dockerfile.cpu") if w == "ARG"]
    assert "EXTRAS=client,server" in cpu_extras
    assert "ML_INFERENCE_BACKEND=onnx" in " ".join(
        r for w, r in dockerfile_instructions("Dockerfile.cpu") if w == "ENV"
    )
    run = " ".join(r for w, r in dockerfile_instructions("Dockerfile.cuda") if w == "RUN")
    torch_at, package_at = run.index("download.pytorch.org/whl/"), run.index('".[${EXTRAS}]"')
    assert torch_at < package_at  # the CUDA build first, so .[torch] keeps it


def test_talib_wheel_bundles_its_c_library():
    """Dockerfile.cpu relies on the ta-lib wheel shipping libta-lib (no apt, no compiler)."""
    import talib

    site = Path(talib.__file__).parent.parent
    assert list(site.glob("ta_lib.libs/libta-lib*.so*")), "ta-lib wheel without its C library"


NGINX = DEPLOY / "nginx" / "mlsignal.conf"


def nginx_directives() -> list[list[str]]:
    """Directives of the nginx file as word lists: quotes kept together, ``#`` comments dropped,
    split at ``;``, ``{`` and ``}`` outside quotes."""
    lexer = shlex.shlex(NGINX.read_text(), posix=True, punctuation_chars=";{}")
    lexer.whitespace_split, lexer.commenters = True, "#"
    out, words = [], []
    for token in lexer:
        if token in (";", "{", "}"):
            if words:
                out.append(words)
            words = []
        else:
            words.append(token)
    assert not words, f"unterminated directive {words}"
    return out


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)?", value)
    assert m, value
    return float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)


def test_nginx_fails_over_inside_the_client_budget():
    from mlsignal.config import Settings

    d = nginx_directives()
    servers = [w for w in d if w[0] == "server" and len(w) > 1 and ":" in w[1]]
    assert len(servers) >= 2
    for s in servers:
        assert any(x.startswith("max_fails=") for x in s)
        assert any(x.startswith("fail_timeout=") for x in s)
    nxt = next(w for w in d if w[0] == "proxy_next_upstream")
    assert {"error", "timeout", "http_502", "http_503"} <= set(nxt[1:])
    assert ["keepalive", "32"] in d and ["proxy_http_version", "1.1"] in d
    assert ["proxy_set_header", "Connection", ""] in d
    assert ["proxy_set_header", "Authorization", "$http_authorization"] in d
    get = {w[0]: w[1] for w in d if len(w) == 2}
    budget = Settings().timeout_s  # GPU_INFERENCE_TIMEOUT default
    assert seconds(get["proxy_next_upstream_timeout"]) < budget
    worst_one_try = seconds(get["proxy_connect_timeout"]) + seconds(get["proxy_read_timeout"])
    assert worst_one_try * int(get["proxy_next_upstream_tries"]) < budget
    assert ["listen", "443", "ssl"] in d and "ssl_certificate" in get


def test_nginx_routes_and_body_limit_match_the_server():
    d = nginx_directives()
    get = {w[0]: w[1] for w in d if len(w) == 2}
    default_mb = build_parser().parse_args(["serve"]).max_body_mb
    assert get["client_max_body_size"] == f"{int(default_mb)}m"
    app = (SRC / "server" / "app.py").read_text()
    assert '"/v1/admin/reload"' in app and '"/metrics"' in app  # the paths the gateway blocks
    locations = [w[1:] for w in d if w[0] == "location"]
    assert ["/v1/admin/"] in locations and ["=", "/metrics"] in locations


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cpu_image_premise_serve_runs_without_torch(tiny_bundle, tmp_path):
    """Dockerfile.cpu installs no torch: `serve` with ONNX Runtime alone answers, and SIGTERM
    drains to exit 0 (what KillSignal/STOPSIGNAL rely on)."""
    port = free_port()
    env = {
        **os.environ,
        "ML_INFERENCE_DEVICE": "cpu",
        "ML_INFERENCE_BACKEND": "onnx",
        "MLSIGNAL_API_KEYS": "test-key",
    }
    argv = ["serve", "--bundle", str(tiny_bundle), "--port", str(port), "--max-batch", "16"]
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI_WITHOUT_TORCH, *argv],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("server not ready in 180 s")
        assert httpx.get(f"{url}/v1/models", timeout=5).status_code == 401  # keys enforced
        doc = httpx.get(
            f"{url}/v1/models", timeout=5, headers={"Authorization": "Bearer test-key"}
        ).json()
        assert doc["backend"] == "onnx" and doc["device"] == "cpu"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
