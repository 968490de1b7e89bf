"""API keys at the unit tier: loading, the constant-time check, the bind guard, and the
ASGI middleware in front of a real (minimal) Starlette app."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from mlsignal.errors import ConfigError
from mlsignal.server.auth import (
    KEYS_ENV,
    UNAUTHORIZED,
    AuthMiddleware,
    check_bind,
    is_loopback,
    key_ok,
    load_keys,
    presented_key,
)


class _Client:
    """Requests into the middleware in front of a minimal app, through httpx's ASGI transport."""

    def __init__(self, keys: tuple[bytes, ...]) -> None:
        async def echo(request):
            return PlainTextResponse(f"ok {request.url.path}")

        paths = ["/v1/enhance", "/healthz", "/readyz", "/metrics", "/v2/health/live"]
        app = Starlette(routes=[Route(p, echo, methods=["GET", "POST"]) for p in paths])
        self.transport = httpx.ASGITransport(AuthMiddleware(app, keys))

    def request(self, method: str, path: str, **kw) -> httpx.Response:
        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=self.transport, base_url="http://t") as c:
                return await c.request(method, path, **kw)

        return asyncio.run(go())

    def get(self, path: str, **kw) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return self.request("POST", path, **kw)


def _client(keys: tuple[bytes, ...]) -> _Client:
    return _Client(keys)


def test_keys_from_a_file_and_the_environment(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# trading hosts\n\n  alpha  \nbeta\n# old: gamma\nalpha\n", encoding="utf-8")
    assert load_keys(f, env={}) == (b"alpha", b"beta")
    assert load_keys(f, env={KEYS_ENV: "delta, alpha ,"}) == (b"delta", b"alpha", b"beta")
    assert load_keys(None, env={}) == ()
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="holds no keys"):
        load_keys(empty, env={})
    with pytest.raises(ConfigError, match="cannot read the API key file"):
        load_keys(tmp_path / "missing", env={})


def test_the_key_check_takes_bearer_or_x_api_key():
    keys = (b"alpha", b"beta")
    assert presented_key({b"authorization": b"Bearer beta"}) == b"beta"
    assert presented_key({b"authorization": b"bearer  beta "}) == b"beta"
    assert presented_key({b"authorization": b"Basic YWxwaGE="}) is None
    assert presented_key({b"x-api-key": b" alpha "}) == b"alpha"
    assert key_ok(b"alpha", keys) and key_ok(b"beta", keys)
    assert not key_ok(b"alph", keys) and not key_ok(b"alphaa", keys)
    assert not key_ok(None, keys) and not key_ok(b"alpha", ())


def test_the_middleware_refuses_every_path_but_the_probes():
    client = _client((b"secret",))
    for path in ("/healthz", "/readyz", "/metrics", "/v2/health/live"):
        assert client.get(path).status_code == 200, path
    r = client.post("/v1/enhance")
    assert r.status_code == 401 and r.json() == {"error": UNAUTHORIZED}
    assert r.headers["www-authenticate"] == 'Bearer realm="mlsignal"'
    assert client.post("/v1/enhance", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert "secret" not in r.text
    ok = client.post("/v1/enhance", headers={"Authorization": "Bearer secret"})
    assert ok.status_code == 200 and ok.text == "ok /v1/enhance"
    assert client.post("/v1/enhance", headers={"X-API-Key": "secret"}).status_code == 200


def test_without_keys_everything_passes_and_a_public_bind_needs_keys():
    assert _client(()).post("/v1/enhance").status_code == 200
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("gpu-box.internal")
    check_bind("127.0.0.1", (), insecure=False)
    check_bind("0.0.0.0", (b"k",), insecure=False)
    check_bind("0.0.0.0", (), insecure=True)
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0 without API keys"):
        check_bind("0.0.0.0", (), insecure=False)
