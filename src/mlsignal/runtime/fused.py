"""An inference-only rewrite of :class:`SignalModel`'s forward: same weights, same function.

Built at load time from the loaded model (the bundle's state_dict format is untouched):

- **Last step only.** The TFT's logit reads ``psi[:, -1]``. Everything after the attention is
  position-wise, and the attention of the last query needs all keys and values but only that
  one query, so the attention, its gate, the position-wise GRN and the output gate run on the
  last step alone (1/64 of the reference's work there). The causal mask's last row is all
  zeros, so it drops out exactly.
- **Fused variable selection** on CUDA: the 29 per-variable GRNs and their softmax mix in one
  Triton kernel (:mod:`mlsignal.runtime.vsn_kernel`) instead of ~15 kernels and ~2 MB of
  intermediates per window. Elsewhere (CPU, no triton) the reference modules run.
- **Two streams** on CUDA: the LSTM classifier runs beside the TFT (they only meet at the
  meta-learner), which shortens the critical path of a batch-1 CUDA graph.
- **Precision**: ``fp32`` (default; IEEE float32 everywhere, the 1e-5 parity gate),
  ``tf32`` (matrix units' float32 mode) or ``bf16`` (autocast; the calibration tail stays
  float32). See :data:`PRECISION_ATOL`.

Outputs match :meth:`SignalModel.forward` to float32 rounding (tests/gpu/test_fused*.py).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from mlsignal.config import GPU_PRECISIONS
from mlsignal.errors import ConfigError
from mlsignal.models.signal_model import SignalModel
from mlsignal.models.stack import PROB_EPS

PRECISIONS = GPU_PRECISIONS
#: Parity tolerance on every output column against the CPU float32 model, per precision.
PRECISION_ATOL = {"fp32": 1e-5, "tf32": 2e-3, "bf16": 2e-2}


def check_precision(value: str) -> str:
    """Normalise a precision name, or raise :class:`ConfigError`."""
    v = (value or "fp32").strip().lower()
    if v not in PRECISIONS:
        raise ConfigError(f"GPU precision {value!r} is not one of {', '.join(PRECISIONS)}")
    return v


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """TF32 on (``tf32``) or off (otherwise) for cuBLAS and cuDNN inside the block, restored
    after. Kernels picked inside a CUDA-graph capture keep their math mode on replay."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    on = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


class FastForward(nn.Module):
    """``forward(x (B, T, F)) -> (B, 3)`` like :meth:`SignalModel.forward`, faster.

    Shares the model's parameters (no copy). ``use_triton=None`` uses the fused kernel when
    the model is on CUDA and triton imports; ``parallel`` runs the LSTM classifier on a side
    stream on CUDA.
    """

    def __init__(
        self,
        model: SignalModel,
        precision: str = "fp32",
        use_triton: bool | None = None,
        parallel: bool = True,
    ) -> None:
        super().__init__()
        self.m = model.eval()
        self.precision = check_precision(precision)
        device = model.feat_mean.device
        self._vsn = None
        vsn = model.tft.vsn
        if use_triton is None:
            from mlsignal.runtime import vsn_kernel

            use_triton = (
                device.type == "cuda"
                and vsn_kernel.available()
                and vsn_kernel.VSNKernel.supports(vsn)
            )
        if use_triton:
            from mlsignal.runtime.vsn_kernel import VSNKernel

            self._vsn = VSNKernel(vsn, self.precision)
        self._side = torch.cuda.Stream(device) if parallel and device.type == "cuda" else None

    @property
    def fused_vsn(self) -> bool:
        """Whether the Triton variable-selection kernel is in use."""
        return self._vsn is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, F) raw float32 features -> (B, 3) float32: p_lstm, p_tft, bull_prob."""
        m = self.m
        z = (x - m.feat_mean) / m.feat_std  # (B, T, F)
        bf16 = self.precision == "bf16" and x.is_cuda
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            if self._side is not None:
                cur = torch.cuda.current_stream(x.device)
                self._side.wait_stream(cur)
                with torch.cuda.stream(self._side):
                    logit_lstm = m.lstm(z)
                logit_tft = self.tft_logit(z)
                cur.wait_stream(self._side)
                logit_lstm.record_stream(cur)
            else:
                logit_lstm = m.lstm(z)
                logit_tft = self.tft_logit(z)
        logits = torch.stack([logit_lstm.float(), logit_tft.float()], dim=1)  # (B, 2)
        stacked = torch.sigmoid(logits @ m.meta_w + m.meta_b)
        bull = m.calibrate(stacked).clamp(PROB_EPS, 1.0 - PROB_EPS)
        return torch.cat([torch.sigmoid(logits), bull.unsqueeze(1)], dim=1)

    def tft_logit(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, T, F) standardised -> the TFT's logit (B,), computing only what it reads."""
        tft = self.m.tft
        b, t, n = z.shape
        if self._vsn is not None:
            selected = self._vsn(z.reshape(b * t, n)).view(b, t, -1)
        else:
            w = torch.softmax(tft.vsn.weight_grn(z), dim=-1)  # (B, T, F)
            v = tft.vsn.var_grns(z.reshape(b * t, n).t().unsqueeze(-1))  # (F, N, d)
            wf = w.reshape(b * t, n).t().unsqueeze(-1)  # (F, N, 1)
            selected = (wf * v).sum(dim=0).view(b, t, -1)  # (B, T, d)
        enc, _ = tft.lstm(selected)  # (B, T, d)
        phi = tft.lstm_gate(enc, skip=selected)  # (B, T, d)
        last = phi[:, -1]  # (B, d)
        att = self._attend_last(phi, last)  # (B, d)
        beta = tft.attn_gate(att, skip=last)
        psi = tft.out_gate(tft.ff(beta), skip=last)
        return tft.head(psi).squeeze(-1)

    def _attend_last(self, phi: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """The interpretable attention's output for the last query step only: (B, d)."""
        a = self.m.tft.attn
        b, t, _ = phi.shape
        q = a.q(last).view(b, a.n_heads, 1, a.d_head)  # (B, H, 1, dh)
        k = a.k(phi).view(b, t, a.n_heads, a.d_head).transpose(1, 2)  # (B, H, T, dh)
        v = a.v(phi).unsqueeze(1)  # (B, 1, T, dh)
        scores = q @ k.transpose(-2, -1) / math.sqrt(a.d_head)  # (B, H, 1, T)
        attn = torch.softmax(scores, dim=-1)  # the last mask row is all zeros
        heads = attn @ v  # (B, H, 1, dh)
        return a.out(heads.mean(dim=1).squeeze(1))  # (B, d)
