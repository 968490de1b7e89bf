"""Read a freqtrade backtest's exported result and check what the strategy saw.

Run with the freqtrade virtual environment's python (joblib and freqtrade's pandas are
there), mlsignal on ``PYTHONPATH``::

    python tests/freqtrade_report.py RESULTS_DIR DATA_DIR BUNDLE

Prints one JSON object: trades per pair, the columns of the exported entry-signal candles,
and the largest difference, over up to ``CHECKED`` signal candles per pair, between what the
strategy saw and ``enhance_signal`` on the same pair's Feather bars up to that candle.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import joblib
import numpy as np

from mlsignal.data import read_bars
from mlsignal.enhancer import MLSignalEnhancer

CHECKED = 5
NUMBERS = ("bull_prob", "base_rate", "kelly", "enhanced_ss", "enhanced_bs", "regime_vol")


def _latest(results: Path) -> zipfile.ZipFile:
    name = json.loads((results / ".last_result.json").read_text())["latest_backtest"]
    return zipfile.ZipFile(results / name)


def main(results: Path, data: Path, bundle: Path) -> dict:
    with _latest(results) as z:
        names = z.namelist()
        stats_name = next(n for n in names if n.endswith(".json") and "_config" not in n)
        stats = json.loads(z.read(stats_name))
        signals = joblib.load(
            io.BytesIO(z.read(next(n for n in names if n.endswith("_signals.pkl"))))
        )
    ((strategy, per_pair),) = signals.items()
    trades = stats["strategy"][strategy]["trades"]
    enhancer = MLSignalEnhancer(bundle, device="cpu")
    worst, columns = 0.0, {}
    for pair, frame in per_pair.items():
        columns[pair] = sorted(map(str, frame.columns))
        bars = read_bars(data / f"{pair.replace('/', '_')}-1d.feather")
        for _, row in frame.head(CHECKED).iterrows():
            t = bars.index.get_loc(row["date"].tz_convert(None))
            ess, ebs, info = enhancer.enhance_signal(bars.iloc[: t + 1])
            want = {**info, "enhanced_ss": ess, "enhanced_bs": ebs}
            worst = max(worst, *(abs(float(row[k]) - float(want[k])) for k in NUMBERS))
            assert row["regime"] == info["regime"], (pair, row["date"])
    return {
        "strategy": strategy,
        "trades": {p: sum(t["pair"] == p for t in trades) for p in per_pair},
        "signal_columns": columns,
        "signal_rows": {p: len(f) for p, f in per_pair.items()},
        "worst_diff": worst,
        "nan_bull_prob": int(sum(np.isnan(f["bull_prob"]).sum() for f in per_pair.values())),
    }


if __name__ == "__main__":
    print(json.dumps(main(*(Path(a) for a in sys.argv[1:4]))))
