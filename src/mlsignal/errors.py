"""One exception tree, grouped by what the caller should do about it.

- :class:`DataError` and its children: the input is bad; fix the input. Never retried.
- :class:`ConfigError` and its children: the setup is wrong; fix the configuration.
- :class:`BundleError` and its children: the model bundle on disk is missing, partial,
  tampered with or incompatible; fix or replace the bundle.
- :class:`ConflictError` and its children: the request is sound but conflicts with what the
  server is doing or serving (a 409); change the pin, or wait and ask again.
- :class:`UnavailableError` and its children: something transient is down or slow; fall back.

Errors that carry context take it as constructor fields and build their message from it, so
the message (which tests, HTTP answers and ``ml_info["fallback_reason"]`` show) is made in
one place.
"""

from __future__ import annotations

from typing import Any


class MLSignalError(Exception):
    """Base class of every error mlsignal raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from the message and fields, not by calling __init__ again: a subclass's
        # __init__ takes fields, not the message (pickle, copy, across processes).
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls: type[MLSignalError], args: tuple[Any, ...], fields: dict[str, Any]) -> Any:
    err = cls.__new__(cls)
    err.args = args
    err.__dict__.update(fields)
    return err


# --- bad data: fix the input -------------------------------------------------------------
class DataError(MLSignalError, ValueError):
    """The input data is invalid. The message names the row and column where it can."""


class MissingColumnError(DataError):
    """A required column (open, high, low, close, volume or a timestamp) is absent."""


class TimestampError(DataError):
    """Timestamps are unparseable, unsorted or duplicated."""


class PriceError(DataError):
    """A price or volume is NaN, infinite, non-positive or inconsistent (high < close...)."""


class InsufficientDataError(DataError):
    """Fewer bars than the feature window and its warm-up need."""


class TimeframeError(DataError):
    """Bars of another interval than the bundle was trained on (daily model, hourly bars)."""


class FeatureSchemaError(DataError):
    """Feature windows do not match the schema the model was trained with."""


class WireError(DataError):
    """A request or response body does not follow the wire schema; ``field`` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class V2Error(WireError):
    """A bad Open Inference Protocol (V2) request (answered 400 on /v2 paths)."""


class BodyTooLargeError(WireError):
    """The request body exceeds ``max_bytes`` (answered 413)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__("body", f"request body exceeds the limit of {max_bytes / (1 << 20):g} MiB")
        self.max_bytes = max_bytes


# --- bad setup: fix the configuration ----------------------------------------------------
class ConfigError(MLSignalError, ValueError):
    """A setting has an unknown or impossible value."""


class DeviceUnavailableError(ConfigError):
    """The requested device (e.g. ``cuda``) is not available on this machine."""


# --- bad bundle: fix or replace the bundle -----------------------------------------------
class BundleError(MLSignalError):
    """The model bundle cannot be used."""


class BundleNotFoundError(BundleError, FileNotFoundError):
    """No bundle (no manifest) at the given path, or the bundle is partial."""


class BundleIntegrityError(BundleError):
    """A bundle file is missing, extra or does not match its sha256 in the manifest."""


class BundleVersionError(BundleError):
    """The bundle format version is not one this mlsignal can read."""


class ParityError(BundleError):
    """A runtime's outputs on the bundle's golden inputs drift beyond tolerance."""


# --- conflict with the server's state: change the pin, or ask again later ------------------
class ConflictError(MLSignalError):
    """The request conflicts with the server's model or with work in progress (a 409)."""


class VersionPinError(ConflictError):
    """The request pinned contract hash ``pinned``; the server serves ``served``."""

    def __init__(self, served: str, pinned: str) -> None:
        super().__init__(f"model version mismatch: server has {served}, request pinned {pinned}")
        self.served = served
        self.pinned = pinned


class ReloadBusyError(ConflictError):
    """A reload is already running."""

    def __init__(self) -> None:
        super().__init__("a reload is already in progress")


# --- transient: fall back ----------------------------------------------------------------
class UnavailableError(MLSignalError):
    """A dependency (remote server, GPU) is transiently unavailable; fall back."""


class QueueFullError(UnavailableError):
    """``queued`` windows are already ``state`` (waiting for a batch, or in flight to model
    replicas) and the request would overflow the bound: answer 503 with Retry-After."""

    def __init__(self, queued: int, *, state: str = "waiting") -> None:
        super().__init__(f"queue full ({queued} windows {state})")
        self.queued = queued
        self.state = state


class DrainingError(UnavailableError):
    """The server is shutting down and takes no new work."""

    def __init__(self) -> None:
        super().__init__("the server is shutting down")


class DeadlineError(UnavailableError):
    """The request's deadline passed ``before`` its work ran (or was answered); not computed."""

    def __init__(self, before: str = "inference") -> None:
        super().__init__(f"deadline exceeded before {before}")
        self.before = before


class ReplicaUnavailableError(UnavailableError):
    """No model replica answered (one died, or a rollout is in progress): answered 503.

    ``served``/``expected``: the contract hashes, when a replica answered for another model
    than the ingress's (see :meth:`serving_other`).
    """

    def __init__(
        self, message: str, *, served: str | None = None, expected: str | None = None
    ) -> None:
        super().__init__(message)
        self.served = served
        self.expected = expected

    @classmethod
    def serving_other(cls, served: str, expected: str) -> ReplicaUnavailableError:
        """A replica serves contract hash ``served``, the ingress ``expected``."""
        message = (
            f"a model replica serves {served[:12]}, this ingress {expected[:12]} "
            "(rollout in progress)"
        )
        return cls(message, served=served, expected=expected)


class RemoteError(UnavailableError):
    """A remote inference call failed; the message is what ``ml_info`` records.

    ``attempts``: HTTP attempts made (0: none, the call failed before any I/O);
    ``endpoint``: the base URL of the last attempt, or ``None``.
    """

    def __init__(self, message: str, *, attempts: int = 0, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.endpoint = endpoint


class VersionMismatchError(RemoteError):
    """The server's model contract hash differs from the local bundle's."""
