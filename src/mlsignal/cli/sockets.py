"""The server's address, checked and bound before anything slow runs.

``mlsignal serve`` checks its ports (:func:`check_port`) with its other arguments, then binds
its address (:func:`bind`) before the model loads: a port out of range or already in use is a
one-line error and exit 2 in well under a second, never a silent hang or a "serving ..." line
followed by an exit. The sockets are bound but not yet listening (a connection meanwhile is
refused, so a client fails over at once); the server starts listening on them when it is
ready.
"""

from __future__ import annotations

import errno
import socket

from mlsignal.errors import ConfigError

#: The highest TCP port.
MAX_PORT = 65535


def check_port(port: object, flag: str = "--port") -> int:
    """``port`` as an int in 1..65535, or a :class:`ConfigError` naming ``flag``."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= MAX_PORT:
        raise ConfigError(f"{flag} must be a TCP port in 1..{MAX_PORT}, got {port!r}")
    return port


def bind(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to every address ``host`` resolves to on ``port`` (as asyncio's
    ``create_server`` would bind them), not yet listening.

    Raises :class:`ConfigError` when ``host`` does not resolve or an address cannot be bound
    (in use, not ours, no permission); no socket is left open then.
    """
    check_port(port)
    try:
        infos = socket.getaddrinfo(
            host.strip("[]") or None,
            port,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )
    except socket.gaierror as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as e:
        for sock in sockets:
            sock.close()
        reason = e.strerror or str(e)
        hint = "; another server is listening there" if e.errno == errno.EADDRINUSE else ""
        raise ConfigError(f"cannot listen on {host}:{port}: {reason}{hint}") from None
    return sockets
