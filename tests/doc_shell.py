"""The shell commands of the documentation, split and classified for tests/integration/
test_docs_commands.py.

``documented_commands()`` reads the ```bash / ```sh / ```shell / ```console blocks (indented
ones too, e.g. inside a numbered list) of :data:`DOC_FILES`, splits each block into commands
(``\\`` continuations, quotes spanning lines and here-documents kept whole; ``#`` comment
lines dropped; in a ``console`` block only ``$ `` lines are commands) and gives each one the
action of the first :data:`RULES` entry that matches it, else ``run``. Identical commands
(after :data:`SUBSTITUTIONS`) are one :class:`Command` with every place it appears.

Nothing here runs anything; the test does.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Shell code blocks of these files are tested, in this order (a later command may use what an
#: earlier one wrote: the README's `train` writes the bundle its `evaluate` reads).
DOC_FILES: tuple[str, ...] = (
    "README.md",
    "README.zh-CN.md",
    "deploy/README.md",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md")),
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*/README.md")),
)

SHELL_LANGS = frozenset({"bash", "sh", "shell", "console", "zsh"})
_FENCE = re.compile(r"^([ \t]*)```([\w+-]*)[^\n]*$")
#: ``VAR=value``, ``export VAR=value`` or ``VAR=<placeholder>``: a setting, not a command.
_ASSIGNMENT = re.compile(r"^(export\s+)?[A-Z][A-Z0-9_]*=(<[^<>]*>|\S*)$")


@dataclass(frozen=True)
class Rule:
    """Commands matching ``pattern`` (searched in the command without comments) get ``action``.

    ``skip``: not run (``reason`` says why). ``parse``: not run, but ``mlsignal``'s argument
    parser must accept it. ``env``: ``VAR=value`` lines: each variable must be one mlsignal
    reads and the value must pass its settings check. ``serve``: started, must answer
    ``/readyz`` 200, then SIGTERM must stop it with exit 0. ``until-rows``: a live runner,
    started; it must record a bar in its ``--db`` (or exit 0 first), then SIGTERM must stop
    it with exit 0. Anything no rule matches is ``run``: it must exit 0 (or the code its
    comment states, ``# exit N``).
    """

    pattern: str
    action: str
    reason: str


#: The reviewed table: what is not simply run, and why. First match wins. A new command in the
#: docs is run by default; if it cannot run here, it fails the test until a rule says why.
# fmt: off
RULES: tuple[Rule, ...] = (
    # -- not run: they need what CI has not got, or change the host ----------------------------
    Rule(r"^make (run|test)\b", "skip",
         "make targets: `make test` is the suite that runs this test; `make run` builds the "
         "venv and trains the quick preset (minutes) before `mlsignal demo`, which "
         "tests/integration/test_demo.py runs"),
    Rule(r"^(/\S+/)?pip install\b", "skip", "pip install: needs the package index (network)"),
    Rule(r"^docker\b|^cp deploy/compose\.env\.example\b", "skip",
         "docker: needs a Docker daemon; tests/unit/test_compose.py checks the compose file "
         "and builds the images where a daemon answers"),
    Rule(r"^(systemctl|journalctl)\b", "skip", "systemd: the units are checked by "
         "tests/unit/test_deploy.py; nothing here runs systemd"),
    Rule(r"^(useradd|install|chown|chmod)\b|^cp (-a )?(/path/to/bundle|deploy/systemd/)"
         r"|^ln -sfn v\d+ /var/lib/|^python3[.\d]* -m venv /opt/", "skip",
         "host administration as root (a system user, a venv in /opt, /etc, /var/lib, owners)"),
    Rule(r"^rsync\b", "skip", "copies a bundle to another host over ssh"),
    Rule(r"^nvidia-smi\b", "skip", "needs an NVIDIA GPU and its driver (and the kernel log)"),
    Rule(r"^curl\b", "skip",
         "curl to a running server: the servers the docs start are started by this test, "
         "which checks /readyz itself"),
    Rule(r"^tritonserver\b", "skip",
         "Triton Inference Server: a separate install and a long-running service; "
         "tests/unit/test_export_triton.py checks the repository it loads"),
    Rule(r"^freqtrade\b|^MLSIGNAL_BUNDLE=\S+ "
         r"(freqtrade|python examples/freqtrade/run_offline\.py)\b", "skip",
         "freqtrade: `make test` installs it into its own environment (.cache/), and "
         "download-data and trade reach an exchange; tests/integration/test_freqtrade.py runs "
         "the offline backtest (run_offline.py, the same arguments) and a dry run on the "
         "tiny bundle"),
    Rule(r"^mlsignal train --data user_data/", "parse",
         "trains on the exchange's candles that `freqtrade download-data` writes (network)"),
    Rule(r"^mlsignal (train .*--out (artifacts/sp500-1d|real|shuffled)|evaluate --bundle "
         r"(real|shuffled))\b", "parse",
         "trainings of the examples and the study (a minute each on 2 cores, even tiny): the "
         "README's `mlsignal train` and `evaluate` run here; tests/integration/test_training.py "
         "trains with --shuffle-labels and --holdout-bars"),
    Rule(r"--device cuda\b", "parse", "needs CUDA (a GPU training run)"),
    Rule(r"--source ccxt:", "parse", "polls a crypto exchange over the network"),
    Rule(r"\bserve\b.*--engine ray\b", "parse",
         "starts a Ray cluster with GPU replicas or joins an existing one; "
         "tests/integration/test_ray_serve.py runs Ray Serve on a local cluster"),
    Rule(r"^mlsignal bench\b", "parse",
         "a benchmark: minutes of timed load on every path; tests/unit/test_cli.py "
         "(test_bench_smoke) and tests/unit/test_bench_server.py run it small"),
    # -- run, in a special way ------------------------------------------------------------------
    Rule(_ASSIGNMENT.pattern, "env",
         "a setting (an environment file's line or an export), not a command"),
    Rule(r"^mlsignal serve\b", "serve",
         "a server runs until stopped: started on loopback, /readyz must answer, then SIGTERM"),
    Rule(r"^mlsignal live\b", "until-rows",
         "a live runner follows its source until stopped (a full replay of both samples is "
         "9,552 bars, over a minute on 2 cores): it must record bars, then SIGTERM must stop "
         "it cleanly (exit 0)"),
)

#: How a documented command is made to run here, each with why. Applied in order to the text
#: of every command (``{...}`` are filled in by the test's ``Workspace.context``).
SUBSTITUTIONS: tuple[tuple[str, str, str], ...] = (
    (r"/opt/mlsignal/venv/bin/mlsignal\b", "mlsignal",
     "the deployment venv's console script: the mlsignal under test"),
    (r"/opt/mlsignal/venv/bin/python\b", "{python}",
     "the deployment venv's python: the test's own interpreter (this checkout's src)"),
    (r"\[(--[^\[\]]+)\]", r"\1", "optional flags shown in brackets are given"),
    (r"--preset (quick|full)\b", "--preset tiny", "the tests' preset, not minutes of training"),
    (r"/var/lib/mlsignal/bundles/(current|v\d+)\b|/path/to/bundle\b|(?<=--bundle )B\b",
     "{bundle}", "an existing bundle: the one the README's `mlsignal train` wrote "
     "(artifacts/quick, tiny preset, its last 10% of bars held out)"),
    (r"/var/lib/mlsignal/live\.sqlite\b", "live.sqlite",
     "the live runner's database: one written by a short replay (with a quarantined line)"),
    (r"https://(gpu:8000|infer\.internal\.example\.com|10\.0\.0\.[56]:8000)\b", "{server}",
     "a GPU server: `mlsignal serve` of that bundle on loopback, started by the test"),
    (r"--host (10\.0\.0\.5|0\.0\.0\.0)\b", "--host 127.0.0.1", "loopback only"),
    (r"--port 8000\b", "--port {port}", "a free port"),
    (r"--grpc-port 8001\b", "--grpc-port {grpc_port}", "a free port"),
    (r"^python (examples/)", r"{python} {root}/\1",
     "a script of this checkout's examples/, with the test's interpreter"),
    (r"(?<![\w.])/etc/mlsignal/", "etc/mlsignal/", "/etc/mlsignal is a workspace directory"),
    (r"(?<![\w.])/(data|backup)/", r"\1/", "/data, /backup are workspace directories"),
)
# fmt: on
#: Paths that commands use as they are, relative to the working directory: the test's workspace
#: (a tmp_path) holds them. Data files: the built-in samples as CSV (btc = sp500, eth = nasdaq).
WORKSPACE_FILES = (
    "btc.csv",
    "eth.csv",
    "my_bars.csv",
    "recent_bars.csv",
    "data/btc.csv",
    "data/eth.csv",
    "keys.txt",
    "cert.pem",
    "key.pem",
    "etc/mlsignal/",
    "backup/",
)  # fmt: skip


@dataclass
class Command:
    """One distinct command and every place it appears (``file:line``)."""

    text: str  # as the first place has it (continuations, here-documents kept)
    where: list[str]
    action: str
    reason: str
    expect: int = 0
    key: str = field(default="", repr=False)  # the command after substitution, for dedupe

    @property
    def id(self) -> str:
        return self.where[0]

    def bare(self) -> str:
        """The command without comments, here-document bodies or line continuations."""
        return bare(self.text)


def shell_blocks(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line of the first body line, language, body lines)`` of every shell code block,
    with the fence's indentation taken off the body."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[tuple[int, str, list[str]]] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2).lower()
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        if lang in SHELL_LANGS:
            body = [ln[len(indent) :] if ln.startswith(indent) else ln for ln in lines[i + 1 : j]]
            blocks.append((i + 2, lang, body))
        i = j + 1
    return blocks


def split_commands(body: list[str], lang: str) -> list[tuple[int, str]]:
    """``(offset of its first line, text)`` of each command of a block."""
    out: list[tuple[int, str]] = []
    i = 0
    while i < len(body):
        line = body[i]
        start = i
        i += 1
        if lang == "console":
            if not line.startswith("$ "):
                continue
            line = line[2:]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [line]
        if re.match(r"(export\s+)?[A-Z][A-Z0-9_]*=", line) and not line.rstrip().endswith("\\"):
            # a setting (an env file's line: its value is not shell-quoted), or one
            # `VAR=value command` line
            out.append((start, line))
            continue
        heredoc = re.search(r"<<-?\s*(['\"]?)(\w+)\1", strip_comment(line))
        while i < len(body) and (
            parts[-1].rstrip().endswith("\\") or (not heredoc and not _quotes_closed(parts))
        ):
            parts.append(body[i])
            i += 1
        if heredoc:
            while i < len(body):
                parts.append(body[i])
                i += 1
                if parts[-1].strip() == heredoc.group(2):
                    break
        out.append((start, "\n".join(parts)))
    return out


def _quotes_closed(parts: list[str]) -> bool:
    try:
        shlex.split(strip_comment("\n".join(parts)))
    except ValueError:  # No closing quotation
        return False
    return True


def strip_comment(text: str) -> str:
    """``text`` without its ``# comments`` (a ``#`` outside quotes, at a word's start)."""
    out, quote, prev = [], "", " "
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c == "#" and prev in " \t\n":
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        out.append(c)
        prev = c
        i += 1
    return "".join(out)


def bare(text: str) -> str:
    """One line: the command without comments, here-document bodies or continuations."""
    first = text.split("\n")[0]
    if re.search(r"<<-?\s*(['\"]?)\w+\1", strip_comment(first)):
        text = first
    joined = re.sub(r"\\\n", " ", strip_comment(text))
    return " ".join(joined.split())


def expected_exit(text: str) -> int:
    """The exit code a command's comment states (``# exit 2``, ``# exits 3``), else 0."""
    comments = " ".join(re.findall(r"(?:^|\s)#([^\n]*)", text))
    m = re.search(r"\bexits?(?: code)? (\d+)\b", comments)
    return int(m.group(1)) if m else 0


def classify(text: str) -> tuple[str, str]:
    """``(action, reason)`` of the first rule matching the command, else ``("run", "")``."""
    command = bare(text)
    for rule in RULES:
        if re.search(rule.pattern, command):
            return rule.action, rule.reason
    return "run", ""


def substitute(text: str, ctx: dict[str, str]) -> str:
    """The command with :data:`SUBSTITUTIONS` applied and ``{name}`` filled from ``ctx``."""
    for pattern, repl, _why in SUBSTITUTIONS:
        text = re.sub(pattern, repl, text)
    for name, value in ctx.items():
        text = text.replace("{" + name + "}", value)
    return text


#: Placeholder values for dedupe keys (the real ones differ per run).
SYMBOLIC = {"python": "PYTHON", "bundle": "BUNDLE", "server": "SERVER", "port": "PORT",
            "grpc_port": "GRPC_PORT", "root": "ROOT"}  # fmt: skip


def documented_commands(files: tuple[str, ...] = DOC_FILES) -> list[Command]:
    """Every distinct command of the shell blocks of ``files``, in document order."""
    seen: dict[str, Command] = {}
    for name in files:
        for first_line, lang, body in shell_blocks(ROOT / name):
            for offset, text in split_commands(body, lang):
                where = f"{name}:{first_line + offset}"
                key = bare(substitute(text, SYMBOLIC))
                if key in seen:
                    seen[key].where.append(where)
                    continue
                action, reason = classify(text)
                seen[key] = Command(text, [where], action, reason, expected_exit(text), key)
    return list(seen.values())
