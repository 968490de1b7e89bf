"""The connection layer's limits: the registry, the answers, the config and the flags.

The protocol itself is tested against real server processes
(tests/integration/test_server_limits.py); here are the parts that need no socket.
"""

from __future__ import annotations

import logging

import pytest

from mlsignal.errors import ConfigError
from mlsignal.server.protocol import (
    HEADER_TIMEOUT,
    TOO_MANY,
    TOO_MANY_FROM_CLIENT,
    ConnectionLimits,
    client_key,
    response_bytes,
)
from mlsignal.server.state import ServerConfig


def test_total_and_per_client_caps_admit_and_release():
    limits = ConnectionLimits(max_connections=3, max_connections_per_client=2)
    assert limits.admit("10.0.0.1") is None and limits.admit("10.0.0.1") is None
    assert limits.admit("10.0.0.1") is TOO_MANY_FROM_CLIENT
    assert limits.admit("10.0.0.2") is None
    assert limits.admit("10.0.0.3") is TOO_MANY  # 3 open: the total first
    assert (limits.open, limits.by_client) == (3, {"10.0.0.1": 2, "10.0.0.2": 1})
    limits.release("10.0.0.1")
    limits.release("10.0.0.2")
    assert (limits.open, limits.by_client) == (1, {"10.0.0.1": 1})  # no empty entries kept
    assert limits.admit("10.0.0.1") is None


def test_no_per_client_cap_and_unix_sockets():
    limits = ConnectionLimits(max_connections=5, max_connections_per_client=0)
    assert all(limits.admit("10.0.0.1") is None for _ in range(5))
    assert limits.by_client == {} and limits.admit(None) is TOO_MANY
    capped = ConnectionLimits(max_connections_per_client=1)
    assert capped.admit(None) is None and capped.admit(None) is None  # no address: total only


def test_client_key_counts_an_ipv6_host_by_its_64():
    assert client_key(("192.0.2.7", 5000)) == "192.0.2.7"
    assert client_key(("::ffff:192.0.2.7", 5000)) == "192.0.2.7"
    a = client_key(("2001:db8:1:2:aaaa::1", 5000))
    assert a == client_key(("2001:db8:1:2:ffff::9", 1)) == "2001:db8:1:2::/64"
    assert client_key(("2001:db8:1:3::1", 1)) != a
    assert client_key(("fe80::1%eth0", 1)) == "fe80::/64"
    assert client_key(None) is None


def test_answers_are_complete_json_and_close():
    raw = response_bytes(TOO_MANY)
    head, body = raw.split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in head
    assert b"connection: close" in head and b"content-length: %d" % len(body) in head
    assert body == b'{"error":"too many connections; retry later"}'
    assert b"retry-after" not in response_bytes(HEADER_TIMEOUT)


def test_refusals_are_counted_always_and_logged_once_a_minute(caplog):
    now = [100.0]
    seen: list[str] = []
    limits = ConnectionLimits(on_event=seen.append, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="mlsignal.server"):
        for _ in range(5):
            limits.note(HEADER_TIMEOUT)
        now[0] += 61
        limits.note(HEADER_TIMEOUT)
    assert seen == ["header_timeout"] * 6 and limits.events["header_timeout"] == 6
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "5 since the last line" in lines[1]


def test_server_config_checks_the_connection_limits():
    c = ServerConfig()
    assert (c.max_header_bytes, c.max_header_line_bytes, c.max_headers) == (32768, 8192, 100)
    assert (c.header_timeout_s, c.body_timeout_s, c.keep_alive_s) == (10.0, 30.0, 5.0)
    assert (c.max_connections, c.max_connections_per_client) == (1024, 256)
    cases = [
        ({"max_header_bytes": 0}, r"max_header_bytes \(--max-header-kb\) must be a whole"),
        ({"max_headers": 0}, r"max_headers \(--max-headers\) must be a whole number >= 1"),
        ({"max_connections": 1.5}, r"max_connections \(--max-connections\) must be a whole"),
        ({"max_connections_per_client": -1}, r"\(--max-connections-per-client\) .* >= 0"),
        ({"header_timeout_s": 0}, r"header_timeout_s \(--header-timeout-s\) must be a positive"),
        ({"body_timeout_s": float("inf")}, r"body_timeout_s \(--body-timeout-s\)"),
        ({"keep_alive_s": float("nan")}, r"keep_alive_s \(--keep-alive-s\)"),
        ({"keep_alive_s": True}, r"keep_alive_s \(--keep-alive-s\)"),
        ({"max_header_line_bytes": 40000}, r"\(--max-header-line-kb\) must be <= "),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            ServerConfig(**kwargs)
    assert ServerConfig(max_connections_per_client=0).max_connections_per_client == 0


def test_serve_flags_reach_the_server_config(capsys):
    from mlsignal.cli.main import build_parser, main
    from mlsignal.cli.options import server_config

    argv = ["serve", "--max-header-kb", "64", "--max-header-line-kb", "16", "--max-headers", "50",
            "--header-timeout-s", "2.5", "--body-timeout-s", "7", "--keep-alive-s", "1",
            "--max-connections", "10", "--max-connections-per-client", "0"]  # fmt: skip
    c = server_config(build_parser().parse_args(argv), ())
    assert (c.max_header_bytes, c.max_header_line_bytes, c.max_headers) == (65536, 16384, 50)
    assert (c.header_timeout_s, c.body_timeout_s, c.keep_alive_s) == (2.5, 7.0, 1.0)
    assert (c.max_connections, c.max_connections_per_client) == (10, 0)
    defaults = server_config(build_parser().parse_args(["serve"]), ())
    assert defaults == ServerConfig()
    assert main(["serve", "--max-header-kb", "0"]) == 2  # before anything loads
    assert "--max-header-kb must be a whole number >= 1, got 0" in capsys.readouterr().err
    assert main(["serve", "--header-timeout-s", "-1"]) == 2
    assert "header_timeout_s (--header-timeout-s) must be a positive" in capsys.readouterr().err
