"""The exception tree: errors build their messages from their fields, and survive pickling."""

from __future__ import annotations

import copy
import pickle

import pytest

from mlsignal.errors import (
    BodyTooLargeError,
    ConflictError,
    DataError,
    DeadlineError,
    DrainingError,
    MLSignalError,
    QueueFullError,
    ReloadBusyError,
    RemoteError,
    ReplicaUnavailableError,
    UnavailableError,
    V2Error,
    VersionMismatchError,
    VersionPinError,
    WireError,
)

H1, H2 = "a" * 64, "b" * 64


@pytest.mark.parametrize(
    ("err", "message"),
    [
        (QueueFullError(7), "queue full (7 windows waiting)"),
        (QueueFullError(9, state="in flight"), "queue full (9 windows in flight)"),
        (DrainingError(), "the server is shutting down"),
        (DeadlineError(), "deadline exceeded before inference"),
        (DeadlineError("the replicas answered"), "deadline exceeded before the replicas answered"),
        (ReloadBusyError(), "a reload is already in progress"),
        (
            VersionPinError(H1, H2),
            f"model version mismatch: server has {H1}, request pinned {H2}",
        ),
        (
            ReplicaUnavailableError.serving_other(H1, H2),
            f"a model replica serves {H1[:12]}, this ingress {H2[:12]} (rollout in progress)",
        ),
        (V2Error("inputs", "must be a list"), "inputs: must be a list"),
        (BodyTooLargeError(1 << 20), "body: request body exceeds the limit of 1 MiB"),
        (BodyTooLargeError(3 << 19), "body: request body exceeds the limit of 1.5 MiB"),
        (RemoteError("down", attempts=2, endpoint="http://a"), "down"),
    ],
)
def test_messages_are_built_from_fields(err: MLSignalError, message: str) -> None:
    assert str(err) == message


def test_fields_and_groups() -> None:
    pin = VersionPinError(H1, H2)
    assert (pin.served, pin.pinned) == (H1, H2) and isinstance(pin, ConflictError)
    assert isinstance(ReloadBusyError(), ConflictError)
    assert QueueFullError(3).queued == 3 and isinstance(QueueFullError(3), UnavailableError)
    replica = ReplicaUnavailableError.serving_other(H1, H2)
    assert (replica.served, replica.expected) == (H1, H2)
    assert isinstance(V2Error("x", "y"), WireError) and isinstance(BodyTooLargeError(1), DataError)
    assert BodyTooLargeError(5).max_bytes == 5
    plain = RemoteError("no")
    assert (plain.attempts, plain.endpoint) == (0, None)
    pinned = VersionMismatchError("m", attempts=1, endpoint="http://b")
    assert (pinned.attempts, pinned.endpoint) == (1, "http://b")


@pytest.mark.parametrize(
    "err",
    [
        QueueFullError(4, state="in flight"),
        DeadlineError("the replicas answered"),
        DrainingError(),
        VersionPinError(H1, H2),
        ReplicaUnavailableError.serving_other(H1, H2),
        WireError("f", "bad"),
        BodyTooLargeError(1 << 20),
        VersionMismatchError("m", attempts=2, endpoint="http://a"),
    ],
)
def test_pickle_and_copy_keep_message_and_fields(err: MLSignalError) -> None:
    for clone in (pickle.loads(pickle.dumps(err)), copy.copy(err)):
        assert type(clone) is type(err) and str(clone) == str(err)
        assert vars(clone) == vars(err)
