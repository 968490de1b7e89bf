"""LSTM base model: a stacked LSTM over the feature window, a small MLP head on the last step.

Input is a standardised feature window ``(B, T, F)``; output is one logit per row ``(B,)``
(the log-odds that the forward return is positive).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LSTMConfig:
    """Shape of the LSTM classifier. Defaults give 59,713 parameters at ``n_features=29``."""

    n_features: int = 29  # F, features per time step (DEFAULT_SCHEMA)
    hidden: int = 64  # LSTM hidden size
    layers: int = 2  # stacked LSTM layers
    dropout: float = 0.1  # between LSTM layers and in the head (training only)
    head_hidden: int = 32  # width of the MLP head


class LSTMClassifier(nn.Module):
    """Stacked LSTM -> last hidden state -> MLP -> logit."""

    def __init__(self, config: LSTMConfig) -> None:
        super().__init__()
        self.config = config
        self.lstm = nn.LSTM(
            input_size=config.n_features,
            hidden_size=config.hidden,
            num_layers=config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        self.head = nn.Sequential(
            nn.Linear(config.hidden, config.head_hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.head_hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, F) standardised features -> logit (B,)."""
        assert x.ndim == 3 and x.shape[2] == self.config.n_features, f"bad input {tuple(x.shape)}"
        out, _ = self.lstm(x)  # (B, T, H)
        last = out[:, -1, :]  # (B, H): the state after the newest bar
        return self.head(last).squeeze(-1)  # (B,)
