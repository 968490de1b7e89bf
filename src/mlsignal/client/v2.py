"""The Open Inference Protocol (KServe V2) side of the remote client.

With ``GPU_INFERENCE_PROTOCOL=v2`` (or ``auto`` and a server that speaks only V2) the trading
host computes the feature windows itself, sends them to a V2 server (Triton, KServe, or
``mlsignal serve``'s own ``/v2`` routes) and finishes the enhancement (regime, Kelly,
fusion) locally: the server only runs the model forward.

Environment (read into :class:`~mlsignal.config.Settings`):

- ``GPU_INFERENCE_PROTOCOL``: ``auto`` (default), ``mlsignal`` or ``v2``.

  * ``mlsignal``: bars go to ``POST /v1/enhance`` (``mlsignal serve``, Ray Serve engine).
  * ``v2``: windows go to ``POST /v2/models/{name}/versions/{version}/infer``.
  * ``auto``: at first contact with each URL, ``GET /v1/models``: an answer carrying a
    contract hash means ``mlsignal``; a 404 there and V2 model metadata at
    ``GET /v2/models/{name}`` mean ``v2``. Anything else is treated as ``mlsignal`` (as
    before this setting existed) and asked again next call. What was detected is kept per
    URL until a call to that URL fails.

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

Only JSON tensors (``data`` flat, row-major); the binary tensor extension is not used.
Nothing here imports torch or the server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlsignal import wire
from mlsignal.config import MODEL_NAME_ENV, MODEL_NAME_RE, PROTOCOL_ENV, PROTOCOLS
from mlsignal.errors import ConfigError, RemoteError, VersionMismatchError, WireError
from mlsignal.signature import DATATYPE, INPUT_NAME, OUTPUT_NAMES, triton_version

#: Numeric V2 datatypes an output may come back as (ours and Triton's are FP32).
_FLOAT_TYPES = ("FP16", "FP32", "FP64")


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
    """

    model: str
    version: str | None
    matched: str
    served: tuple[str, ...]
    platform: str
    window: tuple[int, int]

    @property
    def infer_path(self) -> str:
        """``/v2/models/{model}[/versions/{version}]/infer``."""
        if self.version is None:
            return f"/v2/models/{self.model}/infer"
        return f"/v2/models/{self.model}/versions/{self.version}/infer"


# --- metadata -----------------------------------------------------------------------------
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


# --- inference ----------------------------------------------------------------------------
def encode_infer(windows: np.ndarray, request_id: str | None = None) -> bytes:
    """The JSON body of ``POST .../infer`` for windows ``(B, T, F)`` (FP32, flat row-major)."""
    arr = np.ascontiguousarray(windows, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise ValueError(f"windows must have shape (B, T, F) with B >= 1, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("windows must be finite")
    doc: dict[str, Any] = {}
    if request_id is not None:
        doc["id"] = request_id
    doc["inputs"] = [
        {"name": INPUT_NAME, "shape": list(arr.shape), "datatype": DATATYPE, "data": arr.ravel()}
    ]
    doc["outputs"] = [{"name": n} for n in OUTPUT_NAMES]
    return wire.dumps(doc)


def decode_infer(doc: Any, n: int) -> np.ndarray:
    """An infer response -> float32 ``(n, 3)`` in the order ``p_lstm, p_tft, bull_prob``.

    Each output must have ``n`` finite numbers, shape ``[n]`` or ``[n, 1]``. Raises
    :class:`~mlsignal.errors.WireError` naming the field.
    """
    if not isinstance(doc, Mapping) or not isinstance(doc.get("outputs"), list):
        raise WireError("outputs", "is missing: not a V2 infer response")
    by_name = {o.get("name"): o for o in doc["outputs"] if isinstance(o, Mapping)}
    out = np.empty((n, len(OUTPUT_NAMES)), dtype=np.float32)
    for k, name in enumerate(OUTPUT_NAMES):
        tensor = by_name.get(name)
        if tensor is None:
            raise WireError("outputs", f"has no tensor {name!r}")
        if tensor.get("datatype") not in _FLOAT_TYPES:
            raise WireError(f"outputs.{name}.datatype", f"is {tensor.get('datatype')!r}")
        if tensor.get("shape") not in ([n], [n, 1]):
            raise WireError(
                f"outputs.{name}.shape", f"is {tensor.get('shape')!r}, expected [{n}] or [{n}, 1]"
            )
        try:
            data = np.asarray(tensor.get("data"), dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise WireError(f"outputs.{name}.data", "is not a list of numbers") from None
        if data.size != n:
            raise WireError(f"outputs.{name}.data", f"has {data.size} values for {n} windows")
        if not np.isfinite(data).all():
            raise WireError(f"outputs.{name}.data", "is not finite")
        out[:, k] = data  # FP32 values come back exactly (their JSON is a float32's digits)
    return out


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
