"""The example strategy under freqtrade's own ``IStrategy`` in dry-run against backtest mode.

Run with the freqtrade virtual environment's python, mlsignal on ``PYTHONPATH``::

    python tests/freqtrade_live.py STRATEGY_DIR CONFIG DATA_FILE BUNDLE

A dry-run strategy gets the frame a bot gets each candle (the last ``WINDOW`` candles, one
more each time), then one that jumps ``GAP`` candles ahead (the stream cannot follow it);
every scored row it sees must equal the backtest-mode strategy's row of the same candle.
Prints one JSON object: rows compared, the largest difference, and how the live pair was
scored (candles streamed, frames rescored).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from freqtrade.configuration.load_config import load_from_files
from freqtrade.data.dataprovider import DataProvider
from freqtrade.enums import RunMode

from mlsignal.adapters.freqtrade import COLUMNS

WINDOW, STEPS, GAP = 400, 12, 500
PAIR = "SP500/USDT"


def strategy(directory: Path, config_file: Path, runmode: RunMode):
    spec = importlib.util.spec_from_file_location(
        "mlsignal_example", directory / "MLSignalStrategy.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = load_from_files([str(config_file)])
    config["runmode"] = runmode
    s = module.MLSignalStrategy(config)
    s.dp = DataProvider(config, None)
    return s


def compare(seen: pd.DataFrame, full: pd.DataFrame) -> tuple[int, float]:
    """Rows of ``seen`` with a score, against ``full``'s rows of the same dates."""
    merged = seen.merge(full, on="date", suffixes=("", "_bt"))
    rows = merged[merged["bull_prob"].notna()]
    worst = 0.0
    for c in COLUMNS:
        a, b = rows[c].to_numpy(), rows[f"{c}_bt"].to_numpy()
        if a.dtype.kind == "f":
            worst = max(worst, float(np.nanmax(np.abs(a - b))) if len(a) else 0.0)
        else:
            assert (a == b).all(), c
    return len(rows), worst


def main(directory: Path, config_file: Path, data_file: Path, bundle: Path) -> dict:
    os.environ["MLSIGNAL_BUNDLE"] = str(bundle)
    candles = pd.read_feather(data_file).iloc[-1500:]  # enough for a window, steps and a gap
    backtest = strategy(directory, config_file, RunMode.BACKTEST)
    full = backtest.advise_indicators(candles.copy(), {"pair": PAIR})
    live = strategy(directory, config_file, RunMode.DRY_RUN)
    compared, worst = 0, 0.0
    end = len(candles) - STEPS - GAP
    frames = [candles.iloc[k - WINDOW : k] for k in range(end, end + STEPS)]
    frames.append(candles.iloc[len(candles) - WINDOW :])  # a jump the stream cannot follow
    for frame in frames:
        seen = live.advise_indicators(frame.reset_index(drop=True).copy(), {"pair": PAIR})
        assert seen["bull_prob"].iloc[-1] == seen["bull_prob"].iloc[-1]  # the new candle scored
        n, w = compare(seen, full)
        compared, worst = compared + n, max(worst, w)
    streamed, rescored = live.mlsignal_scorer().stats(PAIR)
    return {"compared": compared, "worst_diff": worst, "streamed": streamed, "rescored": rescored}


if __name__ == "__main__":
    print(json.dumps(main(*(Path(a) for a in sys.argv[1:5]))))
