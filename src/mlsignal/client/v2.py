"""The Open Inference Protocol (KServe V2) side of the remote client.

By default the trading host computes the feature windows itself (``Prepared.window``, which
a fallback reuses), sends them to a V2 server (``mlsignal serve``'s own ``/v2`` routes,
Triton, KServe) and finishes the enhancement (regime, Kelly, fusion) locally: the server only
runs the model forward. Windows and outputs travel as raw float32 bytes (the binary tensor
data extension, :mod:`mlsignal.wire.v2`) to a server whose metadata lists it, as JSON
tensors otherwise; either way the numbers are a local run's, bit for bit.

Environment (read into :class:`~mlsignal.config.Settings`):

- ``GPU_INFERENCE_PROTOCOL``: ``auto`` (default), ``mlsignal`` or ``v2``.

  * ``auto``: at first contact with each URL, ``GET /v2``: server metadata means a V2
    server, spoken to in binary when its ``extensions`` list ``binary_tensor_data``
    (``mlsignal serve``, Triton), in JSON tensors otherwise (an older ``mlsignal serve``,
    a server without the extension). A server without it (a 404) is asked ``GET
    /v1/models``: a contract hash there means ``mlsignal`` (bars to ``/v1/enhance``); a 404
    there and V2 model metadata at ``GET /v2/models/{name}`` mean V2 in JSON tensors.
    Anything else is spoken to as ``mlsignal`` and asked again next call. What was learnt is
    kept per URL until a call to that URL fails.
  * ``v2``: V2 only (binary when ``GET /v2`` lists the extension, else JSON tensors).
  * ``mlsignal``: bars to ``POST /v1/enhance`` (``mlsignal serve``, Ray Serve engine); the
    server prepares the windows.

  ``RemoteReply.protocol`` and ``ml_info["protocol"]`` say what a call spoke: ``mlsignal``,
  ``v2`` (JSON tensors) or ``v2-binary``.

- ``GPU_INFERENCE_MODEL_NAME``: the V2 model name (default ``mlsignal``, the name
  ``mlsignal serve`` serves and ``mlsignal export-triton`` writes by default).

**Checks at first contact** (``GET /v2/models/{name}``; the result is kept per URL):

- *Signature*: one input ``windows`` ``FP32`` ``[-1, T, F]`` with the local bundle's ``T``
  and ``F``; outputs ``p_lstm``, ``p_tft``, ``bull_prob`` ``FP32`` of shape ``[-1]`` (ours)
  or ``[-1, 1]`` (Triton's ``dims: [1]``). A mismatch is a
  :class:`~mlsignal.errors.RemoteError` naming the tensor and what differs; it is never
  accepted by ``accept_version_mismatch``.
- *Version*: the model's ``versions`` must list the local contract hash (``mlsignal serve``)
  or its Triton version ``int(contract_hash[:15], 16)`` (``export-triton``). For the latter,
  when the server has Triton's configuration extension (``GET /v2/models/{name}/config``),
  the config parameter ``contract_hash_<version>`` must equal the full hash; without it the
  60-bit prefix is the check. The infer URL names that version, so the server itself refuses
  any other model; an answer whose ``model_version`` differs is refused too. No match:
  :class:`~mlsignal.errors.VersionMismatchError` (the enhancer falls back), unless
  ``accept_version_mismatch``: then the unversioned infer URL is used and ``ml_info`` says so.

Each infer request carries ``parameters.timeout``: what is left of the call's deadline, in
microseconds, so a server (ours, Triton) can drop work nobody waits for. Nothing here
imports torch or the server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlsignal.config import MODEL_NAME_ENV, MODEL_NAME_RE, PROTOCOL_ENV, PROTOCOLS
from mlsignal.errors import ConfigError, RemoteError, VersionMismatchError
from mlsignal.signature import DATATYPE, INPUT_NAME, OUTPUT_NAMES, triton_version
from mlsignal.wire.v2 import BINARY_EXTENSION

#: What a remote call spoke (``RemoteReply.protocol``, ``ml_info["protocol"]``): bars to
#: ``/v1/enhance``; windows as V2 JSON tensors; windows as V2 binary tensors.
MLSIGNAL, V2, BINARY = "mlsignal", "v2", "v2-binary"
#: The V2 ones.
V2_PROTOCOLS = (V2, BINARY)
#: ``GET /v2``: the server metadata, whose ``extensions`` may list the binary extension.
SERVER_PATH = "/v2"


def check_protocol(protocol: str) -> str:
    """``protocol`` if it is one of ``auto``, ``mlsignal``, ``v2``; else a ConfigError."""
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"{PROTOCOL_ENV}={protocol!r} is not a protocol; choose one of {', '.join(PROTOCOLS)}"
        )
    return protocol


def check_model_name(name: str) -> str:
    """``name`` if it can go into a URL path as a V2 model name; else a ConfigError."""
    if not isinstance(name, str) or not MODEL_NAME_RE.match(name):
        raise ConfigError(f"{MODEL_NAME_ENV}={name!r} is not a model name")
    return name


def metadata_path(model: str) -> str:
    """``/v2/models/{model}``: the model metadata."""
    return f"/v2/models/{model}"


def config_path(model: str) -> str:
    """``/v2/models/{model}/config``: Triton's model configuration extension."""
    return f"/v2/models/{model}/config"


@dataclass(frozen=True)
class V2Target:
    """A V2 model at one URL, checked at first contact.

    Attributes:
        model: the model name.
        version: the version the infer URL names (``None``: unversioned, mismatch accepted).
        matched: how the version was matched: ``contract_hash``, ``triton_version`` (60-bit
            prefix), ``triton_config`` (prefix and the full hash in the config), or
            ``accepted`` (no match; ``accept_version_mismatch``).
        served: the versions the metadata listed.
        platform: the metadata's platform (e.g. ``onnxruntime_onnx``).
        window: ``(T, F)`` of the model input.
        binary: whether the server's metadata lists ``binary_tensor_data``: the windows and
            outputs then travel as raw float32 bytes.
    """

    model: str
    version: str | None
    matched: str
    served: tuple[str, ...]
    platform: str
    window: tuple[int, int]
    binary: bool = False

    @property
    def protocol(self) -> str:
        """``v2-binary`` when the server lists the binary tensor extension, else ``v2``."""
        return BINARY if self.binary else V2

    @property
    def infer_path(self) -> str:
        """``/v2/models/{model}[/versions/{version}]/infer``."""
        if self.version is None:
            return f"/v2/models/{self.model}/infer"
        return f"/v2/models/{self.model}/versions/{self.version}/infer"


# --- metadata -----------------------------------------------------------------------------
def is_server_metadata(doc: Any) -> bool:
    """Whether ``doc`` looks like V2 server metadata (``GET /v2``: an ``extensions`` list)."""
    return isinstance(doc, Mapping) and isinstance(doc.get("extensions"), list)


def lists_binary(doc: Any) -> bool:
    """Whether V2 server metadata lists the binary tensor data extension."""
    return is_server_metadata(doc) and BINARY_EXTENSION in doc["extensions"]


# --- model metadata -----------------------------------------------------------------------------
def is_model_metadata(doc: Any) -> bool:
    """Whether ``doc`` looks like a V2 model metadata document (inputs and outputs lists)."""
    return (
        isinstance(doc, Mapping)
        and isinstance(doc.get("inputs"), list)
        and isinstance(doc.get("outputs"), list)
    )


def check_signature(doc: Any, model: str, window: tuple[int, int] | None = None) -> tuple[int, int]:
    """Check the model metadata's inputs and outputs; returns the input's ``(T, F)``.

    ``window``: the ``(T, F)`` the local bundle needs (``None``: any). Raises
    :class:`RemoteError` naming the tensor and what differs.
    """
    if not is_model_metadata(doc):
        raise RemoteError(f"V2 model {model!r}: metadata has no inputs/outputs lists")
    want = f"[-1, {window[0]}, {window[1]}]" if window else "[-1, T, F]"
    inputs = [t for t in doc["inputs"] if isinstance(t, Mapping)]
    names = [t.get("name") for t in inputs]
    if names != [INPUT_NAME]:
        raise RemoteError(
            f"V2 model {model!r} signature mismatch: inputs {names}, expected one input "
            f"{INPUT_NAME!r} {DATATYPE} {want}"
        )
    tensor = inputs[0]
    if tensor.get("datatype") != DATATYPE:
        raise RemoteError(
            f"V2 model {model!r} signature mismatch: input {INPUT_NAME!r} is "
            f"{tensor.get('datatype')!r}, expected {DATATYPE}"
        )
    shape = tensor.get("shape")
    ok = (
        isinstance(shape, list)
        and len(shape) == 3
        and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        and shape[0] == -1
        and shape[1] > 0
        and shape[2] > 0
        and (window is None or tuple(shape[1:]) == tuple(window))
    )
    if not ok:
        raise RemoteError(
            f"V2 model {model!r} signature mismatch: input {INPUT_NAME!r} has shape "
            f"{shape!r}, expected {want}"
        )
    outputs = {t.get("name"): t for t in doc["outputs"] if isinstance(t, Mapping)}
    for name in OUTPUT_NAMES:
        out = outputs.get(name)
        if out is None:
            raise RemoteError(
                f"V2 model {model!r} signature mismatch: no output {name!r} "
                f"(outputs {sorted(map(str, outputs))}, expected {', '.join(OUTPUT_NAMES)})"
            )
        if out.get("datatype") != DATATYPE or out.get("shape") not in ([-1], [-1, 1]):
            raise RemoteError(
                f"V2 model {model!r} signature mismatch: output {name!r} is "
                f"{out.get('datatype')!r} {out.get('shape')!r}, expected {DATATYPE} [-1] or "
                "[-1, 1]"
            )
    return int(shape[1]), int(shape[2])


def pick_version(doc: Mapping[str, Any], contract_hash: str | None) -> tuple[str | None, str]:
    """The version to call and how it matched: ``(contract_hash, "contract_hash")``,
    ``(str(triton_version), "triton_version")`` or ``(None, "none")``."""
    served = [str(v) for v in doc.get("versions") or []]
    if contract_hash is None:
        return None, "none"
    if contract_hash in served:
        return contract_hash, "contract_hash"
    number = str(triton_version(contract_hash))
    if number in served:
        return number, "triton_version"
    return None, "none"


def config_hash(doc: Any, version: str) -> str | None:
    """The full contract hash a Triton model config carries for ``version``, if any.

    ``export-triton`` writes ``parameters { key: "contract_hash_<version>" value: {
    string_value: "<hash>" } }``; Triton's ``GET /v2/models/{name}/config`` returns it as
    ``{"parameters": {"contract_hash_<version>": {"string_value": "<hash>"}}}``.
    """
    params = doc.get("parameters") if isinstance(doc, Mapping) else None
    entry = params.get(f"contract_hash_{version}") if isinstance(params, Mapping) else None
    value = entry.get("string_value") if isinstance(entry, Mapping) else entry
    return value if isinstance(value, str) and value else None


def short(version: object) -> str:
    """A version for a message: a Triton number whole, a contract hash's first 16 digits."""
    text = str(version)
    return text if len(text) <= 20 else text[:16]


def mismatch(url: str, model: str, served: Sequence[str], contract_hash: str) -> str:
    """The reason text of a V2 version mismatch."""
    listed = ", ".join(short(v) for v in served) or "none"
    return (
        f"model version mismatch: V2 server {url} serves model {model!r} version(s) {listed}; "
        f"the local bundle is {contract_hash[:12]} (Triton version "
        f"{triton_version(contract_hash)})"
    )


# --- inference ---------------------------------------------------------------------------
def check_answer(doc: Mapping[str, Any], target: V2Target, url: str) -> None:
    """Refuse an answer from another model or version than ``target`` names."""
    name = doc.get("model_name")
    if name is not None and name != target.model:
        raise VersionMismatchError(
            f"model version mismatch: {url} answered for model {name!r}, asked {target.model!r}"
        )
    version = doc.get("model_version")
    if target.version is not None and version is not None and str(version) != target.version:
        raise VersionMismatchError(
            f"model version mismatch: {url} answered with model {target.model!r} version "
            f"{short(version)}, asked {short(target.version)}"
        )
