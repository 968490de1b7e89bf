"""A compact Temporal Fusion Transformer (Lim et al. 2019) for binary classification.

Only observed past inputs (no static covariates, no known future inputs), one output: the logit
at the last time step. The pieces, in order:

1. per-feature embeddings: each scalar feature ``x_f`` -> ``x_f * W_f + b_f`` in ``d_model``;
2. variable selection network: one gated residual network (GRN) per feature over its embedding,
   combined with softmax weights over the features from a GRN over all features;
3. LSTM encoder, then a gated skip connection + add & norm (back to the selected inputs);
4. interpretable multi-head attention (per-head queries and keys, one value projection shared
   by all heads, head outputs averaged) under a causal mask, then gate + add & norm;
5. a position-wise GRN, a gate + add & norm back to the LSTM output, and a linear head on the
   last time step.

:meth:`TemporalFusionTransformer.interpret` returns the variable-selection weights and the
attention weights next to the logit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TFTConfig:
    """Shape of the TFT. Defaults give 90,621 parameters at ``n_features=29``."""

    n_features: int = 29  # F, input variables per time step (DEFAULT_SCHEMA)
    window: int = 64  # T, time steps (size of the causal mask)
    d_model: int = 32  # width of embeddings, LSTM, attention and GRNs
    var_hidden: int = 16  # hidden width of each per-variable GRN (runs B*T*F times: keep small)
    ff_hidden: int = 64  # hidden width of the position-wise GRN
    n_heads: int = 4
    dropout: float = 0.1  # training only

    def __post_init__(self) -> None:
        assert self.d_model % self.n_heads == 0, "d_model must be divisible by n_heads"


class GatedLinearUnit(nn.Module):
    """GLU(x) = sigmoid(W4 x + b4) * (W5 x + b5), as one Linear to 2*d_out."""

    def __init__(self, d_in: int, d_out: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(d_in, 2 * d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_in) -> (..., d_out)."""
        return F.glu(self.fc(self.dropout(x)), dim=-1)


class GateAddNorm(nn.Module):
    """LayerNorm(skip + GLU(x)): the gated skip connection of the TFT."""

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.glu = GatedLinearUnit(d_model, d_model, dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """x, skip: (..., d_model) -> (..., d_model)."""
        return self.norm(skip + self.glu(x))


class GatedResidualNetwork(nn.Module):
    """GRN(a) = LayerNorm(skip(a) + GLU(W1 ELU(W2 a + b2) + b1))."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_hidden)
        self.glu = GatedLinearUnit(d_hidden, d_out, dropout)
        self.skip = nn.Linear(d_in, d_out) if d_in != d_out else nn.Identity()
        self.norm = nn.LayerNorm(d_out)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        """a: (..., d_in) -> (..., d_out)."""
        h = self.fc2(F.elu(self.fc1(a)))  # (..., d_hidden)
        return self.norm(self.skip(a) + self.glu(h))


def _uniform(shape: tuple[int, ...], fan_in: int) -> nn.Parameter:
    """A parameter initialised like nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


class VariableGRNs(nn.Module):
    """Per-feature embeddings x_f * W_f + b_f (d wide), then F independent GRNs (d -> h -> d)."""

    def __init__(self, n_vars: int, d_model: int, d_hidden: int, dropout: float) -> None:
        super().__init__()
        v, d, h = n_vars, d_model, d_hidden
        self.emb_w = nn.Parameter(torch.randn(v, 1, d) * 0.5)  # (F, 1, d)
        self.emb_b = nn.Parameter(torch.zeros(v, 1, d))  # (F, 1, d)
        self.w1, self.b1 = _uniform((v, d, h), d), _uniform((v, 1, h), d)
        self.w2, self.b2 = _uniform((v, h, h), h), _uniform((v, 1, h), h)
        self.w_glu, self.b_glu = _uniform((v, h, 2 * d), h), _uniform((v, 1, 2 * d), h)
        self.norm_w = nn.Parameter(torch.ones(v, 1, d))
        self.norm_b = nn.Parameter(torch.zeros(v, 1, d))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (F, N, 1) scalar inputs at N = B*T steps -> (F, N, d)."""
        e = torch.addcmul(self.emb_b, x, self.emb_w)  # (F, N, d) the per-feature embeddings
        # fc1(e) = (x * emb_w + emb_b) @ w1 + b1 = x * (emb_w @ w1) + (emb_b @ w1 + b1): the same
        # numbers as a matmul over e, without a narrow (F, N, d) @ (F, d, h) bmm (slow on CPU).
        w1 = self.emb_w @ self.w1  # (F, 1, h)
        b1 = torch.baddbmm(self.b1, self.emb_b, self.w1)  # (F, 1, h)
        h = F.elu(torch.addcmul(b1, x, w1))  # (F, N, h)
        h = torch.baddbmm(self.b2, h, self.w2)  # (F, N, h)
        g = torch.baddbmm(self.b_glu, self.dropout(h), self.w_glu)  # (F, N, 2d)
        out = F.layer_norm(e + F.glu(g, dim=-1), e.shape[-1:])  # (F, N, d)
        return torch.addcmul(self.norm_b, out, self.norm_w)  # per-variable LayerNorm affine


class VariableSelection(nn.Module):
    """Variable selection network: per-variable GRNs mixed by softmax weights over variables."""

    def __init__(self, config: TFTConfig) -> None:
        super().__init__()
        n, d = config.n_features, config.d_model
        self.var_grns = VariableGRNs(n, d, config.var_hidden, config.dropout)
        # The paper's weight GRN reads the flattened embeddings (F*d values). Each embedding is
        # affine in its scalar input, so a GRN over the F raw values has the same first layer
        # function class at 1/d of the cost.
        self.weight_grn = GatedResidualNetwork(n, d, n, config.dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, F) -> selected (B, T, d), weights (B, T, F) summing to 1 over F."""
        b, t, n = x.shape
        # Variables first, (F, N, .) with N = B*T, so each per-variable matmul is contiguous.
        v = self.var_grns(x.reshape(b * t, n).t().unsqueeze(-1))  # (F, N, d)
        w = torch.softmax(self.weight_grn(x), dim=-1)  # (B, T, F)
        wf = w.reshape(b * t, n).t().unsqueeze(-1)  # (F, N, 1)
        selected = (wf * v).sum(dim=0)  # (N, d)
        return selected.view(b, t, -1), w


class InterpretableMultiHeadAttention(nn.Module):
    """Multi-head attention with one value projection shared by all heads, heads averaged."""

    def __init__(self, d_model: int, n_heads: int, window: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.q = nn.Linear(d_model, n_heads * self.d_head)  # per-head queries
        self.k = nn.Linear(d_model, n_heads * self.d_head)  # per-head keys
        self.v = nn.Linear(d_model, self.d_head)  # one value projection, shared
        self.out = nn.Linear(self.d_head, d_model)
        self.dropout = nn.Dropout(dropout)
        # Additive causal mask (T, T): step t attends to steps <= t. Not saved in state_dict.
        mask = torch.full((window, window), float("-inf")).triu(diagonal=1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, d) -> out (B, T, d), attention weights averaged over heads (B, T, T)."""
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, dh)
        k = self.k(x).view(b, t, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, dh)
        v = self.v(x).unsqueeze(1)  # (B, 1, T, dh), shared by the heads
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head)  # (B, H, T, T)
        attn = torch.softmax(scores + self.mask[:t, :t], dim=-1)  # (B, H, T, T)
        heads = self.dropout(attn) @ v  # (B, H, T, dh)
        return self.out(heads.mean(dim=1)), attn.mean(dim=1)


class TemporalFusionTransformer(nn.Module):
    """Compact TFT: (B, T, F) standardised features -> logit (B,) for the last time step."""

    def __init__(self, config: TFTConfig) -> None:
        super().__init__()
        self.config = config
        d, p = config.d_model, config.dropout
        self.vsn = VariableSelection(config)
        self.lstm = nn.LSTM(d, d, num_layers=1, batch_first=True)
        self.lstm_gate = GateAddNorm(d, p)
        self.attn = InterpretableMultiHeadAttention(d, config.n_heads, config.window, p)
        self.attn_gate = GateAddNorm(d, p)
        self.ff = GatedResidualNetwork(d, config.ff_hidden, d, p)  # position-wise
        self.out_gate = GateAddNorm(d, p)
        self.head = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, F) standardised features -> logit (B,)."""
        logit, _, _ = self._run(x)
        return logit

    def interpret(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, T, F) -> {"logit": (B,), "variable_weights": (B, T, F), "attention": (B, T, T)}.

        ``variable_weights[b, t, f]`` is the softmax weight of feature f at step t (sums to 1
        over f); ``attention[b, i, j]`` is the head-averaged weight of step j for query step i
        (zero for j > i).
        """
        logit, var_w, attn = self._run(x)
        return {"logit": logit, "variable_weights": var_w, "attention": attn}

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.config
        assert x.ndim == 3 and x.shape[2] == cfg.n_features, f"bad input {tuple(x.shape)}"
        assert x.shape[1] <= cfg.window, f"window {x.shape[1]} > config.window {cfg.window}"
        selected, var_w = self.vsn(x)  # (B, T, d), (B, T, F)
        enc, _ = self.lstm(selected)  # (B, T, d)
        phi = self.lstm_gate(enc, skip=selected)  # (B, T, d)
        att, attn_w = self.attn(phi)  # (B, T, d), (B, T, T)
        beta = self.attn_gate(att, skip=phi)  # (B, T, d)
        psi = self.out_gate(self.ff(beta), skip=phi)  # (B, T, d)
        logit = self.head(psi[:, -1, :]).squeeze(-1)  # (B,)
        return logit, var_w, attn_w
