"""``mlsignal train``: data -> walk-forward OOF -> stack + calibration -> final fit -> bundle."""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

import mlsignal
from mlsignal.bundle import GOLDEN_FILE, WEIGHTS_FILE, write_bundle
from mlsignal.config import resolve_device
from mlsignal.data import load_dataset
from mlsignal.features import DEFAULT_SCHEMA
from mlsignal.models.fusion import FusionConfig
from mlsignal.models.garch import fit_garch
from mlsignal.models.kelly import KellyConfig, fit_kelly_params
from mlsignal.models.signal_model import SignalModel, SignalModelConfig
from mlsignal.models.stack import apply_calibration, apply_stack, fit_calibration, fit_stack
from mlsignal.training.dataset import Dataset, build_dataset
from mlsignal.training.fit import (
    Scaler,
    fit_classifier,
    keep_freed_memory,
    predict_logits,
    seed_everything,
)
from mlsignal.training.metrics import classification_metrics
from mlsignal.training.presets import Preset, get_preset
from mlsignal.training.splits import Fold, holdout_tail, purged_walk_forward

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """Where the bundle went and what it measured out of sample."""

    path: Path
    model_version: str
    contract_hash: str
    metrics: dict[str, dict[str, float]]
    seconds: float


def _fit_base_pair(
    ds: Dataset,
    idx: np.ndarray,
    cfg: SignalModelConfig,
    p: Preset,
    dev: str,
    seed: int,
    tag: str,
    progress: bool,
) -> tuple[Any, Any, Scaler]:
    """Fit the LSTM and the TFT on samples ``idx`` (early stopping on their purged tail)."""
    fit_idx, val_idx = holdout_tail(idx, ds.start, ds.end, p.val_frac, p.embargo)
    scaler = Scaler.fit(ds.X[fit_idx])
    train = (ds.X[fit_idx], ds.y[fit_idx])
    val = (ds.X[val_idx], ds.y[val_idx])
    torch.manual_seed(seed)
    model = SignalModel(cfg)  # fresh, seeded base models
    lstm, _ = fit_classifier(
        model.lstm, train, val, scaler, p.lstm_fit, seed, dev, f"{tag} lstm", progress
    )
    tft, _ = fit_classifier(
        model.tft, train, val, scaler, p.tft_fit, seed + 1, dev, f"{tag} tft", progress
    )
    return lstm, tft, scaler


def _oof_logits(
    ds: Dataset,
    folds: list[Fold],
    cfg: SignalModelConfig,
    p: Preset,
    dev: str,
    seed: int,
    progress: bool,
    echo: Callable[[str], None],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-fold base logits ``(M, 2)`` for every test sample, their indices and fold ids."""
    idx, logits, fold_id = [], [], []
    for fold in folds:
        first, last = (np.datetime_as_string(ds.ts[fold.test[i]], "D") for i in (0, -1))
        echo(
            f"fold {fold.index + 1}/{len(folds)}: train on {len(fold.train)} windows, "
            f"test on {len(fold.test)} ({first}..{last})"
        )
        lstm, tft, scaler = _fit_base_pair(
            ds, fold.train, cfg, p, dev, seed + 10 * fold.index, f"fold {fold.index + 1}", progress
        )
        X = ds.X[fold.test]
        pair = np.stack(
            [predict_logits(lstm, X, scaler, dev), predict_logits(tft, X, scaler, dev)], axis=1
        )
        idx.append(fold.test)
        logits.append(pair)
        fold_id.append(np.full(len(fold.test), fold.index))
    return np.concatenate(idx), np.concatenate(logits), np.concatenate(fold_id)


def _stack_walk_forward(
    logits: np.ndarray, y: np.ndarray, fold_id: np.ndarray, n_knots: int
) -> tuple[np.ndarray, np.ndarray]:
    """Honest stack metrics: meta-learner + calibration fitted on earlier folds only."""
    probs, ys = [], []
    for k in np.unique(fold_id)[1:]:
        past, now = fold_id < k, fold_id == k
        w, b = fit_stack(logits[past], y[past])
        cx, cy = fit_calibration(apply_stack(logits[past], w, b), y[past], n_knots)
        probs.append(apply_calibration(apply_stack(logits[now], w, b), cx, cy))
        ys.append(y[now])
    return np.concatenate(ys), np.concatenate(probs)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _oof_metrics(
    logits: np.ndarray, y: np.ndarray, fold_id: np.ndarray, n_knots: int
) -> dict[str, dict[str, float]]:
    metrics = {
        "lstm": classification_metrics(y, _sigmoid(logits[:, 0])),
        "tft": classification_metrics(y, _sigmoid(logits[:, 1])),
    }
    if len(np.unique(fold_id)) > 1:
        ys, ps = _stack_walk_forward(logits, y, fold_id, n_knots)
        metrics["stack"] = classification_metrics(ys, ps)
    return metrics


def _golden(model: SignalModel, ds: Dataset, scaler: Scaler, n: int, seed: int):
    """Golden inputs (latest real windows and random ones) and expected CPU float32 outputs."""
    rng = np.random.default_rng(seed)
    real = ds.X[-(n // 2) :]
    shape = (n - len(real), *ds.X.shape[1:])
    rand = (rng.standard_normal(shape) * scaler.std + scaler.mean).astype(np.float32)
    inputs = np.concatenate([real, rand]).astype(np.float32)
    with torch.inference_mode():
        expected = model.cpu()(torch.from_numpy(inputs)).numpy()
    return inputs, expected


def _assemble(
    cfg: SignalModelConfig,
    lstm: nn.Module,
    tft: nn.Module,
    scaler: Scaler,
    stack: tuple[np.ndarray, float],
    calib: tuple[np.ndarray, np.ndarray],
) -> SignalModel:
    model = SignalModel(cfg)
    model.lstm.load_state_dict(lstm.state_dict())
    model.tft.load_state_dict(tft.state_dict())
    model.set_scaler(scaler.mean, scaler.std)
    model.set_stack(*stack)
    model.set_calibration(*calib)
    return model.cpu().eval()


def _span(ds: Dataset) -> list[str]:
    return [
        str(np.datetime_as_string(ds.ts.min(), "s")),
        str(np.datetime_as_string(ds.ts.max(), "s")),
    ]


def train_bundle(
    data: str,
    out: str | Path,
    preset: str = "quick",
    device: str | None = "auto",
    seed: int = 0,
    progress: bool = True,
    shuffle_labels: bool = False,
    holdout_bars: int = 0,
    echo: Callable[[str], None] = log.info,
    onnx: bool | None = None,
) -> TrainResult:
    """Train the whole stack on ``data`` (sample names or files) and write a bundle to ``out``.

    ``shuffle_labels`` permutes the labels (a control run: it must show no skill).
    ``holdout_bars`` keeps the last bars of every symbol out of training entirely, so a
    replay of them (``mlsignal demo``) is out of sample. ``onnx`` exports ``model.onnx``
    into the bundle (``None``: when onnx and onnxruntime are installed).
    """
    t0 = time.perf_counter()
    p, dev = get_preset(preset), resolve_device(device)
    seed_everything(seed)
    keep_freed_memory()
    bars = load_dataset(data)
    if holdout_bars > 0:
        bars = {k: b.iloc[:-holdout_bars] for k, b in bars.items()}
    ds = build_dataset(bars, DEFAULT_SCHEMA, p.labels, p.max_samples_per_symbol)
    if shuffle_labels:
        ds = Dataset(ds.X, np.random.default_rng(seed).permutation(ds.y), *_rest(ds))
    echo(
        f"data {data}: {len(ds)} windows from {len(bars)} symbol(s), {_span(ds)[0]}..{_span(ds)[1]}"
    )
    cfg = SignalModelConfig.for_shape(DEFAULT_SCHEMA.n_features, DEFAULT_SCHEMA.window)
    folds = purged_walk_forward(ds.start, ds.end, p.n_folds, p.embargo, p.initial_train_frac)
    echo(f"walk-forward: {len(folds)} purged folds (embargo {p.embargo} bars) on {dev}")
    oof_idx, oof, fold_id = _oof_logits(ds, folds, cfg, p, dev, seed, progress, echo)
    y_oof = ds.y[oof_idx]
    metrics = _oof_metrics(oof, y_oof, fold_id, cfg.n_calib_knots)
    stack = fit_stack(oof, y_oof)
    calib = fit_calibration(apply_stack(oof, *stack), y_oof, cfg.n_calib_knots)
    echo("final fit on all samples")
    lstm, tft, scaler = _fit_base_pair(ds, np.arange(len(ds)), cfg, p, dev, seed, "final", progress)
    model = _assemble(cfg, lstm, tft, scaler, stack, calib)
    returns = np.concatenate([np.diff(np.log(b["close"].to_numpy())) for b in bars.values()])
    config = {
        "schema": DEFAULT_SCHEMA.to_dict(),
        "model": cfg.to_dict(),
        "garch": fit_garch(returns, horizon=p.labels.horizon).to_dict(),
        "kelly_params": _asdict(fit_kelly_params(ds.fwd)),
        "kelly_config": _asdict(KellyConfig()),
        "fusion": _asdict(FusionConfig()),
        "labels": p.labels.to_dict(),
    }
    inputs, expected = _golden(model, ds, scaler, p.n_golden, seed)
    files = {
        WEIGHTS_FILE: lambda f: torch.save(model.state_dict(), f),
        GOLDEN_FILE: lambda f: _save_npz(f, inputs=inputs, expected=expected),
    }
    extra = _manifest_extra(data, bars, ds, p, dev, seed, shuffle_labels, metrics, len(folds))
    extra["training"]["holdout_bars"] = holdout_bars
    path = write_bundle(out, files, config, extra)
    if onnx or (onnx is None and _onnx_available()):
        from mlsignal.onnx_export import export_onnx

        section = export_onnx(path)
        echo(
            f"model.onnx exported (opset {section['opset']}, |diff| {section['max_abs_diff']:.2g})"
        )
    from mlsignal.bundle import load_bundle

    bundle = load_bundle(path)
    return TrainResult(
        path, bundle.model_version, bundle.contract_hash, metrics, time.perf_counter() - t0
    )


def _onnx_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))


def _rest(ds: Dataset) -> tuple:
    return (ds.fwd, ds.symbol, ds.start, ds.end, ds.ts, ds.symbols)


def _asdict(obj: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(obj)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _manifest_extra(
    data: str,
    bars: Mapping[str, pd.DataFrame],
    ds: Dataset,
    p: Preset,
    dev: str,
    seed: int,
    shuffled: bool,
    metrics: dict[str, dict[str, float]],
    n_folds: int,
) -> dict[str, Any]:
    name = "+".join(bars) + ("-shuffled" if shuffled else "")
    return {
        "model_name": name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mlsignal_version": mlsignal.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "training": {
            "data": data,
            "symbols": list(bars),
            "span": _span(ds),
            "n_samples": len(ds),
            "n_folds": n_folds,
            "preset": p.to_dict(),
            "seed": seed,
            "device": dev,
            "shuffled_labels": shuffled,
        },
        "metrics": metrics,
    }
