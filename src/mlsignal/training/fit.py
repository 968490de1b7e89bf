"""Fitting one base classifier (LSTM or TFT) with early stopping on a purged tail."""

from __future__ import annotations

import copy
import ctypes
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


@dataclass(frozen=True)
class FitConfig:
    """Optimiser settings for one base model; ``patience`` in epochs."""

    epochs: int = 8
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    patience: int = 3

    def to_dict(self) -> dict[str, float | int]:
        """JSON-able form."""
        return asdict(self)


@dataclass(frozen=True)
class Scaler:
    """Per-feature standardisation ``(x - mean) / std`` over samples and time steps."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> Scaler:
        """Fit on windows ``(N, T, F)``."""
        flat = X.reshape(-1, X.shape[-1]).astype(np.float64)
        std = flat.std(axis=0)
        std[std < 1e-8] = 1.0  # a constant feature (e.g. zero volume) stays 0 after scaling
        return cls(flat.mean(axis=0).astype(np.float32), std.astype(np.float32))


def keep_freed_memory() -> None:
    """Ask glibc to keep freed blocks instead of unmapping them after every step.

    Training allocates the same tens-of-megabyte activations every batch; by default glibc
    returns such blocks to the kernel at once, and mapping them again costs page faults
    (measured: a third of the wall time of the tiny preset on 2 cores). A no-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        pass


def seed_everything(seed: int) -> None:
    """Seed torch and numpy; deterministic kernels where the device allows it."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    torch.use_deterministic_algorithms(True, warn_only=True)


def _batches(n: int, size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i : i + size] for i in range(0, n, size)]


def predict_logits(
    model: nn.Module, X: np.ndarray, scaler: Scaler, device: str, batch_size: int = 4096
) -> np.ndarray:
    """Logits ``(N,)`` of a base model on raw windows ``(N, T, F)``."""
    mean = torch.as_tensor(scaler.mean, device=device)
    std = torch.as_tensor(scaler.std, device=device)
    model.eval()
    out = []
    with torch.inference_mode():
        for idx in _batches(len(X), batch_size, None):
            xb = (torch.as_tensor(X[idx], device=device) - mean) / std
            out.append(model(xb).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    X: np.ndarray,
    y: np.ndarray,
    scaler: Scaler,
    cfg: FitConfig,
    device: str,
    rng: np.random.Generator,
) -> float:
    mean = torch.as_tensor(scaler.mean, device=device)
    std = torch.as_tensor(scaler.std, device=device)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    total = 0.0
    for idx in _batches(len(X), cfg.batch_size, rng):
        xb = (torch.as_tensor(X[idx], device=device) - mean) / std
        yb = torch.as_tensor(y[idx], device=device)
        loss = loss_fn(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        total += float(loss.detach()) * len(idx)
    return total / max(len(X), 1)


def _val_loss(model: nn.Module, X: np.ndarray, y: np.ndarray, scaler: Scaler, device: str) -> float:
    logits = torch.as_tensor(predict_logits(model, X, scaler, device))
    return float(nn.functional.binary_cross_entropy_with_logits(logits, torch.as_tensor(y)))


def fit_classifier(
    model: nn.Module,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    scaler: Scaler,
    cfg: FitConfig,
    seed: int,
    device: str,
    desc: str = "fit",
    progress: bool = True,
) -> tuple[nn.Module, dict[str, float]]:
    """Train ``model`` in place; keep the epoch with the lowest validation loss.

    Returns the model (best weights restored) and a small report.
    """
    model.to(device)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, best_state, best_epoch, stale = float("inf"), None, 0, 0
    bar = tqdm(range(cfg.epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        train_loss = _epoch(model, opt, *train, scaler, cfg, device, rng)
        val_loss = _val_loss(model, *val, scaler, device) if len(val[0]) else train_loss
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
        if val_loss < best - 1e-5:
            best, best_state, best_epoch, stale = (
                val_loss,
                copy.deepcopy(model.state_dict()),
                epoch,
                0,
            )
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, {"best_epoch": float(best_epoch + 1), "val_loss": best}
