"""An example freqtrade strategy on mlsignal's enhanced MACD scores (long only).

The mix-in adds ``bull_prob, base_rate, regime, kelly, enhanced_ss, enhanced_bs`` (and more,
see ``mlsignal.adapters.freqtrade``) to every pair's dataframe; the strategy enters when the
enhanced buy score leads the enhanced sell score by ``score_margin`` outside a high-volatility
regime, and exits on the opposite lead. Bring your own rule scores by filling two columns in
``populate_indicators`` and naming them in ``mlsignal_ss_column``/``mlsignal_bs_column``;
without them mlsignal's built-in MACD rules score each candle.

The bundle: ``mlsignal_bundle`` below, or ``MLSIGNAL_BUNDLE`` in the environment. Its
timeframe must be the strategy's (daily here; see the README beside this file).
"""

from __future__ import annotations

from freqtrade.strategy import IntParameter, IStrategy
from pandas import DataFrame

from mlsignal.adapters.freqtrade import MLSignalMixin


class MLSignalStrategy(MLSignalMixin, IStrategy):
    INTERFACE_VERSION = 3

    timeframe = "1d"
    can_short = False
    # the model looks at 256 daily candles (the bundle's min_bars); keep a margin
    startup_candle_count = 300
    process_only_new_candles = True

    # exits come from the scores; a wide stop-loss as a backstop, no ROI table
    minimal_roi = {"0": 100.0}  # noqa: RUF012 (freqtrade reads class attributes)
    stoploss = -0.15
    use_exit_signal = True

    mlsignal_bundle = None  # None: MLSIGNAL_BUNDLE
    mlsignal_ss_column = None  # None: mlsignal's MACD rules
    mlsignal_bs_column = None

    score_margin = IntParameter(5, 40, default=15, space="buy")

    def populate_indicators(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        return self.mlsignal_indicators(dataframe, metadata)

    def populate_entry_trend(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        lead = dataframe["enhanced_bs"] - dataframe["enhanced_ss"]
        calm = dataframe["regime"] != "high"
        dataframe.loc[(lead >= self.score_margin.value) & calm, ["enter_long", "enter_tag"]] = (
            1,
            "mlsignal",
        )
        return dataframe

    def populate_exit_trend(self, dataframe: DataFrame, metadata: dict) -> DataFrame:
        lead = dataframe["enhanced_ss"] - dataframe["enhanced_bs"]
        dataframe.loc[lead >= self.score_margin.value, "exit_long"] = 1
        return dataframe
