"""Write mlsignal's built-in daily samples as freqtrade data files, for an offline backtest.

    python examples/freqtrade/sample_data.py user_data/data/binance

writes ``SP500_USDT-1d.feather`` and ``NASDAQ_USDT-1d.feather`` (freqtrade's Feather layout:
``date`` in UTC, ``open, high, low, close, volume``). The samples are stock index bars, five a
week; freqtrade, a crypto bot, fills every missing day with a flat zero-volume candle, bars
the model never saw in training. So the bars are re-dated onto consecutive days from their
first date (bar for bar the same prices, as a market open every day would have them).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from mlsignal.data import load_sample

PAIRS = {"sp500": "SP500_USDT", "nasdaq": "NASDAQ_USDT"}


def write_samples(out: Path, timeframe: str = "1d") -> list[Path]:
    """Write each sample as ``<out>/<PAIR>-<timeframe>.feather``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for sample, pair in PAIRS.items():
        bars = load_sample(sample)
        dates = pd.date_range(bars.index[0], periods=len(bars), freq="D", tz="UTC")
        frame = bars.reset_index(drop=True)
        frame.insert(0, "date", dates.as_unit("ms"))
        path = out / f"{pair}-{timeframe}.feather"
        frame.to_feather(path, compression="lz4")
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="freqtrade data directory of the exchange")
    for path in write_samples(parser.parse_args().out):
        print(path)


if __name__ == "__main__":
    main()
