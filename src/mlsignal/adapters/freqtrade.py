"""freqtrade adapter: mlsignal's columns in a strategy's ``populate_indicators``.

Install with ``pip install "mlsignal[freqtrade]"``, then::

    from freqtrade.strategy import IStrategy
    from mlsignal.adapters.freqtrade import MLSignalMixin

    class MLMacdStrategy(MLSignalMixin, IStrategy):
        timeframe = "1d"                     # the interval the bundle was trained on
        startup_candle_count = 300           # at least the bundle's min_bars (256 by default)
        mlsignal_bundle = "artifacts/quick"  # or leave None and set MLSIGNAL_BUNDLE

        def populate_indicators(self, dataframe, metadata):
            # optional: your own rule scores, 0..100 (else mlsignal's MACD rules per candle)
            # dataframe["ss"], dataframe["bs"] = my_sell_score, my_buy_score
            return self.mlsignal_indicators(dataframe, metadata)  # , ss="ss", bs="bs"

Columns added to each pair's dataframe (:data:`COLUMNS`): ``bull_prob``, ``base_rate``,
``p_lstm``, ``p_tft``, ``regime``, ``regime_vol``, ``kelly``, ``kelly_side``,
``enhanced_ss``, ``enhanced_bs``, ``rule_ss``, ``rule_bs``, ``ml_source``; NaN on the first
``min_bars - 1`` candles, which have too little history for the model.

How, by ``self.dp.runmode``: in backtesting and hyperopt (and plotting, the web server) every
candle at once with :meth:`~mlsignal.enhancer.MLSignalEnhancer.score_frame`; in dry-run and
live each pair's new candles only, through the enhancer's stream for that pair
(:class:`~mlsignal.adapters.columns.FrameScorer`). Each candle gets the numbers
``enhance_signal`` gives on the candles up to it, in both modes, so a backtest sees what the
live bot will see. One enhancer per bundle and settings is shared by every strategy object
of the process and kept out of the strategy's own state (hyperopt pickles strategies).

Timeframes: a bundle records the bar interval it was trained on. A strategy whose
``timeframe`` differs is refused on its first candles with a
:class:`~mlsignal.errors.TimeframeError` that says so; ``mlsignal_allow_timeframe_mismatch
= True`` scores anyway, knowingly.

This module imports nothing from freqtrade (it reads ``runmode`` as a string), so it can be
used from any code that hands over freqtrade-shaped dataframes.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

import pandas as pd

from mlsignal.adapters.columns import COLUMNS, FrameScorer
from mlsignal.config import BUNDLE_ENV
from mlsignal.data import BAR_COLUMNS
from mlsignal.data import timeframe as tf
from mlsignal.enhancer import MLSignalEnhancer
from mlsignal.errors import ConfigError, TimeframeError
from mlsignal.frames import RowScores

__all__ = ["COLUMNS", "STREAMING_MODES", "MLSignalMixin", "add_columns", "scorer_for"]

log = logging.getLogger(__name__)

#: ``runmode`` values in which candles are streamed per pair (freqtrade's RunMode values).
STREAMING_MODES = frozenset(("live", "dry_run"))
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000, "y": 31536000}
_SCORERS: dict[tuple[str, str | None, str | None, bool], FrameScorer] = {}
_CHECKED: set[tuple[Any, ...]] = set()
_LOCK = threading.Lock()


def scorer_for(
    bundle: str | os.PathLike[str] | None = None,
    *,
    device: str | None = None,
    backend: str | None = None,
    allow_timeframe_mismatch: bool = False,
) -> FrameScorer:
    """The process's :class:`FrameScorer` for a bundle and settings (built once).

    ``bundle``: a bundle directory, or ``None`` for ``MLSIGNAL_BUNDLE``. ``device`` and
    ``backend`` default to ``ML_INFERENCE_DEVICE`` / ``ML_INFERENCE_BACKEND``.
    """
    path = bundle or os.environ.get(BUNDLE_ENV)
    if not path:
        raise ConfigError(
            f"no mlsignal bundle: set mlsignal_bundle in the strategy or {BUNDLE_ENV} in the "
            "environment (a directory written by `mlsignal train`)"
        )
    key = (str(Path(path).resolve()), device, backend, bool(allow_timeframe_mismatch))
    with _LOCK:
        scorer = _SCORERS.get(key)
        if scorer is None:
            enhancer = MLSignalEnhancer(
                key[0], device, backend, allow_timeframe_mismatch=allow_timeframe_mismatch
            )
            scorer = _SCORERS[key] = FrameScorer(enhancer)
        return scorer


def add_columns(
    dataframe: pd.DataFrame,
    pair: str,
    scorer: FrameScorer,
    *,
    runmode: str = "backtest",
    ss: str | RowScores = None,
    bs: str | RowScores = None,
) -> pd.DataFrame:
    """Add :data:`COLUMNS` to a freqtrade dataframe (``date, open, high, low, close,
    volume`` and whatever else) for ``pair``; returns the dataframe.

    ``runmode`` in :data:`STREAMING_MODES`: stream the pair's new candles; otherwise score
    every candle at once. ``ss``/``bs``: a column name, per-row values, one number, or
    ``None`` for mlsignal's MACD rules. A bar interval other than the bundle's raises a
    :class:`TimeframeError` that says how to allow it.
    """
    bars = dataframe[["date", *BAR_COLUMNS]]
    ss_rows, bs_rows = _column(dataframe, ss), _column(dataframe, bs)
    stream = str(runmode) in STREAMING_MODES
    try:
        cols = scorer.columns(bars, pair, ss_rows, bs_rows, stream=stream)
    except TimeframeError as e:
        raise TimeframeError(f"{e} (in a freqtrade strategy: {_ALLOW_HINT})") from e
    for name in COLUMNS:
        dataframe[name] = cols[name].to_numpy()
    return dataframe


_ALLOW_HINT = "mlsignal_allow_timeframe_mismatch = True"


class MLSignalMixin:
    """Mix into a freqtrade ``IStrategy`` (before it) and call :meth:`mlsignal_indicators`
    from ``populate_indicators``. Settings as class attributes:

    - ``mlsignal_bundle``: bundle directory (default ``None``: ``MLSIGNAL_BUNDLE``);
    - ``mlsignal_device``, ``mlsignal_backend``: as the enhancer's (``None``: environment);
    - ``mlsignal_allow_timeframe_mismatch``: score bars of another interval than the bundle's;
    - ``mlsignal_ss_column``, ``mlsignal_bs_column``: columns holding the strategy's own
      rule scores (``None``: mlsignal's MACD rules).
    """

    mlsignal_bundle: str | None = None
    mlsignal_device: str | None = None
    mlsignal_backend: str | None = None
    mlsignal_allow_timeframe_mismatch: bool = False
    mlsignal_ss_column: str | None = None
    mlsignal_bs_column: str | None = None

    def mlsignal_indicators(
        self,
        dataframe: pd.DataFrame,
        metadata: dict[str, Any],
        ss: str | RowScores = None,
        bs: str | RowScores = None,
    ) -> pd.DataFrame:
        """Add :data:`COLUMNS` to ``dataframe`` for ``metadata["pair"]`` and return it.

        ``ss``/``bs`` override ``mlsignal_ss_column``/``mlsignal_bs_column``."""
        scorer = self.mlsignal_scorer()
        return add_columns(
            dataframe,
            str(metadata["pair"]),
            scorer,
            runmode=runmode_of(self),
            ss=self.mlsignal_ss_column if ss is None else ss,
            bs=self.mlsignal_bs_column if bs is None else bs,
        )

    def mlsignal_scorer(self) -> FrameScorer:
        """The shared :class:`FrameScorer` of this strategy's bundle and settings, its
        ``timeframe`` and ``startup_candle_count`` checked against the bundle once."""
        allow = bool(self.mlsignal_allow_timeframe_mismatch)
        scorer = scorer_for(
            self.mlsignal_bundle,
            device=self.mlsignal_device,
            backend=self.mlsignal_backend,
            allow_timeframe_mismatch=allow,
        )
        _check_strategy(scorer.enhancer, self, allow)
        return scorer


def runmode_of(strategy: Any) -> str:
    """The strategy's run mode as freqtrade's ``RunMode`` value (``backtest``, ``dry_run``,
    ``live``...): ``strategy.dp.runmode``, else ``strategy.config["runmode"]``, else
    ``other``."""
    mode = getattr(getattr(strategy, "dp", None), "runmode", None)
    if mode is None:
        mode = (getattr(strategy, "config", None) or {}).get("runmode")
    mode = getattr(mode, "value", mode)
    return str(mode) if mode else "other"


def timeframe_seconds(timeframe: str) -> int | None:
    """freqtrade's timeframe string in seconds (``5m`` -> 300, ``1d`` -> 86400), or
    ``None`` when it is not one."""
    m = re.fullmatch(r"(\d+)([smhdwMy])", str(timeframe).strip())
    return int(m.group(1)) * _UNIT_S[m.group(2)] if m else None


def _check_strategy(enhancer: MLSignalEnhancer, strategy: Any, allow: bool) -> None:
    """Once per strategy class and bundle: its timeframe against the bundle's (unless
    allowed), and a warning when its startup candles are fewer than the model needs."""
    key = (type(strategy), id(enhancer), getattr(strategy, "timeframe", None))
    if key in _CHECKED:
        return
    expected = tf.bundle_seconds(enhancer.bundle.config)
    got = timeframe_seconds(getattr(strategy, "timeframe", "") or "")
    if (
        not allow
        and expected
        and got
        and not expected / tf.TOLERANCE <= got <= expected * tf.TOLERANCE
    ):
        raise TimeframeError(
            f"{type(strategy).__name__}.timeframe is {strategy.timeframe} but the mlsignal "
            f"bundle {enhancer.bundle.path} was trained on {tf.name(expected)} bars: use "
            f"timeframe = '{tf.name(expected)}', train a bundle on {strategy.timeframe} bars, "
            f"or set {_ALLOW_HINT} in the strategy to score anyway"
        )
    startup = int(getattr(strategy, "startup_candle_count", 0) or 0)
    if startup < enhancer.min_bars - 1:
        log.warning(
            "%s.startup_candle_count is %d; the mlsignal model needs %d candles of history, "
            "so the first %d candles of a backtest get no mlsignal columns (NaN): set "
            "startup_candle_count = %d",
            type(strategy).__name__,
            startup,
            enhancer.min_bars,
            enhancer.min_bars - 1 - startup,
            enhancer.min_bars,
        )
    _CHECKED.add(key)


def _column(dataframe: pd.DataFrame, scores: str | RowScores) -> RowScores:
    if isinstance(scores, str):
        if scores not in dataframe.columns:
            raise ConfigError(f"no column {scores!r} for the rule scores in the dataframe")
        return dataframe[scores]
    return scores
