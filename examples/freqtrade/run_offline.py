"""freqtrade's own command line, offline: markets from a file instead of the exchange.

    python examples/freqtrade/run_offline.py --markets examples/freqtrade/markets.json \\
        backtesting --config examples/freqtrade/config.json ...

Why: ``freqtrade backtesting`` reads candles from disk but loads the exchange's market list
over the network at start-up (which pairs exist, their precision, limits and fees), and it
has no setting to do without: its maintainers call offline backtesting unsupported
(freqtrade issues 5526, 6077, 11239, 12456). The sample pairs (SP500/USDT, NASDAQ/USDT) are
no exchange's markets anyway. So this runs ``freqtrade.main.main`` unchanged after giving
ccxt's ``load_markets`` (sync and async) the markets in ``--markets`` (ccxt's unified
market structure) and making every ccxt HTTP request raise: a run that still needs the
network fails loudly instead of reaching an exchange.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def offline(markets: list[dict[str, Any]]) -> None:
    """Give every ccxt exchange ``markets`` and no network."""
    import ccxt
    import ccxt.async_support

    def load_markets(self: Any, reload: bool = False, params: Any = None) -> Any:
        self.set_markets(markets)
        return self.markets

    async def load_markets_async(self: Any, reload: bool = False, params: Any = None) -> Any:
        return load_markets(self)

    def refuse(self: Any, url: str, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"offline run: refusing a network request to {url}")

    async def refuse_async(self: Any, url: str, *args: Any, **kwargs: Any) -> Any:
        refuse(self, url)

    ccxt.Exchange.load_markets = load_markets
    ccxt.Exchange.fetch = refuse
    ccxt.async_support.Exchange.load_markets = load_markets_async
    ccxt.async_support.Exchange.fetch = refuse_async


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] != "--markets":
        sys.exit("usage: run_offline.py --markets MARKETS.json FREQTRADE-ARGS...")
    offline(json.loads(Path(argv[1]).read_text()))
    from freqtrade.main import main as freqtrade_main

    freqtrade_main(argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
