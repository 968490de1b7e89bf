"""CPU time per symbol of the server's prepare step, before and after ``prepare_many``.

64 symbols x 256 bars of the S&P 500 sample, as wire arrays; a stub bundle (prepare reads
only its schema, GARCH parameters and ``min_bars``). "before" is what ``prepare_items`` ran
until issue 12: ``prepare_arrays`` per item, then ``with_regime_vols``. Both in one process,
interleaved, best of 7 rounds of 10 calls, ``time.process_time``. A quick measurement for a
decision, not the benchmark (that is ``mlsignal bench``)::

    PYTHONPATH=src python scripts/time_prepare.py
"""

from __future__ import annotations

import time
import timeit
import types

from mlsignal import wire
from mlsignal.data import load_sample
from mlsignal.features import DEFAULT_SCHEMA
from mlsignal.models.garch import GarchParams
from mlsignal.pipeline import ArrayItem, prepare_arrays, prepare_many, with_regime_vols

SYMBOLS, BARS = 64, 256


def main() -> None:
    garch = GarchParams(mu=0.05, omega=0.02, alpha=0.08, beta=0.9)
    bundle = types.SimpleNamespace(schema=DEFAULT_SCHEMA, garch=garch, min_bars=BARS)
    bars = load_sample("sp500")
    for label, scores in (("ss/bs given", (35.0, 55.0)), ("no ss/bs (rule scores)", (None, None))):
        items: list[ArrayItem] = []
        for k in range(SYMBOLS):
            end = len(bars) - 5 * k
            tail = bars.iloc[end - BARS : end]
            arrays = wire.BarArrays.from_ns(tail.index.asi8, tail.to_numpy())
            items.append((f"S{k}", arrays.t_ms, arrays.ohlcv, *scores, arrays.frame))
        runs = {
            "before": lambda it=items: with_regime_vols(
                bundle, [prepare_arrays(bundle, *i) for i in it]
            ),
            "after": lambda it=items: prepare_many(bundle, it),
        }
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(7):
            for name, fn in runs.items():
                t = timeit.timeit(fn, number=10, timer=time.process_time) / 10 / SYMBOLS
                best[name] = min(best[name], t)
        print(
            f"{label}: before {best['before'] * 1e6:.0f} µs/symbol, "
            f"after {best['after'] * 1e6:.0f} µs/symbol"
        )


if __name__ == "__main__":
    main()
