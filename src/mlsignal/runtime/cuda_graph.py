"""The fast GPU path: the SignalModel captured as CUDA graphs, one per batch-size bucket.

At batch 1 a model this small is launch-bound: eager PyTorch spends its time launching
hundreds of small kernels. A CUDA graph replays the whole forward as one launch. By default
the captured forward is :class:`mlsignal.runtime.fused.FastForward` (the TFT's tail on the
last step only, variable selection as one Triton kernel, the two base models on two
streams); ``fused=False`` captures :meth:`SignalModel.forward` as it is.

Per call: shape checks on the host, one copy of the numpy input into a pinned host buffer
(numpy view, no allocation), an asynchronous copy to the static device input, the replay, an
asynchronous copy of the outputs (and of a device-side "all inputs finite" flag) into pinned
host memory, one synchronize. Inputs are padded up to the next bucket (rows are independent:
padding never changes a real row). Batches above the largest bucket run in chunks through
one large pinned buffer, with a single synchronize at the end. Capture happens at load time
(all graphs share one memory pool), so the first bar pays nothing and the server's
``/readyz`` turns ready only after it.

``precision`` (``Settings.gpu_precision``, ``ML_GPU_PRECISION``): ``fp32`` (default, within
1e-5 of the CPU), ``tf32`` or ``bf16``; the parity gate uses this runtime's ``parity_atol``,
:data:`mlsignal.runtime.fused.PRECISION_ATOL` of its precision.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import torch

from mlsignal.bundle import Bundle
from mlsignal.runtime.base import check_windows
from mlsignal.runtime.fused import PRECISION_ATOL, FastForward, check_precision, matmul_precision
from mlsignal.runtime.torch_runtime import TorchRuntime

log = logging.getLogger(__name__)

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
#: Largest bucket of the unfused capture (its intermediates are ~2 MB per window).
UNFUSED_MAX = 1024


class _Graph:
    """One captured forward: static device input/output/flag, pinned host mirrors."""

    def __init__(
        self,
        fwd: torch.nn.Module,
        batch: int,
        shape: tuple[int, int],
        device: torch.device,
        pool: tuple[int, int] | None,
        x_init: torch.Tensor,
    ) -> None:
        self.batch = batch
        self.x = x_init[:batch].clone()  # real-scale rows (never zeros) for warm-up/capture
        self.host_x = torch.empty((batch, *shape), pin_memory=True)
        self.host_x_np = self.host_x.numpy()
        self.host_x_np[:] = self.x.cpu().numpy()
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):  # warm-up: cuDNN and triton pick/compile kernels before capture
                fwd(self.x)
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: a hot reload captures while another thread keeps replaying.
        with (
            torch.inference_mode(),
            torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"),
        ):
            self.y = fwd(self.x)  # (batch, 3)
            self.ok = torch.isfinite(self.x).all()  # () bool: every input value finite
        self.host_y = torch.empty(tuple(self.y.shape), pin_memory=True)
        self.host_y_np = self.host_y.numpy()
        self.host_ok = torch.empty((), dtype=torch.bool, pin_memory=True)
        self.host_ok_np = self.host_ok.numpy()

    def launch(self, src: torch.Tensor, dst: torch.Tensor, ok: torch.Tensor) -> None:
        """Enqueue: pinned ``src`` (batch rows) -> replay -> pinned ``dst``/``ok``. No sync."""
        self.x.copy_(src, non_blocking=True)
        self.graph.replay()
        dst.copy_(self.y, non_blocking=True)
        ok.copy_(self.ok, non_blocking=True)


class CudaGraphRuntime(TorchRuntime):
    """:class:`TorchRuntime` on CUDA with the forward replayed from captured graphs."""

    def __init__(
        self,
        bundle: Bundle,
        device: str | None = None,
        buckets: tuple[int, ...] | None = None,
        *,
        precision: str = "fp32",
        fused: bool = True,
    ) -> None:
        super().__init__(bundle, device)
        if self._torch_device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.precision = check_precision(precision)
        self.parity_atol = PRECISION_ATOL[self.precision]  # the gate's tolerance at this precision
        if buckets is None:
            buckets = BUCKETS if fused else tuple(b for b in BUCKETS if b <= UNFUSED_MAX)
        self.buckets = tuple(sorted(set(buckets)))
        self.fast = FastForward(self.model, self.precision) if fused else None
        if not fused and self.precision != "fp32":
            raise ValueError("reduced precision needs the fused forward")
        fwd = self.fast if fused else self.model
        self._shape = (bundle.schema.window, bundle.schema.n_features)
        dev = self._torch_device
        x_init = self._warm_inputs(max(self.buckets)).to(dev)
        pool = torch.cuda.graph_pool_handle()
        graphs: dict[int, _Graph] = {}
        with matmul_precision(self.precision):
            for b in sorted(self.buckets, reverse=True):  # largest first: the pool's size
                graphs[b] = _Graph(fwd, b, self._shape, dev, pool, x_init)
        self._graphs = [graphs[b] for b in self.buckets]
        self._largest = self._graphs[-1]
        # bucket for every batch size up to the largest: a list lookup per call
        self._pick: list[_Graph] = [self._graphs[0]] * (self._largest.batch + 1)
        for n in range(1, self._largest.batch + 1):
            self._pick[n] = next(g for g in self._graphs if g.batch >= n)
        self._stream = torch.cuda.current_stream(dev)
        self._lock = threading.Lock()
        self._big_x: torch.Tensor | None = None  # pinned, grown on demand for chunked calls
        self._big_y: torch.Tensor | None = None
        self._big_ok = torch.empty(1, dtype=torch.bool, pin_memory=True)
        log.info(
            "captured %d CUDA graphs (batches %s) on %s: fused=%s vsn_kernel=%s precision=%s",
            len(self._graphs),
            self.buckets,
            self.device,
            fused,
            bool(self.fast and self.fast.fused_vsn),
            self.precision,
        )

    def _warm_inputs(self, n: int) -> torch.Tensor:
        """Rows with the golden inputs' scale, to warm up and capture on (not zeros)."""
        from mlsignal.bundle import GOLDEN_FILE

        with np.load(self.bundle.file(GOLDEN_FILE)) as golden:
            ref = golden["inputs"].astype(np.float32)
        reps = -(-n // len(ref))
        return torch.from_numpy(np.concatenate([ref] * reps)[:n])

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """Feature windows ``(B, T, F)`` -> ``(B, 3)``, padded to a bucket and replayed."""
        arr = windows
        if not (
            type(arr) is np.ndarray
            and arr.dtype == np.float32
            and arr.ndim == 3
            and arr.shape[1:] == self._shape
            and arr.shape[0] > 0
            and arr.flags.c_contiguous
        ):
            arr = check_windows(windows, self.bundle)
        n = arr.shape[0]
        with self._lock:
            if n <= self._largest.batch:
                out, ok = self._run_one(arr, n)
            else:
                out, ok = self._run_chunks(arr, n)
        if not ok:  # some value is NaN/inf: the host check names it (and raises)
            check_windows(arr, self.bundle)
            raise AssertionError("device saw a non-finite input the host check did not")
        return out

    def _run_one(self, arr: np.ndarray, n: int) -> tuple[np.ndarray, bool]:
        g = self._pick[n]
        np.copyto(g.host_x_np[:n], arr)
        g.launch(g.host_x, g.host_y, g.host_ok)
        self._stream.synchronize()
        ok = bool(g.host_ok_np)
        if not ok:
            g.host_x_np[n:] = 0.0  # padding rows may hold an earlier bad call's values
            if n < g.batch:  # was it only the padding?
                g.launch(g.host_x, g.host_y, g.host_ok)
                self._stream.synchronize()
                ok = bool(g.host_ok_np)
        return g.host_y_np[:n].copy(), ok

    def _run_chunks(self, arr: np.ndarray, n: int) -> tuple[np.ndarray, bool]:
        g = self._largest
        c = g.batch
        chunks = -(-n // c)
        if self._big_x is None or self._big_x.shape[0] < chunks * c:
            cap = 1 << (chunks * c - 1).bit_length()
            self._big_x = torch.zeros((cap, *self._shape), pin_memory=True)
            self._big_y = torch.empty((cap, 3), pin_memory=True)
            self._big_ok = torch.empty(cap // c, dtype=torch.bool, pin_memory=True)
        assert self._big_y is not None
        bx, by = self._big_x.numpy(), self._big_y.numpy()
        for i in range(chunks):  # the next chunk's host copy overlaps this chunk's GPU work
            lo, hi = i * c, min(n, (i + 1) * c)
            np.copyto(bx[lo:hi], arr[lo:hi])
            if hi - lo < c:
                bx[hi : lo + c] = 0.0
            sl = slice(lo, lo + c)
            g.launch(self._big_x[sl], self._big_y[sl], self._big_ok[i])
        self._stream.synchronize()
        ok = bool(self._big_ok.numpy()[:chunks].all())
        return by[:n].copy(), ok
