"""``mlsignal train``: data -> walk-forward OOF (metrics, baselines, verdict) -> final fit
before a calibration segment -> stack + calibration on that segment -> bundle."""

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
from mlsignal.data import load_dataset, timeframe
from mlsignal.errors import ConfigError
from mlsignal.features import DEFAULT_SCHEMA
from mlsignal.models.fusion import FusionConfig
from mlsignal.models.garch import fit_garch
from mlsignal.models.kelly import KellyConfig, fit_kelly_params
from mlsignal.models.signal_model import SignalModel, SignalModelConfig
from mlsignal.models.stack import apply_calibration, apply_stack, fit_calibration, fit_stack
from mlsignal.training.baselines import fit_baselines, predict_baselines
from mlsignal.training.calibrate import Calibration, calibrate
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
from mlsignal.training.skill import ALPHA, default_block, information_coefficient, skill_nulls
from mlsignal.training.skill import verdict as skill_verdict
from mlsignal.training.splits import Fold, holdout_tail, purged_walk_forward

log = logging.getLogger(__name__)

#: ``mlsignal train``'s default held-out tail: this share of the shortest symbol's bars.
HOLDOUT_FRAC = 0.1


@dataclass(frozen=True)
class TrainResult:
    """Where the bundle went and what it measured out of sample."""

    path: Path
    model_version: str
    contract_hash: str
    metrics: dict[str, dict[str, float]]
    seconds: float
    verdict: dict[str, Any]
    calibration: dict[str, Any]


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


@dataclass(frozen=True)
class Oof:
    """Out-of-fold outputs: sample indices ``idx`` (M,), base ``logits`` (M, 2), ``fold_id``
    (M,) and each baseline's probabilities (M,)."""

    idx: np.ndarray
    logits: np.ndarray
    fold_id: np.ndarray
    baselines: dict[str, np.ndarray]


def _oof_outputs(
    ds: Dataset,
    folds: list[Fold],
    cfg: SignalModelConfig,
    p: Preset,
    dev: str,
    seed: int,
    progress: bool,
    echo: Callable[[str], None],
) -> Oof:
    """Every fold's test samples scored by the LSTM, TFT and baselines of that fold."""
    idx, logits, fold_id, base = [], [], [], []
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
        baselines = fit_baselines(ds.X[fold.train], ds.y[fold.train], seed + fold.index)
        base.append(predict_baselines(baselines, X))
        idx.append(fold.test)
        logits.append(pair)
        fold_id.append(np.full(len(fold.test), fold.index))
    names = base[0].keys() if base else ()
    return Oof(
        np.concatenate(idx),
        np.concatenate(logits),
        np.concatenate(fold_id),
        {k: np.concatenate([b[k] for b in base]) for k in names},
    )


def _stack_walk_forward(
    logits: np.ndarray, y: np.ndarray, fold_id: np.ndarray, n_knots: int
) -> tuple[np.ndarray, np.ndarray]:
    """Honest stack probabilities: meta-learner + calibration fitted on earlier folds only.
    Returns (positions into the OOF arrays, probabilities), folds after the first."""
    rows, probs = [], []
    for k in np.unique(fold_id)[1:]:
        past, now = fold_id < k, fold_id == k
        w, b = fit_stack(logits[past], y[past])
        cx, cy = fit_calibration(apply_stack(logits[past], w, b), y[past], n_knots)
        probs.append(apply_calibration(apply_stack(logits[now], w, b), cx, cy))
        rows.append(np.flatnonzero(now))
    return np.concatenate(rows), np.concatenate(probs)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _metrics(y: np.ndarray, p: np.ndarray, fwd: np.ndarray) -> dict[str, float]:
    return {**classification_metrics(y, p), "ic": information_coefficient(p, fwd)}


def _oof_metrics(
    ds: Dataset, oof: Oof, n_knots: int, block: int, seed: int
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Walk-forward metrics of every model (IC beside AUC) and the verdict, in words, of
    the stack (of the TFT with a single fold) from its block nulls and the base rate."""
    y, fwd = ds.y[oof.idx], ds.fwd[oof.idx]
    outputs = {"lstm": _sigmoid(oof.logits[:, 0]), "tft": _sigmoid(oof.logits[:, 1])}
    metrics = {k: _metrics(y, v, fwd) for k, v in outputs.items()}
    rows, judged = np.arange(len(y)), "tft"
    if len(np.unique(oof.fold_id)) > 1:
        rows, ps = _stack_walk_forward(oof.logits, y, oof.fold_id, n_knots)
        metrics["stack"] = _metrics(y[rows], ps, fwd[rows])
        outputs["stack"], judged = ps, "stack"
    metrics.update({k: _metrics(y, v, fwd) for k, v in oof.baselines.items()})
    yj, pj = y[rows], outputs[judged]
    nulls = skill_nulls(yj, pj, fwd[rows], ds.symbol[oof.idx][rows], block, 200, seed)
    m = metrics[judged]
    words = skill_verdict(
        nulls, m["brier"], m["base_rate"] * (1 - m["base_rate"]),
        reference="the test periods' own base rate on every bar (known only in hindsight)",
    )  # fmt: skip
    nulls.pop("null_auc")
    return metrics, {**words, "model": judged, "nulls": nulls}


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
    holdout_bars: int | None = 0,
    echo: Callable[[str], None] = log.info,
    onnx: bool | None = None,
    skill_alpha: float = ALPHA,
) -> TrainResult:
    """Train the whole stack on ``data`` (sample names or files) and write a bundle to ``out``.

    ``shuffle_labels`` permutes the labels (a control run: it must show no skill).
    ``holdout_bars`` keeps the last bars of every symbol out of training entirely, so a
    replay of them (``mlsignal demo``) or ``mlsignal evaluate`` is out of sample (``None``:
    :data:`HOLDOUT_FRAC` of the shortest symbol's bars). ``onnx`` exports ``model.onnx``
    into the bundle (``None``: when onnx and onnxruntime are installed). ``skill_alpha``: the
    level at which the calibration segment must show ranking skill for a fitted calibration
    map to ship (else bull_prob is the base rate on every bar; 1.0 always ships the map).
    """
    t0 = time.perf_counter()
    p, dev = get_preset(preset), resolve_device(device)
    seed_everything(seed)
    keep_freed_memory()
    bars = load_dataset(data)
    if holdout_bars is not None and holdout_bars < 0:
        raise ConfigError(f"holdout_bars must be >= 0, got {holdout_bars}")
    if holdout_bars is None:
        holdout_bars = int(HOLDOUT_FRAC * min(len(b) for b in bars.values()))
        echo(f"holding out the last {holdout_bars} bars of each symbol for evaluate")
    if holdout_bars > 0:
        bars = {k: b.iloc[:-holdout_bars] for k, b in bars.items()}
    ds = build_dataset(bars, DEFAULT_SCHEMA, p.labels, p.max_samples_per_symbol)
    if shuffle_labels:
        ds = Dataset(ds.X, np.random.default_rng(seed).permutation(ds.y), *_rest(ds))
    echo(
        f"data {data}: {len(ds)} windows from {len(bars)} symbol(s), {_span(ds)[0]}..{_span(ds)[1]}"
    )
    cfg = SignalModelConfig.for_shape(DEFAULT_SCHEMA.n_features, DEFAULT_SCHEMA.window)
    tf = timeframe.learn({k: _bar_seconds(b) for k, b in bars.items()})  # all the gaps
    folds = purged_walk_forward(ds.start, ds.end, p.n_folds, p.embargo, p.initial_train_frac)
    echo(f"walk-forward: {len(folds)} purged folds (embargo {p.embargo} bars) on {dev}")
    oof = _oof_outputs(ds, folds, cfg, p, dev, seed, progress, echo)
    block = default_block(p.labels.horizon)
    metrics, verdict = _oof_metrics(ds, oof, cfg.n_calib_knots, block, seed)
    fit_idx, cal_idx = holdout_tail(np.arange(len(ds)), ds.start, ds.end, p.calib_frac, p.embargo)
    echo(
        f"final fit on {len(fit_idx)} windows; stack and calibration on the next "
        f"{len(cal_idx)} (a calibration segment the final models never see)"
    )
    lstm, tft, scaler = _fit_base_pair(ds, fit_idx, cfg, p, dev, seed, "final", progress)
    X = ds.X[cal_idx]
    cal_logits = np.stack(
        [predict_logits(lstm, X, scaler, dev), predict_logits(tft, X, scaler, dev)], axis=1
    )
    cal = calibrate(
        cal_logits, ds.y[cal_idx], ds.fwd[cal_idx], ds.symbol[cal_idx],
        block=block, n_knots=cfg.n_calib_knots, alpha=skill_alpha, seed=seed,
    )  # fmt: skip
    model = _assemble(cfg, lstm, tft, scaler, cal.stack, cal.knots)
    returns = np.concatenate([np.diff(np.log(b["close"].to_numpy())) for b in bars.values()])
    config = {
        "schema": DEFAULT_SCHEMA.to_dict(),
        "model": cfg.to_dict(),
        "garch": fit_garch(returns, horizon=p.labels.horizon).to_dict(),
        "kelly_params": _asdict(fit_kelly_params(ds.fwd)),
        "kelly_config": _asdict(KellyConfig()),
        "fusion": _asdict(FusionConfig(base_rate=cal.base_rate)),
        "labels": p.labels.to_dict(),
        "timeframe": tf,
    }
    inputs, expected = _golden(model, ds, scaler, p.n_golden, seed)
    files = {
        WEIGHTS_FILE: lambda f: torch.save(model.state_dict(), f),
        GOLDEN_FILE: lambda f: _save_npz(f, inputs=inputs, expected=expected),
    }
    extra = _manifest_extra(data, bars, ds, p, dev, seed, shuffle_labels, metrics, len(folds))
    extra["training"]["holdout_bars"] = holdout_bars
    extra["training"]["folds"] = [_fold_record(ds, f) for f in folds]
    extra["training"]["calibration"] = _calibration_record(ds, fit_idx, cal_idx, cal)
    extra["verdict"] = verdict
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
        path,
        bundle.model_version,
        bundle.contract_hash,
        metrics,
        time.perf_counter() - t0,
        verdict,
        extra["training"]["calibration"],
    )


def _bar_seconds(bars: pd.DataFrame) -> float:
    """Median gap between all of a symbol's bars, in seconds."""
    t_ns = bars.index.values.astype("datetime64[ns]").astype(np.int64)
    return timeframe.median_interval(t_ns, gaps=None) or 0.0


def _ts(ds: Dataset, i: int) -> str:
    return str(np.datetime_as_string(ds.ts[i], "s"))


def _fold_record(ds: Dataset, fold: Fold) -> dict[str, Any]:
    """Where a fold's training ends and its test begins, on the global timeline (bars): the
    purge and embargo are ``test_first_pos - train_label_end_pos - 1`` bars of gap."""
    last = fold.train[np.argmax(ds.start[fold.train])]
    return {
        "index": fold.index,
        "train_n": len(fold.train),
        "test_n": len(fold.test),
        "train_last_sample": _ts(ds, last),
        "train_last_sample_pos": int(ds.start[fold.train].max()),
        "train_label_end_pos": int(ds.end[fold.train].max()),
        "test_first": _ts(ds, fold.test[0]),
        "test_last": _ts(ds, fold.test[-1]),
        "test_first_pos": int(ds.start[fold.test].min()),
    }


def _calibration_record(
    ds: Dataset, fit_idx: np.ndarray, cal_idx: np.ndarray, cal: Calibration
) -> dict[str, Any]:
    """The calibration segment, the final models' training data before it, and the fit."""
    return {
        "segment": {
            "first": _ts(ds, cal_idx[np.argmin(ds.start[cal_idx])]),
            "last": _ts(ds, cal_idx[np.argmax(ds.start[cal_idx])]),
            "first_pos": int(ds.start[cal_idx].min()),
            "n": len(cal_idx),
        },
        "final_models": {
            "n": len(fit_idx),
            "last_sample": _ts(ds, fit_idx[np.argmax(ds.start[fit_idx])]),
            "label_end_pos": int(ds.end[fit_idx].max()),
        },
        **cal.record,
    }


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
