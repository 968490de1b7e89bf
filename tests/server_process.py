"""Real `mlsignal serve` processes on 127.0.0.1 for integration tests.

``ServerProcess(bundle, *extra_args, port=None, env=None, https=False)`` runs
``python -m mlsignal.cli.main serve --bundle B --port P *extra_args``; ``start()`` waits for
``/readyz`` 200. With ``https=True`` the URL is https and readiness is checked against
``ca_path`` (set it, or ``env["MLSIGNAL_TEST_CA"]``, to the PEM of the CA that signed the
server's certificate; the cert/key options go in ``extra_args``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

CA_ENV = "MLSIGNAL_TEST_CA"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """One `mlsignal serve` child process; output captured to a file."""

    def __init__(
        self,
        bundle: Path,
        *extra_args: str,
        port: int | None = None,
        env: dict[str, str] | None = None,
        https: bool = False,
        log_dir: Path | None = None,
    ) -> None:
        self.bundle = Path(bundle)
        self.extra_args = extra_args
        self.port = port or free_port()
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.https = https
        self.ca_path: str | None = self.env.get(CA_ENV)
        self.url = f"{'https' if https else 'http'}://127.0.0.1:{self.port}"
        log_dir = log_dir or Path(os.environ.get("TMPDIR", "/tmp"))
        self.log_path = log_dir / f"server-{self.port}-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def args(self) -> list[str]:
        """The command line."""
        return [
            sys.executable, "-m", "mlsignal.cli.main", "serve",
            "--bundle", str(self.bundle), "--port", str(self.port), *self.extra_args,
        ]  # fmt: skip

    def start(self, wait_ready: bool = True, timeout_s: float = 60.0) -> ServerProcess:
        """Start the process; with ``wait_ready``, wait for ``/readyz`` 200 or fail."""
        self._log = self.log_path.open("wb")
        # its own process group: kill() ends a supervisor's worker processes with it
        self.proc = subprocess.Popen(
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        if wait_ready:
            self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Poll ``/readyz`` until 200; raise with the server's output if it never comes."""
        verify = ssl.create_default_context(cafile=self.ca_path) if self.ca_path else True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0, verify=verify).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout_s} s:\n{self.output()}")

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM, wait up to ``timeout_s``, return the exit code (SIGKILL past it)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.resume()
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def wait(self, timeout_s: float = 20.0) -> int:
        """Wait for the process to exit on its own; its exit code."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        """SIGKILL to the server and any worker processes it started (a crashed server)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP (a hung server: the kernel still accepts connections)."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT."""
        self.signal(signal.SIGCONT)

    def signal(self, sig: int) -> None:
        """Send ``sig`` if the process still runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        """Captured stdout + stderr so far."""
        if hasattr(self, "_log") and not self._log.closed:
            self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        """Resume and kill if still running; close the log file."""
        self.resume()
        self.kill()
        if hasattr(self, "_log"):
            self._log.close()
