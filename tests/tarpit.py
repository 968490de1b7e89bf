"""A tar-pit HTTP server for fault-injection tests: a real process on 127.0.0.1 that
misbehaves at a chosen stage of an HTTP exchange.

Run as ``python tests/tarpit.py --port P --mode MODE [options]``; it prints ``ready PORT``
once listening and one line per connection and per request (``accept``, ``request METHOD
PATH MODE``), which tests read back from its log. Modes, applied per request (read whole
first), so a pooled keep-alive connection sees a change at its next request:

- ``hang``: never answer (the connection stays open until the client closes it).
- ``headers``: send the response head (``Content-Length: 4096``) after ``--delay-ms``, then
  stall: with a delay just under the client's budget, the case that made a client read twice
  its budget.
- ``trickle-headers``: send the response head one byte per ``--byte-ms``.
- ``trickle-body``: the head at once (``Content-Length: 4096``), then the body one byte per
  ``--byte-ms``.
- ``reset``: the head and half the body after ``--delay-ms``, then a TCP reset (RST).
- ``503``: ``503 {"error": "overloaded"}`` with ``Retry-After: 1``, forever (keep-alive).
- ``proxy``: forward the request to ``--upstream`` and relay its answer (a real server).

``--only METHOD`` applies the mode to requests of that method alone and proxies the others
(so a V2 client's metadata reads succeed and its ``POST .../infer`` meets the fault).
``--mode-file F``: when F exists, its contents replace ``--mode`` (read at each request).

:class:`TarpitProcess` runs one from a test. Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

MODES = ("hang", "headers", "trickle-headers", "trickle-body", "reset", "503", "proxy")
BODY_BYTES = 4096
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
OVERLOADED = b'{"error": "overloaded"}'


def log(line: str) -> None:
    """One event per line on stdout (the test's log file)."""
    sys.stdout.write(f"{time.monotonic():.6f} {line}\n")
    sys.stdout.flush()


class Tarpit:
    """The server: one task per connection, one request at a time on it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.upstream = urlsplit(args.upstream) if args.upstream else None

    def mode(self, method: str) -> str:
        """The mode of a request of ``method``."""
        if self.args.only and method != self.args.only:
            return "proxy"
        path = self.args.mode_file
        if path and os.path.exists(path):
            text = Path(path).read_text().strip()
            if text:
                return text
        return self.args.mode

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A connection: requests in turn until the client leaves or a mode stalls it."""
        log("accept")
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    return
                method, path, raw = request
                mode = self.mode(method)
                log(f"request {method} {path} {mode}")
                if mode == "proxy":
                    upstream = upstream or await self.connect_upstream()
                    writer.write(await relay(raw, *upstream))
                    await writer.drain()
                    continue
                if mode == "503":
                    writer.write(answer(503, OVERLOADED, b"retry-after: 1\r\n"))
                    await writer.drain()
                    continue
                await self.misbehave(mode, reader, writer)
                return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            for w in (writer, upstream[1] if upstream else None):
                if w is not None:
                    w.close()

    async def misbehave(
        self, mode: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """The faulty modes; each ends by stalling until the client closes, or a reset."""
        delay_s, byte_s = self.args.delay_ms / 1e3, self.args.byte_ms / 1e3
        head = HEAD % BODY_BYTES
        if mode == "headers":
            await asyncio.sleep(delay_s)
            writer.write(head)
        elif mode == "trickle-headers":
            for i in range(len(head) - 1):  # never the last byte: the head never ends
                writer.write(head[i : i + 1])
                await writer.drain()
                await asyncio.sleep(byte_s)
        elif mode == "trickle-body":
            writer.write(head)
            for _ in range(BODY_BYTES - 1):
                await writer.drain()
                await asyncio.sleep(byte_s)
                writer.write(b" ")
        elif mode == "reset":
            await asyncio.sleep(delay_s)
            writer.write(head + b" " * (BODY_BYTES // 2))
            await writer.drain()
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # close with SO_LINGER 0: the peer gets an RST
            return
        elif mode != "hang":
            raise SystemExit(f"unknown mode {mode!r}")
        await writer.drain()
        while await reader.read(65536):  # stall: hold the connection until the client goes
            pass

    async def connect_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the upstream server."""
        if self.upstream is None:
            raise SystemExit("mode proxy needs --upstream")
        return await asyncio.open_connection(self.upstream.hostname, self.upstream.port)


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes] | None:
    """``(method, path, raw bytes)`` of the next request, or None at the end of the stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    method, path = head.split(b" ", 2)[:2]
    body = await reader.readexactly(content_length(head))
    return method.decode(), path.decode(), head + body


async def relay(raw: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Send ``raw`` upstream; the whole answer (content-length or chunked framing)."""
    writer.write(raw)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head.lower():
        return head + await reader.readexactly(content_length(head))
    out = [head]
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        out += [size_line, await reader.readexactly(size + 2)]
        if size == 0:
            return b"".join(out)


def content_length(head: bytes) -> int:
    """The ``Content-Length`` of a message head (0 without one)."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def answer(status: int, body: bytes, extra: bytes = b"") -> bytes:
    """A whole response with a JSON body."""
    return (
        b"HTTP/1.1 %d Error\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
        % (status, len(body), extra, body)
    )


async def main(args: argparse.Namespace) -> None:
    tarpit = Tarpit(args)
    server = await asyncio.start_server(tarpit.serve, "127.0.0.1", args.port, backlog=512)
    log(f"ready {server.sockets[0].getsockname()[1]}")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--mode", choices=MODES, default="hang")
    p.add_argument("--mode-file", default=None)
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--byte-ms", type=float, default=100.0)
    p.add_argument("--upstream", default=None, help="http://host:port of a real server")
    p.add_argument("--only", default=None, help="apply the mode to this method only")
    return p.parse_args(argv)


class TarpitProcess:
    """One tar-pit process for a test: ``start()`` waits for ``ready``; ``close()`` ends it.

    ``mode`` and the options are those of the command line (``delay_ms=2900`` ->
    ``--delay-ms 2900``); :meth:`set_mode` switches a running one through its mode file.
    """

    def __init__(self, log_dir: Path, mode: str, **options: object) -> None:
        self.mode_file = log_dir / f"tarpit-{time.monotonic_ns()}.mode"
        self.log_path = self.mode_file.with_suffix(".log")
        self.args = [sys.executable, __file__, "--mode", mode, "--mode-file", str(self.mode_file)]
        for name, value in options.items():
            self.args += [f"--{name.replace('_', '-')}", str(value)]
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout_s: float = 30.0) -> TarpitProcess:
        """Start it and wait until it listens."""
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            for line in self.lines():
                if line.startswith("ready "):
                    self.url = f"http://127.0.0.1:{line.split()[1]}"
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"tarpit exited {self.proc.returncode}: {self.output()}")
            time.sleep(0.02)
        raise TimeoutError(f"tarpit not ready after {timeout_s} s: {self.output()}")

    def set_mode(self, mode: str) -> None:
        """Switch the mode of the requests that arrive from now on."""
        self.mode_file.write_text(mode)

    def output(self) -> str:
        """Everything it printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def lines(self) -> list[str]:
        """Its event lines, without the timestamps."""
        return [line.split(" ", 1)[1] for line in self.output().splitlines() if " " in line]

    def count(self, prefix: str) -> int:
        """How many event lines start with ``prefix`` (``accept``, ``request GET``...)."""
        return sum(line.startswith(prefix) for line in self.lines())

    def close(self) -> None:
        """Kill the process; close its log."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if hasattr(self, "_log"):
            self._log.close()


if __name__ == "__main__":
    asyncio.run(main(parse()))
