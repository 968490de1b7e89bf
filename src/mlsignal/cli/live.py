"""``mlsignal live``: the bar loop as a service (feed -> scores -> enhancer -> SQLite).

Restart-safe: it resumes after the last bar recorded in ``--db``. SIGTERM/SIGINT finish the
bar in progress, close the database and exit 0 with a summary on stderr.

Exit codes: 0 the source ended or a stop was asked; 2 it could not start or met bad input it
was told to stop on (bad arguments, a database it cannot open, a bad row under ``--strict``);
3 it ran, and then its database became unusable (disk full, read-only, corrupt, or locked
for longer than it can queue): one line names the file and what was not recorded, rows
committed before stay, and a restart resumes after them.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from mlsignal.cli.options import add_bundle_option, add_enhancer_options, cli_settings
from mlsignal.config import read_key_file
from mlsignal.errors import ConfigError

log = logging.getLogger("mlsignal.live")

DEFAULT_DB = "mlsignal-live.db"
#: Default per-bar deadline in local mode (a stuck device); remote: the remote timeout + 2 s.
LOCAL_DEADLINE_MS = 10_000.0

SOURCE_HELP = """\
sources:
  replay:ENTRY[,ENTRY...]   replay bars, then exit. ENTRY: a CSV/Parquet/Feather file
                            (symbol = file name, or a 'symbol' column for many), a directory
                            of them, or a sample (sp500, nasdaq). A plain ENTRY[,ENTRY...]
                            means the same.
  follow:FILE[,FILE...]     tail-follow growing CSV files until stopped (also: --follow PATH).
                            A last line without its newline is not a bar yet.
  ccxt:EXCHANGE:TIMEFRAME   poll closed candles, e.g. ccxt:binance:1m --symbols BTC/USDT
                            (pip install 'mlsignal[exchange]').

recorded: every bar with at least the bundle's min_bars of history (earlier bars are warm-up),
once, in table 'signals' of --db, keyed (symbol, bar_ts). After a kill, the next run resumes
at the first bar not recorded. The API key comes from $GPU_INFERENCE_API_KEY or
--api-key-file, never from the command line.

bad lines: a line of a replayed or followed file that is not a bar (not a number, high below
low, not after the previous bar, a field too many) is quarantined: logged once with its file
and line number, kept in table 'rejected' of --db (with --sink jsonl: in DB-NAME.rejected.jsonl
next to --db), and the run goes on; a restart neither stops on it nor records it twice. An
exchange candle that is not a bar (a missing price, high below low) is quarantined the same
way, with the symbol as its source. --strict stops at the first one instead (exit 2, one
line naming the file and line, or the symbol).

busy database: a write that finds --db locked by another connection is retried until the
bar's deadline, then kept in memory and written, in order, before the next bar; nothing is
lost or written twice. Exit 3: the database became unusable (disk full, read-only).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``mlsignal live``."""
    p = sub.add_parser(
        "live",
        help="run the bar loop: feed -> rule scores (or your hook) -> enhancer -> SQLite",
        description="Enhance every closed bar of a feed and record it once, restart-safe.",
        epilog=SOURCE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_bundle_option(p)
    p.add_argument("--source", required=True, help="where bars come from (see below)")
    p.add_argument("--follow", action="store_true", help="tail-follow the --source files")
    p.add_argument("--symbols", help="comma-separated symbols (required for ccxt; else a filter)")
    p.add_argument(
        "--strict",
        action="store_true",
        help="stop (exit 2) at the first bad line of a replayed or followed file, or the first "
        "bad exchange candle, instead of quarantining it",
    )
    _add_pacing(p)
    _add_enhancer(p)
    _add_output(p)
    p.add_argument(
        "--scores",
        metavar="MODULE:FUNCTION",
        help="your score hook (symbol, bars) -> (ss, bs); MODULE may be path/file.py "
        "(default: the built-in MACD rules)",
    )
    p.add_argument(
        "--history-bars",
        type=int,
        help="bars kept per symbol and passed to the score hook (default: the bundle's min_bars)",
    )
    p.set_defaults(func=_cmd_live)


def _add_pacing(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--pace",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="replay: wait this long between bar times (default: as fast as possible)",
    )
    g.add_argument(
        "--speed",
        type=float,
        metavar="FACTOR",
        help="replay: FACTOR times real time (86400 replays a daily bar per second)",
    )
    p.add_argument(
        "--poll",
        type=float,
        metavar="SECONDS",
        help="follow/ccxt: seconds between polls (default: 1 / a tenth of the timeframe)",
    )


def _add_enhancer(p: argparse.ArgumentParser) -> None:
    add_enhancer_options(p)
    p.add_argument("--api-key-file", help="file whose first line is the server API key")
    p.add_argument(
        "--local-fallback",
        choices=["eager", "lazy", "off"],
        default="eager",
        help="remote mode: load the local model at start, on first need, or never",
    )
    p.add_argument(
        "--bar-deadline-ms",
        type=float,
        help="longest wait for the enhancer per bar; past it the bar is recorded with "
        "the rules-only fallback (default: remote timeout + 2000 ms, local 10000 ms; "
        "0: no deadline)",
    )


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=DEFAULT_DB, help="SQLite file (default: %(default)s)")
    p.add_argument(
        "--sink",
        choices=["sqlite", "jsonl", "both"],
        default="sqlite",
        help="sqlite (restart-safe), jsonl (JSON lines on stdout, no resume) or both",
    )
    p.add_argument("--jsonl", action="store_true", help="also print JSON lines (= --sink both)")
    p.add_argument(
        "--db-sync",
        choices=["full", "normal"],
        default="full",
        help="SQLite synchronous mode: full survives a host crash (default: %(default)s)",
    )


def _cmd_live(args: argparse.Namespace) -> int:
    return live(args)


def _api_key(path: str | None) -> str | None:
    """The one key a client sends, read like ``serve --api-key-file`` reads its keys."""
    if not path:
        return None
    keys = read_key_file(path)
    if len(keys) > 1:
        raise ConfigError(
            f"--api-key-file {path} holds {len(keys)} keys; a client sends one: give it a file "
            "with this host's key alone (the server's file lists every host's key)"
        )
    return keys[0]


def _deadline_ms(args: argparse.Namespace, enhancer: Any) -> float | None:
    if args.bar_deadline_ms is not None:
        if args.bar_deadline_ms < 0:
            raise ConfigError("--bar-deadline-ms must be >= 0 (0: no deadline)")
        return args.bar_deadline_ms or None
    if enhancer.remote is None:
        return LOCAL_DEADLINE_MS
    return enhancer.remote.client.timeout_s * 1e3 + 2000.0


def _sink(args: argparse.Namespace) -> Any:
    from mlsignal.live import JsonlSink, SqliteSink, TeeSink

    kind = "both" if args.jsonl and args.sink == "sqlite" else args.sink
    if kind == "jsonl":
        log.warning("--sink jsonl keeps no state: a restart starts again from the source's start")
        return JsonlSink(rejected=rejected_file(args.db))
    db = SqliteSink(args.db, synchronous=args.db_sync)
    return db if kind == "sqlite" else TeeSink([db, JsonlSink()])


def rejected_file(db: str) -> Path:
    """Where ``--sink jsonl`` quarantines bad lines: ``live.db`` -> ``live.rejected.jsonl``."""
    return Path(db).with_suffix(".rejected.jsonl")


def _enhancer(args: argparse.Namespace) -> Any:
    from mlsignal.enhancer import MLSignalEnhancer

    return MLSignalEnhancer(
        args.bundle,
        device=args.device,
        backend=args.backend,
        remote_urls=",".join(args.remote) if args.remote else None,
        api_key=_api_key(args.api_key_file),
        timeout_s=args.timeout,
        accept_version_mismatch=args.accept_version_mismatch,
        local_fallback=args.local_fallback,
        tls_verify=args.cacert or True,
        settings=cli_settings(args),
    )


def live(args: argparse.Namespace) -> int:
    """Run the loop until the source ends or SIGTERM/SIGINT; print the summary to stderr.

    Returns 0, or 3 when the sink became unusable (a one-line error on stderr)."""
    from mlsignal.live import LiveRunner, load_hook, make_feed, parse_source
    from mlsignal.live.sink import SinkError

    symbols = [s.strip() for s in (args.symbols or "").split(",") if s.strip()] or None
    if args.history_bars is not None and args.history_bars < 1:
        raise ConfigError("--history-bars must be at least 1")
    spec = parse_source(args.source, follow=args.follow)
    feed = make_feed(
        spec, symbols, pace_s=args.pace, speed=args.speed, poll_s=args.poll, strict=args.strict
    )
    scores = load_hook(args.scores) if args.scores else None
    enhancer = _enhancer(args)
    sink = None
    try:
        sink = _sink(args)
        runner = LiveRunner(
            enhancer,
            feed,
            sink,
            scores=scores,
            bar_deadline_ms=_deadline_ms(args, enhancer),
            history_bars=args.history_bars,
            progress=_progress if spec.kind == "replay" else None,
        )
        with _stop_on_signals(runner):
            summary = runner.run()
    except SinkError as e:  # it ran, then the database failed it: not a usage error
        print(f"mlsignal live: error: {e}", file=sys.stderr)
        return 3
    finally:
        if sink is not None:
            sink.close()
        enhancer.close()
    if not logging.getLogger("mlsignal.live.runner").isEnabledFor(logging.INFO):
        for line in summary.lines():  # else the runner has logged it already
            print(f"mlsignal live: {line}", file=sys.stderr)
    return 0


def _progress(summary: Any) -> None:
    print(f"mlsignal live: {summary.progress_line()}", file=sys.stderr, flush=True)


class _stop_on_signals:
    """SIGTERM/SIGINT ask the runner to stop after the current bar; a second one is default."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self._old: dict[int, Any] = {}

    def __enter__(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        log.warning("%s: finishing the current bar, then exiting", signal.Signals(signum).name)
        self.runner.stop()
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
