"""Triple-barrier style labels on a volatility-scaled threshold.

For a bar ``t`` with close ``C_t``, ex-ante volatility ``sigma_t`` (std of the last
``vol_window`` one-bar log returns, known at ``t``) and horizon ``h``, the barrier is
``tau_t = k * sigma_t * sqrt(h)``. Along the path ``r_j = log(C_{t+j} / C_t)``, j = 1..h:

- label 1 (bull) if ``r_j >= +tau_t`` happens before ``r_j <= -tau_t``;
- label 0 if the lower barrier is touched first;
- if neither is touched within ``h`` bars (the vertical barrier), label 1 iff ``r_h > 0``.

The label of bar ``t`` uses bars ``t+1 .. t+h``: the last ``h`` bars have no label (NaN),
and the purged splits keep every training label's span out of the test period.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LabelConfig:
    """Horizon in bars, barrier width in sigmas, and the volatility look-back in bars."""

    horizon: int = 5
    k: float = 1.0
    vol_window: int = 20

    def to_dict(self) -> dict[str, float | int]:
        """JSON-able form."""
        return asdict(self)


def ex_ante_vol(close: np.ndarray, window: int) -> np.ndarray:
    """Rolling std of one-bar log returns ending at each bar ``(n,)``; NaN in the warm-up."""
    r = np.diff(np.log(close), prepend=np.nan)
    out = np.full(len(close), np.nan)
    if len(close) > window:
        win = np.lib.stride_tricks.sliding_window_view(r[1:], window)  # (n-window, window)
        out[window:] = win.std(axis=1, ddof=1)
    return out


def triple_barrier_labels(
    close: np.ndarray, config: LabelConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(labels, forward_returns)``, each ``(n,)`` float64, NaN where undefined.

    ``forward_returns`` is the ``h``-bar log return ``log(C_{t+h} / C_t)``.
    """
    config = config or LabelConfig()
    close = np.asarray(close, dtype=np.float64)
    n, h = len(close), config.horizon
    labels = np.full(n, np.nan)
    fwd = np.full(n, np.nan)
    if n <= h:
        return labels, fwd
    logc = np.log(close)
    m = n - h
    # paths[t, j-1] = log(C_{t+j} / C_t), shape (m, h)
    paths = np.stack([logc[j : j + m] for j in range(1, h + 1)], axis=1) - logc[:m, None]
    tau = config.k * ex_ante_vol(close, config.vol_window)[:m] * np.sqrt(h)
    up = paths >= tau[:, None]
    down = paths <= -tau[:, None]
    first_up = np.where(up.any(axis=1), up.argmax(axis=1), h)
    first_down = np.where(down.any(axis=1), down.argmax(axis=1), h)
    lab = np.where(
        first_up < first_down, 1.0, np.where(first_down < first_up, 0.0, paths[:, -1] > 0)
    )
    lab[~np.isfinite(tau)] = np.nan
    labels[:m] = lab
    fwd[:m] = paths[:, -1]
    return labels, fwd
