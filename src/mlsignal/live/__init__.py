"""The live bar loop: feed -> rules (or a score hook) -> enhancer -> sink.

``mlsignal live`` on the command line; from Python::

    from mlsignal.enhancer import MLSignalEnhancer
    from mlsignal.live import LiveRunner, ReplayFeed, SqliteSink

    runner = LiveRunner(MLSignalEnhancer("artifacts/quick"),
                        ReplayFeed.from_paths(["data/btc.csv"]), SqliteSink("signals.db"))
    summary = runner.run()
"""

from __future__ import annotations

from mlsignal.live.feeds import Bar, Feed, ReplayFeed, Resume, load_bars_files
from mlsignal.live.rows import Rejection
from mlsignal.live.runner import LiveRunner, LiveSummary
from mlsignal.live.scores import ScoreFn, load_hook, rule_scores_hook
from mlsignal.live.sink import (
    JsonlSink,
    Record,
    Sink,
    SinkBusyError,
    SinkError,
    SqliteSink,
    TeeSink,
)
from mlsignal.live.sources import SourceSpec, make_feed, parse_source

__all__ = [
    "Bar",
    "Feed",
    "JsonlSink",
    "LiveRunner",
    "LiveSummary",
    "Record",
    "Rejection",
    "ReplayFeed",
    "Resume",
    "ScoreFn",
    "Sink",
    "SinkBusyError",
    "SinkError",
    "SourceSpec",
    "SqliteSink",
    "TeeSink",
    "load_bars_files",
    "load_hook",
    "make_feed",
    "parse_source",
    "rule_scores_hook",
]
