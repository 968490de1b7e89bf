"""The LitServe baseline: the same model and the same work per request, served by LitServe.

``python -m mlsignal.bench.litserve_app --bundle B --port P --device D --backend K`` serves
``POST /v1/enhance`` with the body ``mlsignal serve`` takes. Each request goes through the
very steps the mlsignal server runs: ``wire.decode_enhance`` (after LitServe's own JSON
parse), ``inference.prepare`` per symbol, one ``runtime.predict`` per batch (a runtime from
``mlsignal.runtime.load_runtime``, parity-checked), ``inference.finish`` and
``wire.result_to_wire``. Only the serving around them is LitServe's: its request queue to an
inference worker process (``--fast-queue``: its ZeroMQ transport), its dynamic batching
(``max_batch_size`` requests, waiting at most ``batch_timeout``), its JSON response.
Loopback only; ``GET /health`` is 200 when ready.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import litserve as ls
import numpy as np

#: LitServe's batching, matched to ``mlsignal serve``'s default ``--max-wait-ms 2``.
DEFAULT_MAX_BATCH = 64
DEFAULT_BATCH_TIMEOUT_MS = 2.0
#: ``mlsignal serve``'s default request limits, applied the same way here.
MAX_SYMBOLS = 512
MAX_BARS = 5000


class EnhanceAPI(ls.LitAPI):
    """``/v1/enhance`` over LitServe, with mlsignal's own inference steps."""

    def __init__(self, bundle_path: str, device: str, backend: str, **kwargs: Any) -> None:
        super().__init__(api_path="/v1/enhance", **kwargs)
        self.bundle_path, self.run_device, self.run_backend = bundle_path, device, backend

    def setup(self, device: str) -> None:
        """Load the bundle and its runtime (parity-checked), then warm it up."""
        from mlsignal.bundle import load_bundle
        from mlsignal.runtime import load_runtime

        self.bundle = load_bundle(self.bundle_path)
        self.runtime = load_runtime(self.bundle, self.run_device, self.run_backend)
        with np.load(self.bundle.file("golden.npz")) as g:
            golden = g["inputs"]
        for n in (1, min(len(golden), self.max_batch_size)):
            self.runtime.predict(golden[:n])

    # No annotation on ``request`` nor on ``encode_response``'s return: LitServe turns them
    # into FastAPI request/response models (pydantic validation per request); unannotated,
    # it takes the plain ``Request`` path every LitServe quick-start uses.
    def decode_request(self, request):  # noqa: ANN001, ANN201
        """The parsed body -> ``(arrival, [Prepared, ...])``, as the mlsignal server does."""
        from fastapi import HTTPException

        from mlsignal import wire
        from mlsignal.errors import DataError
        from mlsignal.pipeline import SignalRequest, prepare

        t0 = time.perf_counter()
        try:
            call = wire.decode_enhance(request, MAX_SYMBOLS, MAX_BARS)
            pin = call.contract_hash
            if pin is not None and pin != self.bundle.contract_hash:
                raise HTTPException(409, "model version mismatch")
            items = [SignalRequest(i.symbol, i.bars, i.ss, i.bs) for i in call.items]
            return t0, [prepare(self.bundle, r) for r in items]
        except DataError as e:
            raise HTTPException(422, str(e)) from None

    def batch(self, inputs: list[tuple[float, list[Any]]]) -> list[tuple[float, list[Any]]]:
        """Keep the requests apart: ``predict`` stacks their windows into one forward."""
        return inputs

    def predict(self, batch: list[tuple[float, list[Any]]]) -> list[tuple[Any, ...]]:
        """One ``runtime.predict`` over every window of the batch; outputs split per request."""
        windows = np.stack([p.window for _, prepared in batch for p in prepared])
        out = self.runtime.predict(windows)
        results, i = [], 0
        for t0, prepared in batch:
            results.append((t0, prepared, out[i : i + len(prepared)]))
            i += len(prepared)
        return results

    def unbatch(self, output: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Already one entry per request."""
        return output

    def encode_response(self, output):  # noqa: ANN001, ANN201 (see decode_request)
        """``finish`` + ``result_to_wire`` per symbol, with the same fields as mlsignal's."""
        from mlsignal import wire
        from mlsignal.pipeline import finish

        t0, prepared, out = output
        latency_ms = (time.perf_counter() - t0) * 1e3
        rt, b = self.runtime, self.bundle
        results = []
        for p, row in zip(prepared, out, strict=True):
            r = finish(b, p, row, device=rt.device, backend=rt.backend, latency_ms=latency_ms)
            results.append(wire.result_to_wire(r.symbol, r.enhanced_ss, r.enhanced_bs, r.ml_info))
        return {
            "model_version": b.model_version,
            "contract_hash": b.contract_hash,
            "device": rt.device,
            "backend": rt.backend,
            "results": results,
        }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mlsignal.bench.litserve_app")
    p.add_argument("--bundle", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (our runtime's device)")
    p.add_argument("--backend", default="torch", help="torch or onnx")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="requests per batch")
    p.add_argument("--batch-timeout-ms", type=float, default=DEFAULT_BATCH_TIMEOUT_MS)
    p.add_argument(
        "--fast-queue",
        action="store_true",
        help="LitServe's ZeroMQ transport (its docs: for more than 100 requests/s; needs pyzmq)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT on 127.0.0.1."""
    # The class LitServe pickles into its worker must be importable by that name, not
    # ``__main__.EnhanceAPI`` (this module runs as ``-m``).
    from mlsignal.bench.litserve_app import EnhanceAPI as API

    args = _parse(argv)
    api = API(
        args.bundle,
        args.device,
        args.backend,
        max_batch_size=args.max_batch,
        batch_timeout=args.batch_timeout_ms / 1e3,
    )
    accelerator = "cuda" if args.device.startswith("cuda") else "cpu"
    server = ls.LitServer(
        api,
        accelerator=accelerator,
        devices=1,
        fast_queue=args.fast_queue,
        disable_openapi_url=True,
    )
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
