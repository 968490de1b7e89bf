"""``--source`` specs -> feeds.

=================================  ==========================================================
``replay:ENTRY[,ENTRY...]``        replay files to the end, then stop. ENTRY is a CSV, Parquet
                                   or Feather file (one symbol, named after the file, or a
                                   ``symbol`` column), a directory of such files, or a sample
                                   name (``sp500``, ``nasdaq``)
``ENTRY[,ENTRY...]``               the same (``--follow`` makes it ``follow:``)
``follow:FILE[,FILE...]``          tail-follow growing CSV files until stopped
``ccxt:EXCHANGE:TIMEFRAME``        poll closed candles, e.g. ``ccxt:binance:1m`` with
                                   ``--symbols BTC/USDT,ETH/USDT`` (needs ``mlsignal[exchange]``)
=================================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mlsignal.errors import ConfigError
from mlsignal.live.feeds import Feed, ReplayFeed, expand_paths

SCHEMES = ("replay", "follow", "ccxt")


@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``--source``: its kind and its arguments."""

    kind: str  # replay | follow | ccxt
    entries: tuple[str, ...] = ()
    exchange: str = ""
    timeframe: str = ""


def parse_source(spec: str, follow: bool = False) -> SourceSpec:
    """Parse a ``--source`` value (see the module docstring); ConfigError when malformed."""
    text = spec.strip()
    scheme, sep, rest = text.partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        scheme, rest = ("follow" if follow else "replay"), text
    elif follow and scheme != "follow":
        raise ConfigError(f"--follow applies to plain paths, not to --source {spec!r}")
    if scheme == "ccxt":
        exchange, sep, timeframe = rest.partition(":")
        if not sep or not exchange.strip() or not timeframe.strip():
            raise ConfigError(
                f"--source {spec!r}: expected ccxt:EXCHANGE:TIMEFRAME, e.g. ccxt:binance:1m"
            )
        return SourceSpec("ccxt", exchange=exchange.strip(), timeframe=timeframe.strip())
    entries = tuple(e.strip() for e in rest.split(",") if e.strip())
    if not entries:
        raise ConfigError(f"--source {spec!r}: no files given")
    return SourceSpec(scheme, entries)


def make_feed(
    spec: SourceSpec,
    symbols: Sequence[str] | None = None,
    *,
    pace_s: float = 0.0,
    speed: float | None = None,
    poll_s: float | None = None,
    strict: bool = False,
) -> Feed:
    """Build the feed a :class:`SourceSpec` names; ``strict``: a bad line in a replayed or
    followed file, or a bad exchange candle, raises instead of being quarantined."""
    if spec.kind == "replay":
        return ReplayFeed.from_paths(
            spec.entries, symbols, strict=strict, pace_s=pace_s, speed=speed
        )
    if pace_s or speed:
        raise ConfigError("--pace and --speed apply to replay sources only")
    if spec.kind == "follow":
        from mlsignal.live.follow import FollowFeed

        return FollowFeed(expand_paths(spec.entries), symbols, poll_s=poll_s or 1.0, strict=strict)
    from mlsignal.live.exchange import CcxtFeed

    return CcxtFeed(spec.exchange, spec.timeframe, symbols or (), poll_s=poll_s, strict=strict)
