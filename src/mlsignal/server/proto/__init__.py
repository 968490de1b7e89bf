"""The Open Inference Protocol (KServe V2) gRPC messages, built from ``grpc_service.proto``.

The ``.proto`` file in this package is read at import (:mod:`.reader`, no protoc step) into a
private descriptor pool, so it never collides with another copy of the same ``inference``
package in the process (tritonclient registers one in the default pool). Message classes
are attributes of this module (``proto.ModelInferRequest``); nested ones hang off their
parent (``proto.ModelInferRequest.InferInputTensor``). :data:`SERVICE` is the
``inference.GRPCInferenceService`` descriptor the server builds its handlers from.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor

from mlsignal.server.proto.reader import ProtoSyntaxError, parse

__all__ = ["FILE", "PROTO_FILE", "SERVICE", "ProtoSyntaxError", "message_class", "read_file"]

PROTO_FILE = "grpc_service.proto"
SERVICE_NAME = "inference.GRPCInferenceService"


def read_file(name: str = PROTO_FILE) -> FileDescriptor:
    """Read the package's ``name`` into a new private pool; its file descriptor."""
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    pool = descriptor_pool.DescriptorPool()
    # serialized, as protoc's generated modules add theirs: the one entry point every
    # protobuf implementation (upb, cpp, python) takes
    pool.AddSerializedFile(parse(text, name).SerializeToString())
    return pool.FindFileByName(name)


FILE = read_file()
SERVICE: ServiceDescriptor = FILE.pool.FindServiceByName(SERVICE_NAME)


def message_class(full_name: str) -> type[Any]:
    """The message class of ``full_name`` (e.g. ``inference.ModelInferRequest``)."""
    return message_factory.GetMessageClass(FILE.pool.FindMessageTypeByName(full_name))


ServerLiveRequest = message_class("inference.ServerLiveRequest")
ServerLiveResponse = message_class("inference.ServerLiveResponse")
ServerReadyRequest = message_class("inference.ServerReadyRequest")
ServerReadyResponse = message_class("inference.ServerReadyResponse")
ModelReadyRequest = message_class("inference.ModelReadyRequest")
ModelReadyResponse = message_class("inference.ModelReadyResponse")
ServerMetadataRequest = message_class("inference.ServerMetadataRequest")
ServerMetadataResponse = message_class("inference.ServerMetadataResponse")
ModelMetadataRequest = message_class("inference.ModelMetadataRequest")
ModelMetadataResponse = message_class("inference.ModelMetadataResponse")
InferParameter = message_class("inference.InferParameter")
InferTensorContents = message_class("inference.InferTensorContents")
ModelInferRequest = message_class("inference.ModelInferRequest")
ModelInferResponse = message_class("inference.ModelInferResponse")
