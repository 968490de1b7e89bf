# ruff: noqa: ANN001
"""The TFT's variable selection (weight GRN, softmax, 29 per-variable GRNs, mix): ONE kernel.

The reference (:class:`mlsignal.models.tft.VariableGRNs` then ``(w * v).sum(0)``) writes
seven ``(F, B*T, 16..64)`` float32 intermediates to GPU memory: about 2 MB per window, so
at large batches it is bound by memory traffic. This kernel keeps one block of rows in
registers, loops over the variables, and writes only the mixed ``(B*T, d)`` result. The
arithmetic is the reference's, term by term (embedding folded into the first layer exactly as
the reference folds it); only the order of the sum over variables differs (float32 rounding,
~1e-7).

Needs ``triton`` (in every CUDA build of PyTorch). :func:`available` says whether it can run.
"""

from __future__ import annotations

from typing import Any

import torch

try:  # triton ships with CUDA builds of torch; absent on CPU-only installs
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

#: Triton dot precision per runtime precision (bf16 casts the operands instead).
DOT_PRECISION = {"fp32": "ieee", "tf32": "tf32", "bf16": "ieee"}
#: Up to this many rows (B*T) the kernel runs one program per variable and row block
#: (more parallelism at small batches) and the partial outputs are summed after.
SPLIT_ROWS = 1024


def available() -> bool:
    """True when triton imports (the kernel still needs a CUDA tensor, or TRITON_INTERPRET=1)."""
    return triton is not None


if triton is not None:

    @triton.jit
    def _vsn_kernel(
        x_ptr,  # (N, F) standardised inputs
        out_ptr,  # (N, D) mixed output
        n_rows,
        w1_ptr,  # (F, H) emb_w @ w1
        b1_ptr,  # (F, H) emb_b @ w1 + b1
        w2_ptr,  # (F, H, H)
        b2_ptr,  # (F, H)
        wg_ptr,  # (F, H, 2D)
        bg_ptr,  # (F, 2D)
        ew_ptr,  # (F, D)
        eb_ptr,  # (F, D)
        nw_ptr,  # (F, D)
        nb_ptr,  # (F, D)
        gw1_ptr,  # (P, DW) weight GRN fc1, transposed, rows padded to P
        gb1_ptr,  # (DW,)
        gw2_ptr,  # (DW, DW) fc2 transposed
        gb2_ptr,  # (DW,)
        gwa_ptr,  # (DW, P) GLU value half, transposed, padded
        gba_ptr,  # (P,)
        gwg_ptr,  # (DW, P) GLU gate half
        gbg_ptr,  # (P,)
        gnw_ptr,  # (P,) LayerNorm weight (0 in the padding)
        gnb_ptr,  # (P,)
        N_VARS: tl.constexpr,
        P: tl.constexpr,
        DW: tl.constexpr,
        SPLIT: tl.constexpr,
        D: tl.constexpr,
        H: tl.constexpr,
        BLOCK: tl.constexpr,
        PRECISION: tl.constexpr,
        BF16: tl.constexpr,
        EPS: tl.constexpr,
    ):
        pid = tl.program_id(0)
        rows = pid * BLOCK + tl.arange(0, BLOCK)
        live = rows < n_rows
        hc = tl.arange(0, H)
        dc = tl.arange(0, D)
        # the weight GRN over the F raw inputs, then the softmax over F: s (BLOCK, P)
        pc = tl.arange(0, P)
        wc = tl.arange(0, DW)
        pin = pc < N_VARS
        xb = tl.load(
            x_ptr + rows[:, None] * N_VARS + pc[None, :],
            mask=live[:, None] & pin[None, :],
            other=0.0,
        )
        q = tl.dot(xb, tl.load(gw1_ptr + pc[:, None] * DW + wc[None, :]), input_precision=PRECISION)
        q = q + tl.load(gb1_ptr + wc)[None, :]
        q = tl.where(q > 0.0, q, tl.exp(q) - 1.0)  # ELU
        q = tl.dot(q, tl.load(gw2_ptr + wc[:, None] * DW + wc[None, :]), input_precision=PRECISION)
        q = q + tl.load(gb2_ptr + wc)[None, :]
        ga = tl.dot(q, tl.load(gwa_ptr + wc[:, None] * P + pc[None, :]), input_precision=PRECISION)
        gg = tl.dot(q, tl.load(gwg_ptr + wc[:, None] * P + pc[None, :]), input_precision=PRECISION)
        ga = ga + tl.load(gba_ptr + pc)[None, :]
        gg = gg + tl.load(gbg_ptr + pc)[None, :]
        y = xb + ga * tl.sigmoid(gg)  # identity skip + GLU (0 in the padding)
        mean = tl.sum(y, axis=1) / N_VARS
        yc = tl.where(pin[None, :], y - mean[:, None], 0.0)
        var = tl.sum(yc * yc, axis=1) / N_VARS
        yn = yc * tl.rsqrt(var + EPS)[:, None] * tl.load(gnw_ptr + pc)[None, :]
        yn = tl.where(pin[None, :], yn + tl.load(gnb_ptr + pc)[None, :], float("-inf"))
        ex = tl.exp(yn - tl.max(yn, axis=1)[:, None])
        s = ex / tl.sum(ex, axis=1)[:, None]  # (BLOCK, P) selection weights
        if SPLIT:  # one variable per program along axis 1, partial sums summed by the caller
            f_lo = tl.program_id(1)
            f_hi = f_lo + 1
            out_ptr += f_lo * n_rows * D
        else:
            f_lo = 0
            f_hi = N_VARS
        acc = tl.zeros((BLOCK, D), dtype=tl.float32)
        for f in range(f_lo, f_hi):
            xf = tl.load(x_ptr + rows * N_VARS + f, mask=live, other=0.0)
            sf = tl.sum(tl.where(pc[None, :] == f, s, 0.0), axis=1)
            w1 = tl.load(w1_ptr + f * H + hc)
            b1 = tl.load(b1_ptr + f * H + hc)
            h = b1[None, :] + xf[:, None] * w1[None, :]  # (BLOCK, H)
            h = tl.where(h > 0.0, h, tl.exp(h) - 1.0)  # ELU
            w2 = tl.load(w2_ptr + f * H * H + hc[:, None] * H + hc[None, :])
            wa = tl.load(wg_ptr + f * H * 2 * D + hc[:, None] * (2 * D) + dc[None, :])
            wb = tl.load(wg_ptr + f * H * 2 * D + hc[:, None] * (2 * D) + D + dc[None, :])
            if BF16:
                h2 = tl.dot(h.to(tl.bfloat16), w2.to(tl.bfloat16))
            else:
                h2 = tl.dot(h, w2, input_precision=PRECISION)
            h2 = h2 + tl.load(b2_ptr + f * H + hc)[None, :]
            if BF16:
                a = tl.dot(h2.to(tl.bfloat16), wa.to(tl.bfloat16))
                g = tl.dot(h2.to(tl.bfloat16), wb.to(tl.bfloat16))
            else:
                a = tl.dot(h2, wa, input_precision=PRECISION)
                g = tl.dot(h2, wb, input_precision=PRECISION)
            a = a + tl.load(bg_ptr + f * 2 * D + dc)[None, :]
            g = g + tl.load(bg_ptr + f * 2 * D + D + dc)[None, :]
            e = (
                tl.load(eb_ptr + f * D + dc)[None, :]
                + xf[:, None] * tl.load(ew_ptr + f * D + dc)[None, :]
            )
            y = e + a * tl.sigmoid(g)  # skip + GLU
            mean = tl.sum(y, axis=1) / D
            yc = y - mean[:, None]
            var = tl.sum(yc * yc, axis=1) / D
            yn = yc * tl.rsqrt(var + EPS)[:, None]
            yn = tl.load(nb_ptr + f * D + dc)[None, :] + yn * tl.load(nw_ptr + f * D + dc)[None, :]
            acc += sf[:, None] * yn
        tl.store(out_ptr + rows[:, None] * D + dc[None, :], acc, mask=live[:, None])


def _pow2(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


class VSNKernel:
    """Precomputed, contiguous weights of one VariableSelection module, and the kernel launch."""

    def __init__(self, vsn: torch.nn.Module, precision: str = "fp32") -> None:
        if triton is None:
            raise RuntimeError("triton is not installed")
        g, wg = vsn.var_grns, vsn.weight_grn
        n = g.emb_w.shape[0]
        p = _pow2(n)
        dev = g.emb_w.device
        with torch.no_grad():
            self.w1 = (g.emb_w @ g.w1).squeeze(1).contiguous()  # (F, H), as the reference folds
            self.b1 = torch.baddbmm(g.b1, g.emb_b, g.w1).squeeze(1).contiguous()
            self.w2 = g.w2.detach().contiguous()
            self.b2 = g.b2.detach().squeeze(1).contiguous()
            self.wg = g.w_glu.detach().contiguous()
            self.bg = g.b_glu.detach().squeeze(1).contiguous()
            self.ew = g.emb_w.detach().squeeze(1).contiguous()
            self.eb = g.emb_b.detach().squeeze(1).contiguous()
            self.nw = g.norm_w.detach().squeeze(1).contiguous()
            self.nb = g.norm_b.detach().squeeze(1).contiguous()
            dw = wg.fc1.out_features

            def pad(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
                out = torch.zeros(shape, device=dev, dtype=torch.float32)
                out[tuple(slice(0, k) for k in t.shape)] = t
                return out.contiguous()

            glu = wg.glu.fc.weight  # (2F, DW)
            self.grn = [
                pad(wg.fc1.weight.t(), (p, dw)),
                wg.fc1.bias.detach().contiguous(),
                wg.fc2.weight.t().contiguous(),
                wg.fc2.bias.detach().contiguous(),
                pad(glu[:n].t(), (dw, p)),
                pad(wg.glu.fc.bias[:n], (p,)),
                pad(glu[n:].t(), (dw, p)),
                pad(wg.glu.fc.bias[n:], (p,)),
                pad(wg.norm.weight, (p,)),
                pad(wg.norm.bias, (p,)),
            ]
        self.n_vars, self.hidden = self.w2.shape[0], self.w2.shape[1]
        self.d, self.p, self.dw = self.ew.shape[1], p, dw
        self.precision = precision

    @staticmethod
    def supports(vsn: torch.nn.Module) -> bool:
        """Kernel shape limits: GRN widths powers of two >= 16 (tl.dot), identity skip."""
        g, wg = vsn.var_grns, vsn.weight_grn
        h, d, dw = g.w2.shape[1], g.emb_w.shape[2], wg.fc1.out_features
        pow2 = all(v >= 16 and v & (v - 1) == 0 for v in (h, d, dw))
        return pow2 and isinstance(wg.skip, torch.nn.Identity) and wg.fc2.out_features == dw

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, F) standardised inputs -> the selected (N, d) float32 (weights and mix)."""
        x = x.float().contiguous()
        n = x.shape[0]
        split = n <= SPLIT_ROWS
        block = 16 if n <= 4096 else 64
        if split:
            out = torch.empty((self.n_vars, n, self.d), device=x.device, dtype=torch.float32)
            grid: tuple[int, ...] = (triton.cdiv(n, block), self.n_vars)
        else:
            out = torch.empty((n, self.d), device=x.device, dtype=torch.float32)
            grid = (triton.cdiv(n, block),)
        args: list[Any] = [self.w1, self.b1, self.w2, self.b2, self.wg, self.bg]
        args += [self.ew, self.eb, self.nw, self.nb, *self.grn]
        _vsn_kernel[grid](
            x,
            out,
            n,
            *args,
            N_VARS=self.n_vars,
            P=self.p,
            DW=self.dw,
            SPLIT=split,
            D=self.d,
            H=self.hidden,
            BLOCK=block,
            PRECISION=DOT_PRECISION[self.precision],
            BF16=self.precision == "bf16",
            EPS=1e-5,
            num_warps=4,
        )
        return out.sum(dim=0) if split else out
