"""Server subprocesses for the benchmarks: start on a free loopback port, wait, stop.

Each server runs in its own process group (it may fork workers, as LitServe does), so
:meth:`ServerProc.stop` ends the whole group it started and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from mlsignal.errors import MLSignalError

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class ServerProc:
    """One server command line as a child process, output captured to a temporary file.

    Args:
        name: what to call it in messages (``mlsignal serve``, ``litserve``).
        args: the command line; it must listen on ``LOOPBACK:port``.
        port: the port it listens on.
        ready_path: a GET path that answers 200 once the server can take work.
        env: extra environment variables.
    """

    def __init__(
        self,
        name: str,
        args: list[str],
        port: int,
        ready_path: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name, self.args, self.port, self.ready_path = name, args, port, ready_path
        self.url = f"http://{LOOPBACK}:{port}"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None
        self.started_at = 0.0
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in stop)
            prefix=f"mlsignal-bench-{port}-", suffix=".log", delete=False
        )
        self.log_path = Path(self._log.name)

    def start(self, timeout_s: float = 120.0) -> ServerProc:
        """Start and wait until ``ready_path`` answers 200; on failure stop it and raise."""
        t0 = self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t0
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(trust_env=False, timeout=1.0) as http:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise MLSignalError(
                        f"{self.name} exited {self.proc.returncode} before it was ready:\n"
                        f"{self.output_tail()}"
                    )
                try:
                    if http.get(self.url + self.ready_path).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        raise MLSignalError(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.output_tail()}")

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM to its process group, SIGKILL past ``timeout_s``; the exit code."""
        code = None
        if self.proc is not None:
            code = self._end_group(timeout_s)
        if not self._log.closed:
            self._log.close()
        return code

    def _end_group(self, timeout_s: float) -> int:
        assert self.proc is not None
        pgid = self.proc.pid  # start_new_session: the child leads its own group
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the leader shuts down and reaps its workers
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._signal_group(pgid, signal.SIGKILL)
            code = self.proc.wait(timeout=10)
        self._signal_group(pgid, signal.SIGKILL)  # workers the leader left behind
        return code

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    def output_tail(self, chars: int = 4000) -> str:
        """The last ``chars`` of its captured output."""
        if not self._log.closed:
            self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def cleanup(self) -> None:
        """Stop it if needed and delete the log file."""
        self.stop()
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> ServerProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
