"""Command-line constants and the options several subcommands share.

Imported by ``cli/main`` and the command modules (serve, serve_ray, doctor, ...), which never
import each other or ``cli/main``. Cheap to import: nothing heavy at module level.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import TYPE_CHECKING

from mlsignal.config import DEFAULT_MAX_WAIT_MS
from mlsignal.errors import ConfigError

if TYPE_CHECKING:
    from mlsignal.config import Settings
    from mlsignal.server import ServerConfig

#: The bundle a command uses when neither ``--bundle`` nor ``MLSIGNAL_BUNDLE`` names one.
DEFAULT_BUNDLE = "artifacts/quick"
#: The sample data sets ``train`` and ``demo`` use when none are given.
DEFAULT_DATA = "sp500,nasdaq"
BUNDLE_HELP = f"bundle directory (default: $MLSIGNAL_BUNDLE, else {DEFAULT_BUNDLE})"


def add_bundle_option(p: argparse.ArgumentParser, help: str = BUNDLE_HELP) -> None:
    """``--bundle``; when it is not given, :func:`resolve_bundle` fills in the default."""
    p.add_argument("--bundle", help=help)
    p.set_defaults(bundle_from_settings=True)


def cli_settings(args: argparse.Namespace) -> Settings:
    """The one :class:`~mlsignal.config.Settings` of this command run, read from the
    environment on first use and kept on ``args`` (a bad value: :class:`ConfigError`)."""
    settings = getattr(args, "settings", None)
    if settings is None:
        from mlsignal.config import Settings

        settings = Settings.from_env()
        if getattr(args, "allow_timeframe_mismatch", False):
            settings = dataclasses.replace(settings, allow_timeframe_mismatch=True)
        args.settings = settings
    return settings


def add_timeframe_option(p: argparse.ArgumentParser) -> None:
    """``--allow-timeframe-mismatch`` (into :func:`cli_settings`)."""
    p.add_argument(
        "--allow-timeframe-mismatch",
        action="store_true",
        help="score bars whose interval differs from the one the bundle was trained on "
        "(default: refused, unless $ML_ALLOW_TIMEFRAME_MISMATCH=1)",
    )


def resolve_bundle(args: argparse.Namespace) -> None:
    """Fill in ``args.bundle`` of a command with :func:`add_bundle_option`: ``--bundle``,
    else ``MLSIGNAL_BUNDLE`` (``Settings.bundle``), else :data:`DEFAULT_BUNDLE`."""
    if getattr(args, "bundle_from_settings", False) and args.bundle is None:
        args.bundle = cli_settings(args).bundle or DEFAULT_BUNDLE


def add_enhancer_options(p: argparse.ArgumentParser) -> None:
    """``--device --backend --remote --timeout --accept-version-mismatch --cacert``: what
    ``MLSignalEnhancer`` takes, with the environment variables as defaults."""
    p.add_argument(
        "--device", help="auto, cpu, cuda or cuda:N (default: $ML_INFERENCE_DEVICE or auto)"
    )
    p.add_argument("--backend", help="torch, onnx or auto (default: $ML_INFERENCE_BACKEND or auto)")
    p.add_argument(
        "--remote",
        action="append",
        metavar="URL",
        help="inference server URL; repeat for fail-over (default: $GPU_INFERENCE_API_URL)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        help="remote budget in seconds (default: $GPU_INFERENCE_TIMEOUT or 3)",
    )
    p.add_argument(
        "--accept-version-mismatch",
        action="store_true",
        help="use a server whose model differs from the local bundle",
    )
    p.add_argument("--cacert", help="CA bundle for https servers with a private CA")
    add_timeframe_option(p)


def add_server_limit_options(p: argparse.ArgumentParser) -> None:
    """``--max-batch --max-wait-ms --max-queue --max-symbols --max-bars --max-body-mb
    --workers --threads --max-inflight --request-timeout-ms`` and the connection limits
    (:func:`add_connection_limit_options`): the server's processes, limits and batching
    (:func:`server_config` reads them)."""
    p.add_argument(
        "--max-batch",
        type=int,
        default=256,
        help="most windows in one forward pass (default: %(default)s)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=DEFAULT_MAX_WAIT_MS,
        help="longest wait to fill a batch when several requests wait for an idle model; "
        "requests arriving while a batch runs always join the next one (default: %(default)s)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=4096,
        help="most windows waiting; beyond it 503 at once (default: %(default)s)",
    )
    p.add_argument(
        "--max-symbols",
        type=int,
        default=512,
        help="most symbols per request (default: %(default)s)",
    )
    p.add_argument(
        "--max-bars", type=int, default=5000, help="most bars per symbol (default: %(default)s)"
    )
    p.add_argument(
        "--max-body-mb",
        type=float,
        default=32.0,
        help="largest request body in MiB (default: %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port, each with its own model on the device "
        "(uvicorn's meaning; default: %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=2,
        help="threads per process decoding and preparing big requests (default: %(default)s)",
    )
    p.add_argument(
        "--max-inflight",
        type=int,
        default=512,
        help="work requests in flight per process, from arrival to answer; beyond it 503 "
        "with Retry-After at once (default: %(default)s)",
    )
    p.add_argument(
        "--request-timeout-ms",
        type=float,
        help="deadline of a request that brings none (deadline_ms, X-Deadline-Ms), from its "
        "arrival; past it 504 (default: none)",
    )
    add_connection_limit_options(p)


def add_connection_limit_options(p: argparse.ArgumentParser) -> None:
    """``--max-header-kb --max-header-line-kb --max-headers --header-timeout-s
    --body-timeout-s --keep-alive-s --max-connections --max-connections-per-client``: the
    connection layer's nginx-like limits (:mod:`mlsignal.server.protocol`), per process."""
    g = p.add_argument_group(
        "connection limits (per process, before any request handling; like nginx's)"
    )
    g.add_argument(
        "--max-header-kb", type=int, default=32,
        help="request line + headers of one request, KiB; beyond it 431 (default: %(default)s)",
    )  # fmt: skip
    g.add_argument(
        "--max-header-line-kb", type=int, default=8,
        help="one header line, KiB (431), or the request target (414) (default: %(default)s)",
    )  # fmt: skip
    g.add_argument(
        "--max-headers", type=int, default=100,
        help="headers in one request; beyond it 431 (default: %(default)s)",
    )  # fmt: skip
    g.add_argument(
        "--header-timeout-s", type=float, default=10.0,
        help="the request line and headers must all arrive within this, from the accept or "
        "the request's first byte (a total); else 408 and close (default: %(default)s)",
    )  # fmt: skip
    g.add_argument(
        "--body-timeout-s", type=float, default=30.0,
        help="the whole body must arrive within this of the headers' end (a total); else 408 "
        "and close (default: %(default)s)",
    )  # fmt: skip
    g.add_argument(
        "--keep-alive-s", type=float, default=5.0,
        help="close a kept-alive connection idle this long after an answer (default: %(default)s)",
    )  # fmt: skip
    g.add_argument(
        "--max-connections", type=int, default=1024,
        help="open connections per process; beyond it 503 and close at once "
        "(default: %(default)s)",
    )  # fmt: skip
    g.add_argument(
        "--max-connections-per-client", type=int, default=256,
        help="open connections per process from one client address (IPv6: its /64); beyond "
        "it 503 and close at once; 0: no cap, e.g. behind a proxy (default: %(default)s)",
    )  # fmt: skip


def server_config(args: argparse.Namespace, keys: tuple[bytes, ...]) -> ServerConfig:
    """The server's limits from the command line (:class:`ServerConfig` checks them)."""
    from mlsignal.server import ServerConfig

    if not (math.isfinite(args.max_body_mb) and args.max_body_mb > 0):  # before int(): NaN, inf
        raise ConfigError(f"--max-body-mb must be a positive number of MiB, got {args.max_body_mb}")
    return ServerConfig(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_symbols=args.max_symbols,
        max_bars=args.max_bars,
        max_body_bytes=int(args.max_body_mb * (1 << 20)),
        threads=args.threads,
        max_inflight=args.max_inflight,
        default_deadline_ms=getattr(args, "request_timeout_ms", None),
        **_connection_limits(args),
        inline_windows=getattr(args, "inline_windows", ServerConfig.inline_windows),
        allow_timeframe_mismatch=cli_settings(args).allow_timeframe_mismatch,
        api_keys=keys,
    )


#: The connection limits given in KiB on the command line -> their ServerConfig fields (bytes).
_KIB_FLAGS = {"max_header_kb": "max_header_bytes", "max_header_line_kb": "max_header_line_bytes"}


def _connection_limits(args: argparse.Namespace) -> dict[str, int | float]:
    """The connection layer's fields of :class:`ServerConfig` given on the command line (a
    command without :func:`add_connection_limit_options` keeps the defaults)."""
    names = (
        "max_headers", "header_timeout_s", "body_timeout_s", "keep_alive_s", "max_connections",
        "max_connections_per_client",
    )  # fmt: skip
    fields: dict[str, int | float] = {n: getattr(args, n) for n in names if hasattr(args, n)}
    for flag, name in _KIB_FLAGS.items():
        kib = getattr(args, flag, None)
        if kib is None:
            continue
        if kib < 1:  # before the KiB -> bytes: the message shows what was typed
            raise ConfigError(f"--{flag.replace('_', '-')} must be a whole number >= 1, got {kib}")
        fields[name] = kib << 10
    return fields
