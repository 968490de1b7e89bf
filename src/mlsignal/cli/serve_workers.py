"""``mlsignal serve --workers N``: N server processes behind one listening socket.

One Python process spends about a millisecond of GIL time per request on HTTP, decoding and
preparing, so one process cannot keep a GPU busy. With ``--workers N`` (uvicorn's and
gunicorn's meaning: processes) this process becomes a small supervisor: it binds the
address once, holds no model and never touches CUDA, and starts N worker processes. Each
worker is a complete ``mlsignal serve`` (its own verified, warmed runtime on the same
device, its own batcher and admission limit) accepting connections from the shared socket,
so the kernel hands each new connection to a worker that is waiting in ``accept``.

- SIGTERM/SIGINT: forwarded to every worker; each drains (requests in flight finish) and
  exits; the supervisor exits 0 when all exited 0.
- SIGHUP: forwarded; every worker reloads its bundle (a failed reload keeps the old model).
- A worker killed by a signal (a crash, the OOM killer, ``kill -9``) is started again
  (logged). A worker that exits by itself (a bundle, device or port that cannot be used:
  exit 1 or 2) stops the supervisor with its code: such an error does not go away on a
  restart, so it is not retried forever.

A worker is started as ``python -m mlsignal.cli.serve_workers`` with its arguments in the
environment variable :data:`WORKER_ENV` (JSON) and the listening socket as an inherited
file descriptor.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

log = logging.getLogger("mlsignal.server")

#: The environment variable carrying a worker's arguments and socket.
WORKER_ENV = "MLSIGNAL_SERVE_WORKER"
#: Pending connections the shared socket queues for the workers.
BACKLOG = 4096
_SKIP = frozenset({"func", "settings", "bundle_from_settings"})


def listen(host: str, port: int) -> list[socket.socket]:
    """The shared listening sockets of ``host:port`` (:func:`~mlsignal.cli.sockets.bind`),
    listening and inheritable."""
    from mlsignal.cli.sockets import bind

    socks = bind(host, port)
    for sock in socks:
        sock.listen(BACKLOG)
        sock.set_inheritable(True)
    return socks


def worker_env(args: argparse.Namespace, fds: list[int], index: int) -> str:
    """A worker's JSON: its arguments (plain values only), the sockets' fds, its index."""
    plain = {
        k: v
        for k, v in vars(args).items()
        if k not in _SKIP and (v is None or isinstance(v, str | int | float | bool | list))
    }
    return json.dumps({"fds": fds, "index": index, "args": plain})


class Supervisor:
    """Starts, watches, signals and restarts the worker processes."""

    def __init__(self, args: argparse.Namespace, workers: int) -> None:
        self.args = args
        self.workers = workers
        self.socks = listen(args.host, args.port)
        self.procs: dict[int, subprocess.Popen] = {}
        self.stopping = threading.Event()
        self.code = 0

    def start(self, index: int) -> None:
        """Start worker ``index`` on the shared socket."""
        fds = [sock.fileno() for sock in self.socks]
        env = {**os.environ, WORKER_ENV: worker_env(self.args, fds, index)}
        cmd = [sys.executable, "-m", "mlsignal.cli.serve_workers"]
        proc = subprocess.Popen(cmd, env=env, pass_fds=fds)
        self.procs[index] = proc
        log.info("worker %d started: pid %d", index, proc.pid)

    def signal_all(self, sig: int) -> None:
        """Send ``sig`` to every live worker."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(sig)

    def run(self) -> int:
        """Start every worker and watch them until a stop; returns the exit code."""
        for i in range(self.workers):
            self.start(i)
        scheme = "https" if self.args.ssl_certfile else "http"
        log.info(
            "supervising %d workers on %s://%s:%d (pid %d)",
            self.workers, scheme, self.args.host, self.args.port, os.getpid(),
        )  # fmt: skip
        while not self.stopping.is_set():
            self.stopping.wait(0.2)
            self._check()
        return self._drain()

    def _check(self) -> None:
        for index, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None or self.stopping.is_set():
                continue
            if code >= 0:  # it exited by itself: an error a restart would repeat
                log.error("worker %d exited with %d; stopping every worker", index, code)
                self.code = code or 1
                self.stopping.set()
                return
            sig = signal.Signals(-code).name
            log.error("worker %d (pid %d) was killed (%s); starting it again", index, proc.pid, sig)
            self.start(index)

    def _drain(self) -> int:
        self.signal_all(signal.SIGTERM)
        for index, proc in self.procs.items():
            code = proc.wait()
            if code not in (0, -signal.SIGTERM):
                log.error("worker %d exited with %d", index, code)
                self.code = self.code or code
        for sock in self.socks:
            sock.close()
        log.info("stopped: %d workers drained", len(self.procs))
        return self.code


def supervise(args: argparse.Namespace) -> int:
    """Run ``args.workers`` worker processes until SIGTERM/SIGINT; returns the exit code."""
    from mlsignal.bundle import load_bundle
    from mlsignal.cli.serve import check_serve_args

    check_serve_args(args)  # keys, bind, TLS, limits: one line here, not N tracebacks
    load_bundle(args.bundle)  # a missing or tampered bundle too
    sup = Supervisor(args, args.workers)

    def stop(signum: int, frame: Any) -> None:
        sup.stopping.set()

    def reload(signum: int, frame: Any) -> None:
        log.info("SIGHUP: every worker reloads its bundle")
        sup.signal_all(signal.SIGHUP)

    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, stop),
        signal.SIGINT: signal.signal(signal.SIGINT, stop),
        signal.SIGHUP: signal.signal(signal.SIGHUP, reload),
    }
    try:
        return sup.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_worker() -> int:
    """A worker's main: its arguments and socket from :data:`WORKER_ENV`, then ``serve``."""
    from mlsignal.cli.serve import serve
    from mlsignal.errors import MLSignalError
    from mlsignal.logs import configure_logging

    doc = json.loads(os.environ.pop(WORKER_ENV))
    args = argparse.Namespace(**doc["args"])
    configure_logging(args.log_level, args.log_json)
    socks = [socket.socket(fileno=fd) for fd in doc["fds"]]
    try:
        return serve(args, socks=socks, worker=doc["index"])
    except MLSignalError as e:
        print(f"mlsignal serve: worker {doc['index']}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run_worker())
