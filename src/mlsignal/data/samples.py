"""Built-in real sample data sets, and loading a data set spec of samples and files.

The samples are the daily S&P 500 and NASDAQ Composite series shipped with the ``arch``
package (1999-01-04 .. 2018-12-31, 5031 bars each). Both pass :func:`validate_bars` as
shipped, so no repair is applied; ``Close`` is used, never ``Adj Close``.
"""

from __future__ import annotations

import importlib
import logging
from functools import lru_cache

import pandas as pd

from mlsignal.data.io import normalize_bars, read_bars, symbol_of
from mlsignal.errors import DataError

logger = logging.getLogger(__name__)

SAMPLES: tuple[str, ...] = ("sp500", "nasdaq")


def load_sample(name: str) -> pd.DataFrame:
    """Return the built-in sample ``name`` (one of :data:`SAMPLES`) as canonical bars.

    Raises:
        DataError: ``name`` is not a known sample.
    """
    key = name.strip().lower()
    if key not in SAMPLES:
        raise DataError(f"unknown sample {name!r}; samples: {', '.join(SAMPLES)}")
    return _load_sample_cached(key).copy()


@lru_cache(maxsize=len(SAMPLES))
def _load_sample_cached(key: str) -> pd.DataFrame:
    module = importlib.import_module(f"arch.data.{key}")
    bars = normalize_bars(module.load())
    logger.debug("loaded sample %s: %d bars %s..%s", key, len(bars), bars.index[0], bars.index[-1])
    return bars


def load_dataset(spec: str) -> dict[str, pd.DataFrame]:
    """Load a comma-separated list of sample names and/or bar file paths.

    ``"sp500,nasdaq"`` or ``"data/btc.csv,data/eth.parquet"``. Returns ``{symbol: bars}``
    in spec order; the symbol is the sample name or the file name without its bars
    extension (``data/btc.csv.gz`` -> ``btc``, freqtrade's ``BTC_USDT-1d.feather`` ->
    ``BTC_USDT-1d``). Paths containing commas are not supported.

    Raises:
        DataError: the spec is empty, two entries give the same symbol, or an entry fails
            to load (see :func:`load_sample` and :func:`read_bars`).
    """
    entries = [part.strip() for part in spec.split(",") if part.strip()]
    if not entries:
        raise DataError(
            f"empty data set spec {spec!r}; give sample names ({', '.join(SAMPLES)}) or file paths"
        )
    dataset: dict[str, pd.DataFrame] = {}
    sources: dict[str, str] = {}
    for entry in entries:
        symbol = _symbol_of(entry)
        if symbol in dataset:
            raise DataError(
                f"duplicate symbol {symbol!r} in data set spec: {sources[symbol]!r} and {entry!r}"
            )
        is_sample = entry.lower() in SAMPLES
        dataset[symbol] = load_sample(entry) if is_sample else read_bars(entry)
        sources[symbol] = entry
    return dataset


def _symbol_of(entry: str) -> str:
    if entry.lower() in SAMPLES:
        return entry.lower()
    return symbol_of(entry)
