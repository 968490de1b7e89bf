"""One exception tree, grouped by what the caller should do about it.

- :class:`DataError` and its children: the input is bad; fix the input. Never retried.
- :class:`ConfigError` and its children: the setup is wrong; fix the configuration.
- :class:`BundleError` and its children: the model bundle on disk is missing, partial,
  tampered with or incompatible; fix or replace the bundle.
- :class:`UnavailableError` and its children: something transient is down or slow; fall back.
"""

from __future__ import annotations


class MLSignalError(Exception):
    """Base class of every error mlsignal raises on purpose."""


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


class FeatureSchemaError(DataError):
    """Feature windows do not match the schema the model was trained with."""


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


# --- transient: fall back ----------------------------------------------------------------
class UnavailableError(MLSignalError):
    """A dependency (remote server, GPU) is transiently unavailable; fall back."""


class WireError(DataError):
    """A request or response body does not follow the wire schema; ``field`` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class RemoteError(UnavailableError):
    """A remote inference call failed; ``reason`` is what ``ml_info`` records."""


class VersionMismatchError(RemoteError):
    """The server's model contract hash differs from the local bundle's."""
