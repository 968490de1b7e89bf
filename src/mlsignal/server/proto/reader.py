"""A reader for the proto3 subset of ``grpc_service.proto``: source text -> FileDescriptorProto.

Why not protoc: the message classes must exist on a machine with only the protobuf runtime
(CI installs no grpcio-tools, and grpcio-tools pins protobuf below the version the rest of
the server's dependencies bring). A ``FileDescriptorProto`` is what protoc itself hands to
the runtime, so building it here gives the same classes, with the ``.proto`` file as the one
source of truth for names and field numbers.

Accepted: ``syntax = "proto3";``, ``package a.b;``, ``message`` (nested), fields
``[repeated] TYPE name = N;``, ``map<KEY, TYPE> name = N;``, ``oneof name { ... }``, and
``service`` with unary ``rpc M(Req) returns (Resp) {}`` (or ``;``); ``//`` and ``/* */``
comments. Anything else (imports, options, enums, streams, reserved) is a ``ProtoSyntaxError``
naming the line: it fails loudly rather than building something different from the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.protobuf import descriptor_pb2

F = descriptor_pb2.FieldDescriptorProto

#: proto3 scalar type names -> descriptor types.
SCALARS = {
    "double": F.TYPE_DOUBLE,
    "float": F.TYPE_FLOAT,
    "int64": F.TYPE_INT64,
    "uint64": F.TYPE_UINT64,
    "int32": F.TYPE_INT32,
    "fixed64": F.TYPE_FIXED64,
    "fixed32": F.TYPE_FIXED32,
    "bool": F.TYPE_BOOL,
    "string": F.TYPE_STRING,
    "bytes": F.TYPE_BYTES,
    "uint32": F.TYPE_UINT32,
    "sfixed32": F.TYPE_SFIXED32,
    "sfixed64": F.TYPE_SFIXED64,
    "sint32": F.TYPE_SINT32,
    "sint64": F.TYPE_SINT64,
}
_TOKEN = re.compile(
    r"(?P<skip>\s+|//[^\n]*|/\*.*?\*/)|(?P<tok>[A-Za-z_][\w.]*|\d+|\"[^\"\n]*\"|[{}()<>;=,])",
    re.S,
)


class ProtoSyntaxError(ValueError):
    """The ``.proto`` text is outside the subset this reader takes; the message names the line."""


@dataclass(frozen=True)
class _Tok:
    text: str
    line: int


def tokenize(text: str) -> list[_Tok]:
    """Tokens with their line numbers; comments and whitespace dropped."""
    tokens, pos, line = [], 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ProtoSyntaxError(f"line {line}: unexpected character {text[pos]!r}")
        if m.group("tok") is not None:
            tokens.append(_Tok(m.group("tok"), line))
        line += m.group(0).count("\n")
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[_Tok]) -> None:
        self.toks = tokens
        self.i = 0

    def peek(self) -> str:
        return self.toks[self.i].text if self.i < len(self.toks) else ""

    def take(self, expected: str | None = None) -> str:
        if self.i >= len(self.toks):
            raise ProtoSyntaxError(f"unexpected end of file; expected {expected or 'more'}")
        tok = self.toks[self.i]
        if expected is not None and tok.text != expected:
            self.fail(f"expected {expected!r}, got {tok.text!r}")
        self.i += 1
        return tok.text

    def expect(self, *texts: str) -> None:
        for text in texts:
            self.take(text)

    def name(self) -> str:
        text = self.take()
        if not re.fullmatch(r"[A-Za-z_][\w.]*", text):
            self.fail(f"expected a name, got {text!r}", back=1)
        return text

    def number(self) -> int:
        text = self.take()
        if not text.isdigit():
            self.fail(f"expected a field number, got {text!r}", back=1)
        return int(text)

    def fail(self, message: str, back: int = 0) -> None:
        tok = self.toks[min(self.i - back, len(self.toks) - 1)]
        raise ProtoSyntaxError(f"line {tok.line}: {message}")


def parse(text: str, name: str) -> descriptor_pb2.FileDescriptorProto:
    """``.proto`` source -> a resolved ``FileDescriptorProto`` named ``name``."""
    p = _Parser(tokenize(text))
    fd = descriptor_pb2.FileDescriptorProto(name=name)
    p.expect("syntax", "=")
    if p.take() != '"proto3"':
        p.fail('only syntax = "proto3" is supported', back=1)
    p.take(";")
    fd.syntax = "proto3"
    while p.peek():
        keyword = p.take()
        if keyword == "package":
            fd.package = p.name()
            p.take(";")
        elif keyword == "message":
            _message(p, fd.message_type.add())
        elif keyword == "service":
            _service(p, fd.service.add())
        else:
            p.fail(f"{keyword!r} is not supported here", back=1)
    _resolve(fd)
    return fd


def _message(p: _Parser, msg: descriptor_pb2.DescriptorProto) -> None:
    msg.name = p.name()
    p.take("{")
    while p.peek() != "}":
        if p.peek() == "message":
            p.take()
            _message(p, msg.nested_type.add())
        elif p.peek() == "oneof":
            p.take()
            index = len(msg.oneof_decl)
            msg.oneof_decl.add(name=p.name())
            p.take("{")
            while p.peek() != "}":
                _field(p, msg, oneof=index)
            p.take("}")
        elif p.peek() == "map":
            _map_field(p, msg)
        else:
            _field(p, msg)
    p.take("}")


def _field(p: _Parser, msg: descriptor_pb2.DescriptorProto, oneof: int | None = None) -> None:
    label = F.LABEL_OPTIONAL
    if p.peek() == "repeated" and oneof is None:
        p.take()
        label = F.LABEL_REPEATED
    elif p.peek() in ("optional", "required", "repeated", "group", "enum", "reserved", "option"):
        p.fail(f"{p.peek()!r} is not supported")
    type_name = p.name()
    field = msg.field.add(name=p.name(), label=label)
    p.take("=")
    field.number = p.number()
    p.take(";")
    _set_type(field, type_name)
    if oneof is not None:
        field.oneof_index = oneof


def _map_field(p: _Parser, msg: descriptor_pb2.DescriptorProto) -> None:
    """``map<K, V> name = N;``: a repeated ``NameEntry`` message with ``map_entry`` set, as
    protoc builds it."""
    p.expect("map", "<")
    key_type = p.name()
    if key_type not in SCALARS or key_type in ("double", "float", "bytes"):
        p.fail(f"map key type {key_type!r} is not allowed", back=1)
    p.take(",")
    value_type = p.name()
    p.take(">")
    name = p.name()
    p.take("=")
    number = p.number()
    p.take(";")
    camel = "".join(w[:1].upper() + w[1:] for w in name.split("_"))
    entry = msg.nested_type.add(name=f"{camel}Entry")
    entry.options.map_entry = True
    _set_type(entry.field.add(name="key", number=1, label=F.LABEL_OPTIONAL), key_type)
    _set_type(entry.field.add(name="value", number=2, label=F.LABEL_OPTIONAL), value_type)
    msg.field.add(name=name, number=number, label=F.LABEL_REPEATED, type=F.TYPE_MESSAGE,
                  type_name=entry.name)  # fmt: skip


def _set_type(field: descriptor_pb2.FieldDescriptorProto, type_name: str) -> None:
    if type_name in SCALARS:
        field.type = SCALARS[type_name]
    else:
        field.type = F.TYPE_MESSAGE
        field.type_name = type_name  # relative for now; _resolve makes it absolute


def _service(p: _Parser, svc: descriptor_pb2.ServiceDescriptorProto) -> None:
    svc.name = p.name()
    p.take("{")
    while p.peek() != "}":
        p.take("rpc")
        method = svc.method.add(name=p.name())
        p.take("(")
        if p.peek() == "stream":
            p.fail("streaming rpcs are not supported")
        method.input_type = p.name()
        p.expect(")", "returns", "(")
        if p.peek() == "stream":
            p.fail("streaming rpcs are not supported")
        method.output_type = p.name()
        p.take(")")
        if p.peek() == "{":
            p.expect("{", "}")
        else:
            p.take(";")
    p.take("}")


# --- name resolution ------------------------------------------------------------------------
def _resolve(fd: descriptor_pb2.FileDescriptorProto) -> None:
    """Make every message type name absolute (``.package.Outer.Inner``), searching from the
    innermost scope outwards as protoc does; an unknown name is an error."""
    root = f".{fd.package}" if fd.package else ""
    known: set[str] = set()

    def collect(scope: str, messages: list[descriptor_pb2.DescriptorProto]) -> None:
        for m in messages:
            known.add(f"{scope}.{m.name}")
            collect(f"{scope}.{m.name}", list(m.nested_type))

    def lookup(scope: str, name: str) -> str:
        if name.startswith("."):  # already absolute
            if name in known:
                return name
            raise ProtoSyntaxError(f"unknown message type {name!r}")
        while True:
            if f"{scope}.{name}" in known:
                return f"{scope}.{name}"
            if not scope:
                raise ProtoSyntaxError(f"unknown message type {name!r}")
            scope = scope.rpartition(".")[0]

    def fix(scope: str, messages: list[descriptor_pb2.DescriptorProto]) -> None:
        for m in messages:
            inner = f"{scope}.{m.name}"
            for f in m.field:
                if f.type == F.TYPE_MESSAGE:
                    f.type_name = lookup(inner, f.type_name)
            fix(inner, list(m.nested_type))

    collect(root, list(fd.message_type))
    fix(root, list(fd.message_type))
    for svc in fd.service:
        for m in svc.method:
            m.input_type = lookup(root, m.input_type)
            m.output_type = lookup(root, m.output_type)
