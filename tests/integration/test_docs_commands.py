"""Every shell command of the README (both languages), deploy/README.md and docs/*.md works as
written, on a tiny-preset bundle, without a GPU, the network or root.

The commands come from tests/doc_shell.py: its ``RULES`` table is the reviewed list of what
is not simply run and why (skipped: make, pip, docker, systemd, root, curl, a GPU, Triton;
argument-checked only: CUDA training, an exchange, Ray, the benchmark; started and stopped:
servers and live runners); anything else is run and must exit 0. Its ``SUBSTITUTIONS`` say
what changes so that a command runs here: ``--preset quick`` is ``--preset tiny``; an
existing bundle (``B``, ``/var/lib/mlsignal/bundles/current``) is the one the README's
``mlsignal train`` wrote (``artifacts/quick``: its last 10% of bars held out, so ``evaluate``
has bars to score); remote servers are a loopback ``mlsignal serve`` of it; ``/etc/mlsignal``,
``/data``, ``/backup`` are workspace directories. Output paths (``artifacts/quick``,
``reports/quick``, ``R``, ``model_repository``, ``signals.db``) stay as written, relative to
the workspace, a tmp_path every command runs in, in document order: the README's ``train``
writes the bundle that its ``evaluate``, ``live`` and ``serve``, and scaling.md's
``export-triton``, use.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shlex
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from doc_shell import (
    DOC_FILES,
    ROOT,
    RULES,
    WORKSPACE_FILES,
    Command,
    bare,
    documented_commands,
    substitute,
)
from server_process import free_port

COMMANDS = documented_commands()
RUNNABLE = [c for c in COMMANDS if c.action in ("run", "serve", "until-rows")]
SECRET = "0123456789abcdef" * 4
#: Tools that a documented command may need and a CI image may lack: missing, the command is
#: skipped with that reason (any other missing program fails: classify it in RULES).
OPTIONAL_TOOLS = ("openssl", "sqlite3", "jq")
#: Extra checks of a command's output, with why.
OUTPUT_CHECKS: tuple[tuple[str, str, str], ...] = (
    (r"^mlsignal enhance .*--remote", '"source": "remote"',
     "the loopback server answered (not the local fallback)"),
)  # fmt: skip


def _ids(command: Command) -> str:
    return command.id


# -- what the table and the extraction must hold (fast: nothing runs) ---------------------------


def test_every_doc_file_has_its_commands_found():
    found = {w.split(":")[0] for c in COMMANDS for w in c.where}
    for name in ("README.md", "README.zh-CN.md", "deploy/README.md", "docs/DEPLOY.md"):
        assert name in found, f"no shell command found in {name}: is the extraction broken?"
    assert set(DOC_FILES) >= found
    actions = {c.action for c in COMMANDS}
    assert actions >= {"run", "skip", "parse", "env", "serve", "until-rows"}, actions


def test_every_rule_still_matches_a_command():
    """A rule nothing matches is stale: remove it (the table stays a reviewed list)."""
    for rule in RULES:
        hits = [c for c in COMMANDS if re.search(rule.pattern, c.bare())]
        assert hits, f"no documented command matches rule {rule.pattern!r} ({rule.reason})"


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.action == "parse"], ids=_ids)
def test_commands_not_run_are_accepted_by_the_argument_parser(command, capsys):
    from mlsignal.cli.main import build_parser

    argv = shlex.split(command.bare())
    while argv and re.match(r"[A-Z][A-Z0-9_]*=", argv[0]):  # VAR=value before the command
        argv.pop(0)
    assert argv[0] == "mlsignal", command.text
    try:
        build_parser().parse_args(argv[1:])
    except SystemExit as e:
        pytest.fail(f"{command.where}: {command.bare()}\n{capsys.readouterr().err}\nexit {e}")


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.action == "env"], ids=_ids)
def test_documented_settings_are_ones_mlsignal_reads(command):
    from mlsignal.config import Settings

    name, _, value = re.sub(r"^export\s+", "", command.bare()).partition("=")
    quoted = f'"{name}"'
    sources = (ROOT / "src" / "mlsignal").rglob("*.py")
    assert any(quoted in p.read_text(encoding="utf-8") for p in sources), (
        f"{command.where}: mlsignal reads no setting {name}"
    )
    Settings.from_env({name: value})  # a bad value raises ConfigError


# -- running them -------------------------------------------------------------------------------


class Workspace:
    """The directory the commands run in, with the files and servers they need."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bundle = path / "artifacts" / "quick"  # the README's `mlsignal train --out`
        self.server = None  # the loopback GPU server stand-in, on first need
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("GPU_INFERENCE_", "MLSIGNAL_"))  # the docs' commands decide
        }
        bin_dir = path / "bin"
        bin_dir.mkdir()
        shim = bin_dir / "mlsignal"  # the console script, on this checkout's src
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m mlsignal.cli.main "$@"\n')
        shim.chmod(0o755)
        self.env["PATH"] = f"{bin_dir}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env.setdefault("MPLBACKEND", "Agg")
        self._files()

    def _files(self) -> None:
        from mlsignal.data import load_sample

        p = self.path
        for d in ("data", "etc/mlsignal", "backup"):
            (p / d).mkdir(parents=True)
        sp500, nasdaq = load_sample("sp500"), load_sample("nasdaq")
        for name, bars in {
            "btc.csv": sp500, "eth.csv": nasdaq, "my_bars.csv": sp500,
            "recent_bars.csv": sp500.iloc[-300:], "data/btc.csv": sp500,
            "data/eth.csv": nasdaq,
        }.items():  # fmt: skip
            bars.to_csv(p / name, index_label="timestamp")
        (p / "keys.txt").write_text(SECRET + "\n")
        trustme = pytest.importorskip("trustme")
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        ca.cert_pem.write_to_path(str(p / "ca.pem"))
        cert.private_key_and_cert_chain_pem.write_to_path(str(p / "cert.pem"))
        cert.private_key_pem.write_to_path(str(p / "key.pem"))
        missing = [f for f in WORKSPACE_FILES if not (p / f).exists()]
        assert not missing, f"doc_shell.WORKSPACE_FILES not made: {missing}"

    def trained(self) -> None:
        """The README's `mlsignal train` has written ``artifacts/quick`` (run it if a test
        was selected alone)."""
        if (self.bundle / "manifest.json").exists():
            return
        train = [
            c for c in RUNNABLE if re.match(r"mlsignal train .*--out artifacts/quick\b", c.bare())
        ]
        assert train, "no documented `mlsignal train ... --out artifacts/quick` writes the bundle"
        proc = self.run(substitute(train[0].text, {}))
        assert proc.returncode == 0, f"{train[0].where}: {proc.stderr[-3000:]}"

    def context(self, command: str) -> dict[str, str]:
        uses = "{bundle}" in substitute(command, {}) or "artifacts/quick" in command
        if uses and not bare(command).startswith("mlsignal train"):
            self.trained()
        ctx = {"python": sys.executable, "bundle": str(self.bundle), "port": str(free_port()),
               "grpc_port": str(free_port()), "root": str(ROOT)}  # fmt: skip
        if "{server}" in substitute(command, {}):
            ctx["server"] = self.remote_server()
        return ctx

    def remote_server(self) -> str:
        if self.server is None:
            from server_process import ServerProcess

            self.server = ServerProcess(self.bundle, log_dir=self.path).start(timeout_s=180)
        return self.server.url

    def live_db(self) -> None:
        """live.sqlite: what a live runner recorded, with one quarantined line."""
        if (self.path / "live.sqlite").exists():
            return
        self.trained()
        from mlsignal.data import load_sample

        lines = load_sample("sp500").iloc[-300:].to_csv(index_label="timestamp").splitlines()
        lines.insert(280, "2018-12-01,abc,1,1,1,1")  # not a bar: quarantined, the run goes on
        (self.path / "data" / "live.csv").write_text("\n".join(lines) + "\n")
        self.run(f"mlsignal live --bundle {self.bundle} --source replay:data/live.csv "
                 "--db live.sqlite", timeout_s=300).check_returncode()  # fmt: skip

    def run(self, text: str, timeout_s: float = 1800) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-o", "pipefail", "-c", text],
            cwd=self.path, env=self.env, capture_output=True, text=True, timeout=timeout_s,
        )  # fmt: skip

    def popen(self, text: str, log: Path) -> subprocess.Popen:
        with log.open("wb") as out:
            return subprocess.Popen(
                ["bash", "-c", f"exec {text}"], cwd=self.path, env=self.env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("docs"))
    yield ws
    ws.close()


@pytest.mark.slow
@pytest.mark.parametrize("command", RUNNABLE, ids=_ids)
def test_documented_command(command: Command, workspace: Workspace):
    text = substitute(command.text, workspace.context(command.text))
    for tool in OPTIONAL_TOOLS:
        if re.search(rf"(^|[|;&]\s*){tool}\b", bare(text)) and shutil.which(tool) is None:
            pytest.skip(f"needs {tool}, which is not installed")
    if "live.sqlite" in text:
        workspace.live_db()
    where = ", ".join(command.where)
    if command.action == "serve":
        _serve(text, workspace, where)
    elif command.action == "until-rows":
        _until_rows(text, workspace, where)
    else:
        proc = workspace.run(text)
        said = (
            f"{where}: {bare(text)}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n"
            + (proc.stderr[-3000:])
        )
        assert proc.returncode == command.expect, said
        assert "Traceback" not in proc.stderr, said
        for pattern, expected, why in OUTPUT_CHECKS:
            if re.search(pattern, bare(command.text)):
                assert expected in proc.stdout, f"{why}\n{said}"


def _serve(text: str, ws: Workspace, where: str) -> None:
    """Start the server, wait for /readyz 200, stop it with SIGTERM: exit 0."""
    if "--port" not in text:
        text += f" --port {free_port()}"
    port = re.search(r"--port (\d+)", text).group(1)
    https = "--ssl-certfile" in text
    url = f"{'https' if https else 'http'}://127.0.0.1:{port}/readyz"
    verify = ssl.create_default_context(cafile=str(ws.path / "ca.pem")) if https else True
    log = ws.path / f"serve-{port}.log"
    proc = ws.popen(text, log)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, f"{where}: exited {proc.returncode}\n{log.read_text()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2.0, verify=verify).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"{where}: not ready\n{log.read_text()}"
            time.sleep(0.25)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, f"{where}: SIGTERM\n{log.read_text()}"
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert "Traceback" not in log.read_text(), log.read_text()


def _until_rows(text: str, ws: Workspace, where: str) -> None:
    """Start a live runner; once it has recorded a bar in its --db, SIGTERM: exit 0."""
    m = re.search(r"--db (\S+)", text)
    db = ws.path / (m.group(1) if m else importlib.import_module("mlsignal.cli.live").DEFAULT_DB)
    log = ws.path / f"live-{time.monotonic_ns()}.log"
    proc = ws.popen(text, log)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and _rows(db) == 0:
            assert time.monotonic() < deadline, f"{where}: no bar recorded\n{log.read_text()}"
            time.sleep(0.5)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    out = log.read_text()
    assert code == 0 and "Traceback" not in out, f"{where}: exit {code}\n{out}"
    assert _rows(db) > 0, f"{where}: nothing recorded\n{out}"


def _rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return con.execute("SELECT count(*) FROM signals").fetchone()[0]
    except sqlite3.Error:  # not created yet, or locked for a moment
        return 0
