"""``mlsignal evaluate``: an out-of-sample report for a bundle on a data set.

Steps: pick the bars that are out of sample for the bundle (:mod:`.periods`), enhance each
through the live code path (:mod:`.scoring`), score plain baselines fitted on the bundle's
training data beside it (:mod:`.baselines`), score the probabilities against the
triple-barrier labels and forward returns (:mod:`.metrics`) with block permutation nulls and a
verdict (:mod:`.nulls`), measure how far the fusion moved the scores (:mod:`.fusion_effect`),
backtest raw against enhanced scores annualised per symbol (:mod:`.backtest`,
:mod:`.annualise`), repeat both with the model's information shuffled away in blocks
(:mod:`.controls`), and write ``metrics.json``, ``signals.csv``, PNG plots and ``index.html``
(:mod:`.report`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlsignal.bundle import Bundle, load_bundle
from mlsignal.errors import BundleError, ConfigError, DataError
from mlsignal.evaluate.annualise import annualisation
from mlsignal.evaluate.baselines import Baselines, add_baseline_columns, fit_on_training_data
from mlsignal.evaluate.fusion_effect import fusion_effect
from mlsignal.evaluate.nulls import null_block, report_verdict
from mlsignal.evaluate.periods import TrainingSpan, in_sample_mask, oos_mask, training_span
from mlsignal.evaluate.scoring import label_bars, score_bars
from mlsignal.evaluate.study import classification_section, trading_section
from mlsignal.training.labels import LabelConfig

log = logging.getLogger(__name__)

#: Fewer labelled bars than this in the pooled evaluation: the report warns that it is noisy.
FEW_SAMPLES = 250


@dataclass(frozen=True)
class EvalOptions:
    """How to evaluate. ``period``: ``after`` (forward, the honest default) or ``before`` the
    training span; ``allow_in_sample`` evaluates every bar the filters keep, in-sample ones
    included (the report then says it is not honest); ``start``/``end`` (dates) and ``last``
    (bars per symbol) narrow the selection; ``threshold`` (score points) and ``cost_bps``
    drive the backtest; ``bars_per_year`` of ``None`` is measured per symbol from its own
    bars; ``block`` (bars) is the block length of every permutation null and control
    (``None``: ``max(20, 4 * label horizon)``, never shorter than the horizon);
    ``allow_timeframe_mismatch`` scores bars of another interval than the training data."""

    period: str = "after"
    allow_in_sample: bool = False
    start: str | None = None
    end: str | None = None
    last: int | None = None
    threshold: float = 10.0
    cost_bps: float = 5.0
    bars_per_year: float | None = None
    seed: int = 0
    permutations: int = 200
    block: int | None = None
    bins: int = 10
    blocks: int = 4
    batch_size: int = 256
    device: str = "cpu"
    backend: str | None = None
    allow_timeframe_mismatch: bool = False

    def check(self) -> None:
        """Raise :class:`ConfigError` on a value that cannot work."""
        if self.last is not None and self.last < 1:
            raise ConfigError(f"last must be >= 1 bar, got {self.last}")
        if self.threshold < 0 or self.cost_bps < 0:
            raise ConfigError("threshold and cost_bps must be >= 0")
        if self.bars_per_year is not None and self.bars_per_year <= 0:
            raise ConfigError(f"bars_per_year must be > 0, got {self.bars_per_year}")
        if min(self.bins, self.blocks, self.batch_size) < 1 or self.permutations < 0:
            raise ConfigError("bins, blocks and batch_size must be >= 1, permutations >= 0")
        if self.block is not None and self.block < 1:
            raise ConfigError(f"block must be >= 1 bar, got {self.block}")


@dataclass(frozen=True)
class EvalResult:
    """Where the report went, its metrics, and the per-bar table."""

    out: Path
    metrics: dict[str, Any]
    table: pd.DataFrame
    seconds: float


def select_ends(
    bars: pd.DataFrame, min_bars: int, span: TrainingSpan | None, opts: EvalOptions
) -> np.ndarray:
    """Bar positions of one symbol to evaluate (see :class:`EvalOptions`)."""
    n = len(bars)
    keep = np.arange(n) >= min_bars - 1
    if span is not None and not opts.allow_in_sample:
        keep &= oos_mask(bars.index, span, opts.period)
    if opts.start is not None:
        keep &= bars.index >= _date(opts.start, "start")
    if opts.end is not None:
        keep &= bars.index <= _date(opts.end, "end")
    ends = np.flatnonzero(keep)
    return ends[-opts.last :] if opts.last is not None else ends


def _date(value: str, name: str) -> pd.Timestamp:
    try:
        return pd.Timestamp(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{name} {value!r} is not a date") from None


def _no_bars_message(
    symbol: str, bars: pd.DataFrame, span: TrainingSpan | None, opts: EvalOptions
) -> str:
    where = (
        f"{symbol}: none of its {len(bars)} bars ({bars.index[0].date()}..{bars.index[-1].date()})"
    )
    if span is None or opts.allow_in_sample:
        return f"{where} is selected by the filters"
    side = "after" if opts.period == "after" else "before"
    return (
        f"{where} is out of sample {side} the training span {span.start.date()}..{span.end.date()} "
        f"(purged by horizon {span.horizon} + embargo {span.embargo} bars)"
    )


def evaluate_bundle(
    bundle: str | Path | Bundle,
    data: str | None,
    out: str | Path,
    opts: EvalOptions | None = None,
    echo: Callable[[str], None] = log.info,
) -> EvalResult:
    """Evaluate ``bundle`` on ``data`` (sample names or files; ``None``: the bundle's own
    training data set, whose held-out tail is then the out-of-sample part) and write the
    report to ``out``. Raises :class:`DataError` when no bar is out of sample."""
    t0 = time.perf_counter()
    opts = opts or EvalOptions()
    opts.check()
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    span = _span_or_none(bundle, opts)
    data = data or (span.data if span is not None else "")
    if not data:
        raise ConfigError("no data set given and the bundle records none; pass --data")
    from mlsignal.data import load_dataset

    bars_by_symbol = load_dataset(data)
    selected = _select(bundle, bars_by_symbol, span, opts)
    echo(_selection_line(selected, bars_by_symbol))
    block = null_block(bundle, opts)
    enhancer = _enhancer(bundle, opts)
    table = _score_all(enhancer, bundle, bars_by_symbol, selected, span, opts, echo)
    baselines = _baselines(bundle, span, opts, echo)
    table = add_baseline_columns(table, baselines, bars_by_symbol, selected, bundle.schema)
    years = annualisation(bars_by_symbol, table, opts.bars_per_year)
    metrics = _assemble(bundle, span, data, opts, table, years, enhancer, baselines)
    metrics["classification"], cls_extra = classification_section(table, opts, block)
    metrics = {
        "verdict": report_verdict(
            metrics["classification"], metrics["selection"], FEW_SAMPLES, base_rate(bundle)
        ),
        **metrics,
    }
    metrics["fusion_effect"] = fusion_effect(table, base_rate(bundle))
    metrics["backtest"], curves = trading_section(
        bundle, table, opts, years["pooled"], block, years["per_symbol"]
    )
    metrics["seconds"] = time.perf_counter() - t0
    from mlsignal.evaluate.report import write_report

    out = write_report(Path(out), metrics, table, cls_extra, curves)
    metrics["seconds"] = time.perf_counter() - t0
    return EvalResult(out, metrics, table, metrics["seconds"])


def base_rate(bundle: Bundle) -> float:
    """The training base rate the bundle's fusion is centred on (0.5 if it records none)."""
    return bundle.fusion.base_rate


def _enhancer(bundle: Bundle, opts: EvalOptions) -> Any:
    from mlsignal.enhancer import MLSignalEnhancer

    return MLSignalEnhancer(
        bundle,
        device=opts.device,
        backend=opts.backend,
        remote_urls=(),
        allow_timeframe_mismatch=opts.allow_timeframe_mismatch,
    )


def _baselines(
    bundle: Bundle, span: TrainingSpan | None, opts: EvalOptions, echo: Callable[[str], None]
) -> Baselines:
    t = time.perf_counter()
    labels = LabelConfig(**bundle.config.get("labels", {}))
    b = fit_on_training_data(span, bundle.schema, labels, opts.seed)
    if b.models:
        echo(
            f"baselines: {' and '.join(b.models)} fitted on {b.info['samples']} training "
            f"samples in {time.perf_counter() - t:.1f} s"
        )
    else:
        echo(b.info["reason"])
    return b


def _span_or_none(bundle: Bundle, opts: EvalOptions) -> TrainingSpan | None:
    try:
        return training_span(bundle)
    except BundleError:
        if opts.allow_in_sample:
            return None
        raise


def _select(
    bundle: Bundle,
    bars_by_symbol: Mapping[str, pd.DataFrame],
    span: TrainingSpan | None,
    opts: EvalOptions,
) -> dict[str, np.ndarray]:
    selected, reasons = {}, []
    for symbol, bars in bars_by_symbol.items():
        ends = select_ends(bars, bundle.min_bars, span, opts)
        if len(ends):
            selected[symbol] = ends
        else:
            reasons.append(_no_bars_message(symbol, bars, span, opts))
    for r in reasons:
        log.warning("skipping %s", r)
    if not selected:
        hint = (
            "; train with --holdout-bars N, pass newer data, try --period before, or "
            "--allow-in-sample for a report marked as not honest"
        )
        raise DataError("nothing to evaluate: " + "; ".join(reasons) + hint)
    return selected


def _selection_line(selected: Mapping[str, np.ndarray], bars: Mapping[str, pd.DataFrame]) -> str:
    parts = [
        f"{s} {len(e)} bars {bars[s].index[e[0]].date()}..{bars[s].index[e[-1]].date()}"
        for s, e in selected.items()
    ]
    return "evaluating " + ", ".join(parts)


def _score_all(
    enhancer: Any,
    bundle: Bundle,
    bars_by_symbol: Mapping[str, pd.DataFrame],
    selected: Mapping[str, np.ndarray],
    span: TrainingSpan | None,
    opts: EvalOptions,
    echo: Callable[[str], None],
) -> pd.DataFrame:
    """One long table: a row per evaluated bar, scores + labels + returns + in-sample flag."""
    labels = LabelConfig(**bundle.config.get("labels", {}))
    frames = []
    for symbol, ends in selected.items():
        bars = bars_by_symbol[symbol]
        t = time.perf_counter()
        scores = score_bars(enhancer, symbol, bars, ends, opts.batch_size)
        echo(f"{symbol}: enhanced {len(ends)} bars in {time.perf_counter() - t:.1f} s")
        frame = scores.join(label_bars(bars, labels).iloc[ends])
        frame["in_sample"] = in_sample_mask(bars.index, span)[ends] if span else True
        frame.insert(0, "symbol", symbol)
        frames.append(frame)
    table = pd.concat(frames)
    table.index.name = "timestamp"
    return table.reset_index()


def _assemble(
    bundle: Bundle,
    span: TrainingSpan | None,
    data: str,
    opts: EvalOptions,
    table: pd.DataFrame,
    years: Mapping[str, Any],
    enhancer: Any,
    baselines: Baselines,
) -> dict[str, Any]:
    n_in = int(table["in_sample"].sum())
    status = "in_sample" if n_in else ("oos_forward" if opts.period == "after" else "oos_backward")
    warnings = _warnings(span, table, n_in, status)
    if not baselines.models:
        warnings.append(baselines.info["reason"])
    if opts.allow_timeframe_mismatch:
        warnings.append(
            "--allow-timeframe-mismatch: bars of another interval than the training data may "
            "have been scored; the models, GARCH regime and Kelly were fitted on the training "
            "interval, so their numbers here may mean little"
        )
    per_symbol = {
        s: {
            "first": str(g["timestamp"].iloc[0]),
            "last": str(g["timestamp"].iloc[-1]),
            "bars": len(g),
            "labelled": int(g["label"].notna().sum()),
            "in_sample_bars": int(g["in_sample"].sum()),
            "in_training_symbols": bool(span is not None and s in span.symbols),
            "bars_per_year": years["per_symbol"][s],
        }
        for s, g in table.groupby("symbol", sort=False)
    }
    return {
        "bundle": {
            "path": str(bundle.path),
            "model_version": bundle.model_version,
            "contract_hash": bundle.contract_hash,
            "device": enhancer.runtime.device,
            "backend": enhancer.runtime.backend,
        },
        "training": span.to_dict() if span is not None else None,
        "data": data,
        "selection": {
            "status": status,
            "honest": status == "oos_forward",
            "warnings": warnings,
            "per_symbol": per_symbol,
        },
        "options": asdict(opts),
        "bars_per_year": years["pooled"],
        "annualisation": dict(years),
        "baselines": baselines.info,
    }


def _warnings(span: TrainingSpan | None, table: pd.DataFrame, n_in: int, status: str) -> list[str]:
    w = []
    if span is None:
        w.append("the bundle records no training span: in-sample bars cannot be told apart")
    if n_in:
        w.append(
            f"{n_in} of {len(table)} evaluated bars lie inside the training period: "
            "NOT AN HONEST EVALUATION (in-sample numbers flatter the model)"
        )
    if status == "oos_backward":
        w.append(
            "bars before the training span: the models never saw them as targets, but were "
            "fitted on later data and the GARCH/Kelly parameters on the whole training data "
            "set; a backward test, weaker evidence than a forward one"
        )
    if span is not None and span.shuffled_labels:
        w.append("this bundle was trained on shuffled labels (a control bundle)")
    n_lab = int(table["label"].notna().sum())
    if n_lab < FEW_SAMPLES:
        w.append(f"only {n_lab} labelled bars: every metric here is noisy")
    return w
