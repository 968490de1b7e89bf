"""Endpoint settings of the remote client: URLs, the API key header, TLS verification.

Checked once at construction so that a typo fails at start, not on the first bar.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence

import httpx

from mlsignal import __version__, wire
from mlsignal.errors import ConfigError

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def base_url(raw: str) -> str:
    """A checked base URL without trailing slash; credentials in it are refused."""
    text = str(raw).strip().rstrip("/")
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL:
        raise ConfigError(f"inference server URL {text!r} is not a valid URL") from None
    if url.userinfo:  # not echoed: it holds a password
        raise ConfigError("an inference server URL carries credentials; use the API key setting")
    if url.scheme not in ("http", "https") or not url.host or url.query or url.fragment:
        raise ConfigError(f"inference server URL {text!r} must be http(s)://host[:port][/path]")
    return text


def check_urls(urls: Sequence[str] | str) -> tuple[str, ...]:
    """Comma-separated or listed URLs -> checked, de-duplicated tuple (order kept)."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    out = tuple(dict.fromkeys(base_url(u) for u in items if str(u).strip()))
    if not out:
        raise ConfigError("no inference server URL given (GPU_INFERENCE_API_URL)")
    return out


def check_key(key: str | None) -> str | None:
    """The stripped key (None if empty), or a ConfigError if a header cannot carry it."""
    key = (key or "").strip() or None
    if key is not None and not (key.isascii() and key.isprintable()):
        raise ConfigError("the API key has characters an HTTP header cannot carry")
    return key


def default_headers(key: str | None) -> dict[str, str]:
    """Accept, user agent and the bearer key."""
    headers = {"accept": wire.JSON_TYPE, "user-agent": f"mlsignal/{__version__}"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    return headers


def tls_verify(verify: bool | str | ssl.SSLContext) -> bool | ssl.SSLContext:
    """httpx verify from a bool, an SSLContext or a CA bundle path."""
    if isinstance(verify, bool | ssl.SSLContext):
        return verify
    try:
        return ssl.create_default_context(cafile=str(verify))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"TLS CA bundle {verify!r} cannot be loaded: {e}") from None


def warn_plain_http(urls: Sequence[str], key: str | None) -> None:
    """Warn once per URL when a key would travel over plain http off this machine."""
    for u in urls:
        if key and u.startswith("http://") and httpx.URL(u).host not in LOOPBACK_HOSTS:
            log.warning("the API key goes to %s over plain http; use https", u)
