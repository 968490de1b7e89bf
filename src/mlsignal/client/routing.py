"""Which protocol each endpoint speaks, and what a call sends to it (``auto`` and ``v2``).

:class:`Router` is the half of :class:`~mlsignal.client.remote.RemoteClient` that knows the
protocols: it finds out what an endpoint speaks (``GET /v2`` server metadata and whether it
lists the binary tensor extension, else ``GET /v1/models``), checks a V2 model's signature
and version at first contact, keeps what it learnt per URL until a call to that URL fails,
and turns one enhance/infer call into the :class:`Send` of each attempt. The client does the
transport: attempts, fail-over, breakers, the deadline, judging answers. Probes and metadata
reads go through the client's ``get`` and ``judge`` hooks, so they run inside the same call's
deadline and count against the endpoint.
The rules themselves are in :mod:`mlsignal.client.v2`, the bodies in :mod:`mlsignal.wire.v2`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlsignal import wire
from mlsignal.client import v2
from mlsignal.client.policy import Deadline, error_text
from mlsignal.errors import RemoteError, VersionMismatchError, WireError
from mlsignal.signature import INPUT_NAME
from mlsignal.wire import v2 as v2wire

#: ``get(url, path, deadline) -> (status, body)``: one GET inside the call's deadline.
Get = Callable[[str, str, Deadline], tuple[int, bytes]]
#: ``judge(status, body, url) -> doc``: the parsed 2xx answer, else the error it calls for.
Judge = Callable[[int, bytes, str], dict[str, Any]]
#: ``route(url, deadline) -> Send``: what one attempt sends to ``url``.
Route = Callable[[str, Deadline], "Send"]


@dataclass(frozen=True)
class Send:
    """What one attempt sends to an endpoint.

    A V2 infer has ``target`` and ``infer`` (the request made once per call; each attempt
    makes its body with what is left of the deadline as ``parameters.timeout``) and no
    ``body``.
    """

    method: str
    path: str
    body: bytes | None
    cap_ms: float = 0.0  # cap on deadline_ms (0: none is sent)
    target: v2.V2Target | None = None  # set for a V2 infer
    infer: v2wire.EncodedInfer | None = None  # set for a V2 infer

    @property
    def n(self) -> int:
        """Windows sent to a V2 infer (0 for any other call)."""
        return 0 if self.infer is None else self.infer.n


@dataclass(frozen=True)
class Wanted:
    """The model a call wants: the V2 model name and the local bundle's pin."""

    model_name: str
    contract_hash: str | None
    accept_mismatch: bool


class Router:
    """Per-URL protocol knowledge and the routes of ``auto``/``v2`` calls."""

    def __init__(self, get: Get, judge: Judge) -> None:
        self._get = get
        self._judge = judge
        self._known: dict[str, str | v2.V2Target] = {}  # url -> what it speaks, once learnt

    def protocols(self, urls: tuple[str, ...]) -> dict[str, str]:
        """URL -> ``mlsignal``, ``v2``, ``v2-binary`` or ``unknown`` (not yet asked, or
        forgotten)."""
        found = {u: self._known.get(u) for u in urls}
        return {
            u: "unknown" if k is None else k if isinstance(k, str) else k.protocol
            for u, k in found.items()
        }

    def forget(self, url: str) -> None:
        """Ask ``url`` again next time (its call failed: it may have changed)."""
        self._known.pop(url, None)

    def route(
        self,
        want: Wanted,
        v1: Send | Callable[[], Send] | None,
        windows: Callable[[], np.ndarray] | None,
    ) -> Route:
        """One call's route: ``v1`` (bars, if any; a callable is called at most once) to
        mlsignal endpoints, ``windows()`` (called at most once) to V2 endpoints, encoded
        once per encoding (binary or JSON tensors) the call needs. Safe to call from the
        threads of concurrent (hedged) attempts."""
        made: dict[Any, Any] = {}  # "v1" -> Send; "shape" -> tuple; bool -> EncodedInfer
        lock = threading.Lock()  # what is made once per call, whichever attempt needs it first

        def route(url: str, dl: Deadline) -> Send:
            if v1 is not None and self._detect(url, dl, want) == v2.MLSIGNAL:
                with lock:
                    if "v1" not in made:
                        made["v1"] = v1 if isinstance(v1, Send) else v1()
                return made["v1"]
            target = self._target(url, dl, want)
            if windows is None:
                raise RemoteError(f"{url} speaks only V2; this call has no windows to send")
            with lock:
                if target.binary not in made:
                    if "array" not in made:
                        made["array"] = windows()
                    encoded = encode_windows(made["array"], target.binary)
                    made[target.binary], made["shape"] = encoded
            shape = made["shape"]
            if tuple(shape[1:]) != target.window:
                raise RemoteError(
                    f"V2 model {target.model!r} at {url} signature mismatch: input "
                    f"{INPUT_NAME!r} is [-1, {target.window[0]}, {target.window[1]}], the "
                    f"local bundle makes [-1, {shape[1]}, {shape[2]}]"
                )
            return Send("POST", target.infer_path, None, target=target, infer=made[target.binary])

        return route

    def _detect(self, url: str, deadline: Deadline, want: Wanted) -> str | v2.V2Target:
        """``auto``: ``mlsignal``, or the checked V2 target, of ``url`` (asked once)."""
        known = self._known.get(url)
        if known is not None:
            return known
        status, raw = self._get(url, v2.SERVER_PATH, deadline)
        server = _json(raw) if status == 200 else None
        if v2.is_server_metadata(server):
            return self._target(url, deadline, want, binary=v2.lists_binary(server))
        status, raw = self._get(url, "/v1/models", deadline)
        if status == 200:
            doc = _json(raw)
            if isinstance(doc, dict) and doc.get("contract_hash"):
                self._known[url] = v2.MLSIGNAL
        elif status == 404:
            status, raw = self._get(url, v2.metadata_path(want.model_name), deadline)
            doc = _json(raw) if status == 200 else None
            if v2.is_model_metadata(doc):
                return self._learn(url, doc, deadline, want, binary=False)
        return v2.MLSIGNAL  # not proven V2: speak mlsignal, as without this setting

    def _target(
        self, url: str, deadline: Deadline, want: Wanted, binary: bool | None = None
    ) -> v2.V2Target:
        """The checked V2 target of ``url``: the server metadata (``binary``: already read)
        and the model metadata read once, then kept."""
        known = self._known.get(url)
        if isinstance(known, v2.V2Target):
            return known
        if binary is None:
            status, raw = self._get(url, v2.SERVER_PATH, deadline)
            binary = status == 200 and v2.lists_binary(_json(raw))
        status, raw = self._get(url, v2.metadata_path(want.model_name), deadline)
        if status == 404:
            text = error_text(raw, status)
            raise RemoteError(f"V2 server {url} has no model {want.model_name!r}: 404 {text}")
        return self._learn(url, self._judge(status, raw, url), deadline, want, binary)

    def _learn(
        self, url: str, doc: dict[str, Any], deadline: Deadline, want: Wanted, binary: bool
    ) -> v2.V2Target:
        """Check a V2 model's metadata (signature, version) and keep the target."""
        name = want.model_name
        try:
            window = v2.check_signature(doc, name)
        except RemoteError as e:
            raise RemoteError(f"{e} (at {url})") from None
        served = tuple(str(v) for v in doc.get("versions") or [])
        version, how = v2.pick_version(doc, want.contract_hash)
        if how == "triton_version" and version is not None:
            full = self._triton_hash(url, version, deadline, name)
            if full is not None and full != want.contract_hash:
                version, how = None, "none"
            elif full is not None:
                how = "triton_config"
        if version is None and want.contract_hash is not None:
            if not want.accept_mismatch:
                raise VersionMismatchError(v2.mismatch(url, name, served, want.contract_hash))
            how = "accepted"
        platform = str(doc.get("platform") or "v2")
        target = v2.V2Target(name, version, how, served, platform, window, binary)
        self._known[url] = target
        return target

    def _triton_hash(self, url: str, version: str, deadline: Deadline, model: str) -> str | None:
        """The full contract hash in Triton's model config for ``version``, if it has one."""
        status, raw = self._get(url, v2.config_path(model), deadline)
        return v2.config_hash(_json(raw), version) if status == 200 else None


def encode_windows(windows: np.ndarray, binary: bool) -> tuple[v2wire.EncodedInfer, tuple]:
    """The V2 infer request of ``windows`` ``(B, T, F)`` (binary or JSON tensors) and their
    shape; RemoteError if they cannot be sent."""
    try:
        arr = np.asarray(windows, dtype=np.float32)
        return v2wire.encode_request(arr, binary=binary), arr.shape
    except (TypeError, ValueError) as e:
        raise RemoteError(f"cannot encode windows: {e}") from None


def v2_answer(
    raw: bytes, length: str | None, target: v2.V2Target, n: int, url: str
) -> dict[str, Any]:
    """A V2 infer answer (its body and ``Inference-Header-Content-Length``) -> the reply
    document (see ``RemoteReply``).

    Raises :class:`VersionMismatchError` for another model or version, :class:`WireError`
    for a malformed answer.
    """
    doc, outputs = v2wire.decode_response(raw, length, n)
    v2.check_answer(doc, target, url)
    return {
        "outputs": outputs,
        "model_name": target.model,
        "model_version": str(doc.get("model_version") or target.version or ""),
        "platform": target.platform,
        "matched": target.matched,
        "served": list(target.served),
    }


def _json(raw: bytes) -> Any:
    """Parsed JSON, or None."""
    try:
        return wire.loads(raw)
    except WireError:
        return None
