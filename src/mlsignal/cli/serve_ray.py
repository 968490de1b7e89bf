"""``mlsignal serve --engine ray``: deploy the server as a Ray Serve application.

Joins the Ray cluster at ``--address`` (``auto`` for the local node's cluster), or starts a
local one (bounded CPUs, no dashboard). The application runs until SIGTERM/SIGINT, then is
deleted; a local cluster is shut down with it. Ray is imported only here and in
:mod:`mlsignal.server.ray_engine`, and only for ``--engine ray``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import threading
from typing import Any

from mlsignal.errors import BundleError, ConfigError

log = logging.getLogger("mlsignal.server")

#: Flags that only mean something with ``--engine ray`` (argparse dest names).
RAY_FLAGS = (
    "replicas", "autoscale", "gpus_per_replica", "cpus_per_replica", "ingress_replicas",
    "ingress_calls", "target_ongoing", "address", "ray_num_cpus", "app_name", "route_prefix",
)  # fmt: skip
MISSING_RAY = "--engine ray needs Ray Serve, which is not installed: pip install 'mlsignal[ray]'"


def maybe_serve_ray(args: argparse.Namespace) -> int | None:
    """Run the Ray engine when ``args.engine == "ray"`` (its exit code), else ``None``.

    Ray-only flags with the default engine are a :class:`ConfigError`, never ignored.
    """
    if getattr(args, "engine", "uvicorn") != "ray":
        given = [f for f in RAY_FLAGS if getattr(args, f, None) is not None]
        if given:
            flags = ", ".join("--" + f.replace("_", "-") for f in given)
            raise ConfigError(f"{flags} only apply with --engine ray")
        return None
    return serve_ray(args)


def parse_autoscale(text: str) -> tuple[int, int]:
    """``"MIN:MAX"`` -> ``(min, max)``."""
    lo, sep, hi = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(lo), int(hi)
    except ValueError:
        raise ConfigError(f"--autoscale must be MIN:MAX (e.g. 1:4), got {text!r}") from None


def ray_options(args: argparse.Namespace) -> Any:
    """The :class:`~mlsignal.server.ray_engine.RayOptions` of the command line."""
    from mlsignal.server.ray_engine import RayOptions

    def value(name: str, default: Any) -> Any:
        v = getattr(args, name, None)
        return default if v is None else v

    if args.replicas is not None and args.autoscale is not None:
        raise ConfigError("--replicas and --autoscale are alternatives: pass one")
    prefix = value("route_prefix", "/")
    if not prefix.startswith("/"):
        raise ConfigError(f"--route-prefix must start with '/', got {prefix!r}")
    return RayOptions(
        replicas=value("replicas", 1),
        autoscale=None if args.autoscale is None else parse_autoscale(args.autoscale),
        gpus_per_replica=value("gpus_per_replica", 0.0),
        cpus_per_replica=value("cpus_per_replica", 1.0),
        ingress_replicas=value("ingress_replicas", 1),
        ingress_calls=args.ingress_calls,
        target_ongoing=value("target_ongoing", 32.0),
        app_name=value("app_name", "mlsignal"),
        route_prefix=prefix,
    )


def replica_device(args: argparse.Namespace, gpus: float, env_device: str) -> str:
    """The device of each model replica: ``cuda`` needs GPUs reserved through Ray."""
    device = args.device or env_device
    if device in (None, "", "auto"):
        return "cuda" if gpus > 0 else "cpu"
    if device.startswith("cuda") and gpus <= 0:
        raise ConfigError(
            f"--device {device} with --engine ray needs --gpus-per-replica > 0: Ray shows a "
            "replica only the GPUs it reserved"
        )
    return device


def _local_cpus(args: argparse.Namespace, options: Any) -> int:
    if args.ray_num_cpus is not None:
        if args.ray_num_cpus < 1:
            raise ConfigError("--ray-num-cpus must be at least 1")
        return args.ray_num_cpus
    most = options.autoscale[1] if options.autoscale else options.replicas
    needed = options.ingress_replicas * 0.5 + most * options.cpus_per_replica
    return max(int(needed + 0.999), 1)


def _start_ray(args: argparse.Namespace, options: Any) -> bool:
    """Connect to ``--address`` or start a local cluster; True when we started it."""
    import ray

    quiet = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if args.address:
        try:
            ray.init(address=args.address, namespace="serve", **quiet)
        except (ConnectionError, RuntimeError) as e:
            raise ConfigError(
                f"cannot join the Ray cluster at {args.address}: {_first(str(e))} (a cluster "
                "with token auth also needs RAY_AUTH_MODE=token and its token here)"
            ) from None
        return False
    num_cpus = _local_cpus(args, options)
    ray.init(num_cpus=num_cpus, namespace="serve", **quiet)
    address = ray.get_runtime_context().gcs_address
    log.info("started a local Ray cluster: num_cpus=%d address=%s", num_cpus, address)
    return True


def _http_options(args: argparse.Namespace) -> dict[str, Any]:
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise ConfigError("--ssl-certfile and --ssl-keyfile go together")
    opts: dict[str, Any] = {"host": args.host, "port": args.port}
    if args.ssl_certfile:
        opts.update(ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)
    return opts


def _stop_on_signals() -> tuple[threading.Event, dict[int, Any]]:
    """An event set by SIGTERM/SIGINT, and the handlers it replaced.

    Installed right after Ray starts (Ray's driver installs its own SIGTERM handler, which
    dumps a stack and aborts) and before the deployment, so a stop that arrives while the
    replicas are still loading still ends in a clean shutdown.
    """
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda signum, frame: stop.set())
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    return stop, previous


def _wait_for_stop(stop: threading.Event, previous: dict[int, Any]) -> None:
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve_ray(args: argparse.Namespace) -> int:
    """Deploy, serve until SIGTERM/SIGINT, clean up; returns the exit code."""
    if getattr(args, "grpc_port", None) is not None:
        raise ConfigError("--grpc-port is not supported with --engine ray yet")
    try:
        import ray  # noqa: F401
        from ray import serve
    except ImportError:
        raise ConfigError(MISSING_RAY) from None
    from mlsignal.bundle import load_bundle
    from mlsignal.cli.options import cli_settings, server_config
    from mlsignal.config import resolve_backend
    from mlsignal.runtime.factory import has_onnx_model
    from mlsignal.server.auth import check_bind, load_keys
    from mlsignal.server.ray_engine import build_app

    keys = load_keys(args.api_key_file)
    check_bind(args.host, keys, args.insecure)
    config = server_config(args, keys)
    options = ray_options(args)
    settings = cli_settings(args)
    device = replica_device(args, options.gpus_per_replica, settings.device)
    http = _http_options(args)
    bundle = load_bundle(args.bundle)  # fail here, in one line, before starting Ray
    # The same rule as `mlsignal serve` (load_runtime): onnx on CPU when the bundle has it.
    backend = resolve_backend(
        args.backend or settings.backend, device=device, onnx_model=has_onnx_model(bundle)
    )
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    started = _start_ray(args, options)
    stop, previous = _stop_on_signals()
    try:
        serve.start(http_options=http)
        app = build_app(args.bundle, config, options, device, backend)
        try:
            serve.run(
                app, name=options.app_name, route_prefix=options.route_prefix,
                logging_config={"log_level": "WARNING", "enable_access_log": False},
            )  # fmt: skip
        except RuntimeError as e:
            why = _deploy_error(options.app_name) or _first(str(e))
            raise BundleError(f"the Ray Serve application failed to deploy: {why}") from None
        log.info(
            "serving %s://%s:%d%s engine=ray app=%s replicas=%s gpus_per_replica=%g device=%s "
            "backend=%s model_version=%s contract_hash=%s api_keys=%s",
            "https" if args.ssl_certfile else "http", args.host, args.port,
            options.route_prefix.rstrip("/"), options.app_name,
            options.autoscale or options.replicas, options.gpus_per_replica, device, backend,
            bundle.model_version, bundle.contract_hash, "on" if keys else "off",
        )  # fmt: skip
        _wait_for_stop(stop, previous)
        log.info("stopping: deleting the Ray Serve application %s", options.app_name)
    finally:
        _shutdown(started, options.app_name)
    log.info("stopped")
    return 0


def _shutdown(started: bool, app_name: str) -> None:
    import ray
    from ray import serve

    try:
        if started:
            serve.shutdown()
        else:  # the cluster and its other applications keep running
            with contextlib.suppress(Exception):
                serve.delete(app_name)
    finally:
        ray.shutdown()


def _deploy_error(app_name: str) -> str | None:
    """The cause Serve recorded for a failed deployment of ``app_name`` (e.g. a ParityError)."""
    from ray import serve

    try:
        app = serve.status().applications[app_name]
    except Exception:  # the status is a courtesy: never mask the deploy error
        return None
    for dep in app.deployments.values():
        if dep.status in ("DEPLOY_FAILED", "UNHEALTHY") and dep.message:
            return _first(dep.message)
    return None


def _first(text: str) -> str:
    """The line of a long Serve error that names the cause."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    causes = [ln for ln in lines if "Error" in ln and not ln.startswith("Traceback")]
    return (causes[-1] if causes else lines[0] if lines else "unknown error")[:500]
