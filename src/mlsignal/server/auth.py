"""API keys: read from a file or the environment, checked in constant time, never logged."""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Mapping, Sequence

from mlsignal.config import read_key_file
from mlsignal.errors import ConfigError
from mlsignal.server.limits import ASGIApp, Receive, Scope, Send, send_error

KEYS_ENV = "MLSIGNAL_API_KEYS"
#: Paths answered without a key: liveness, readiness and metrics probes.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
UNAUTHORIZED = "missing or invalid API key"
_CHALLENGE = {"www-authenticate": 'Bearer realm="mlsignal"', "connection": "close"}


def load_keys(
    path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None
) -> tuple[bytes, ...]:
    """Keys from ``path`` (one per line; blank lines and ``#`` comments ignored) and from
    ``MLSIGNAL_API_KEYS`` (comma separated). A key file without keys is a :class:`ConfigError`.
    """
    env = os.environ if env is None else env
    keys = [k.strip() for k in env.get(KEYS_ENV, "").split(",") if k.strip()]
    if path is not None:
        keys.extend(read_key_file(path))
    return tuple(dict.fromkeys(k.encode("utf-8") for k in keys))


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only listens on this machine."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, keys: Sequence[bytes], insecure: bool) -> None:
    """Refuse a non-loopback address without keys unless ``insecure``."""
    if not keys and not insecure and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} without API keys: pass --api-key-file or set "
            f"{KEYS_ENV}, or --insecure to allow it"
        )


def presented_key(headers: Mapping[bytes, bytes]) -> bytes | None:
    """The key a request carries, as ``Authorization: Bearer <key>`` or ``X-API-Key``."""
    auth = headers.get(b"authorization")
    if auth is not None:
        scheme, _, value = auth.partition(b" ")
        if scheme.lower() == b"bearer" and value.strip():
            return value.strip()
    key = headers.get(b"x-api-key")
    return key.strip() if key else None


def key_ok(candidate: bytes | None, keys: Sequence[bytes]) -> bool:
    """Constant-time check against every key (no early exit on a match)."""
    if candidate is None:
        return False
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(candidate, key)
    return ok


class AuthMiddleware:
    """Pure ASGI: 401 (and close) for a missing or wrong key on every path but the public
    probes, before the body is read."""

    def __init__(self, app: ASGIApp, keys: Sequence[bytes]) -> None:
        self.app = app
        self.keys = tuple(keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.keys and scope["path"] not in PUBLIC_PATHS:
            headers = dict(scope.get("headers", ()))
            if not key_ok(presented_key(headers), self.keys):
                # closed after the answer: an unauthenticated client holds no connection
                await send_error(scope, send, 401, UNAUTHORIZED, "auth", _CHALLENGE)
                return
        await self.app(scope, receive, send)
