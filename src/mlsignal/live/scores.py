"""Where the live loop's raw ``ss``/``bs`` come from: the built-in rules or the user's hook.

A score hook is any callable ``hook(symbol: str, bars: pandas.DataFrame) -> (ss, bs)``:
``bars`` are the symbol's recent closed bars (canonical OHLCV, oldest first, the newest is
the bar being scored; at least the bundle's ``min_bars`` of them, more with
``--history-bars``), and ``ss``/``bs`` are numbers in 0..100. From the command line it is
named ``module:function`` (the module importable, e.g. on ``PYTHONPATH``) or
``path/to/file.py:function``::

    # my_scores.py
    def scores(symbol, bars):
        fast = bars["close"].ewm(span=12).mean().iloc[-1]
        slow = bars["close"].ewm(span=26).mean().iloc[-1]
        return (70.0, 30.0) if fast < slow else (30.0, 70.0)

    mlsignal live --scores my_scores:scores ...

From Python, pass the callable as ``LiveRunner(..., scores=my_function)``. A hook that
raises, or returns something that is not two numbers in 0..100, stops the runner with an
error naming the symbol and bar: the bar is not recorded, and a restart retries it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from mlsignal.errors import ConfigError, DataError
from mlsignal.pipeline import check_score
from mlsignal.rules import last_rule_scores

ScoreFn = Callable[[str, pd.DataFrame], tuple[float, float]]


def rule_scores_hook(symbol: str, bars: pd.DataFrame) -> tuple[float, float]:
    """The built-in MACD rule scores of the last bar (``mlsignal.rules``)."""
    return last_rule_scores(bars)


def load_hook(spec: str) -> ScoreFn:
    """``module:function`` or ``file.py:function`` -> the callable; ConfigError if not found."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise ConfigError(f"--scores {spec!r}: expected module:function or path/file.py:function")
    if target.endswith(".py"):
        module = _module_from_file(Path(target), spec)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ConfigError(f"--scores {spec!r}: cannot import {target!r}: {e}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"--scores {spec!r}: {target!r} has no function {name!r}")
    return fn


def _module_from_file(path: Path, spec: str) -> object:
    if not path.is_file():
        raise ConfigError(f"--scores {spec!r}: no such file {path}")
    mod_name = f"mlsignal_user_scores_{path.stem}"
    loader_spec = importlib.util.spec_from_file_location(mod_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ConfigError(f"--scores {spec!r}: cannot load {path}")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[mod_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:  # the user's module failed at import
        raise ConfigError(f"--scores {spec!r}: importing {path} failed: {e!r}") from e
    return module


def call_hook(fn: ScoreFn, symbol: str, bars: pd.DataFrame) -> tuple[float, float]:
    """Run the hook for the last bar of ``bars``; its answer checked, errors named."""
    where = f"score hook {getattr(fn, '__name__', fn)!r} on {symbol} bar {bars.index[-1]}"
    try:
        answer = fn(symbol, bars)
    except Exception as e:  # the user's code: say where it failed, keep the cause
        raise ConfigError(f"{where} raised {type(e).__name__}: {e}") from e
    try:
        ss, bs = answer
        return check_score(ss, "ss"), check_score(bs, "bs")
    except (TypeError, ValueError, DataError) as e:
        raise ConfigError(f"{where} must return (ss, bs) in 0..100, got {answer!r}: {e}") from e
