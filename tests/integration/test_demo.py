"""``mlsignal demo`` (what ``make run`` runs) end to end on the tiny bundle: replay, table,
summary, and the remote half with a real loopback server killed half way."""

from __future__ import annotations

import ast
import re

from mlsignal.cli.main import main


def test_demo_replays_and_survives_the_server_dying(tiny_bundle, capsys):
    argv = ["demo", "--bundle", str(tiny_bundle), "--data", "sp500", "--bars", "12",
            "--rows", "3", "--device", "cpu", "--remote-bars", "8"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"using bundle {tiny_bundle}" in out
    assert "out-of-sample walk-forward metrics:" in out
    assert re.search(r"sp500: last 3 of 12 replayed bars", out)
    assert re.search(r"^bar\s+close\s+ss\s+bs\s+bull_p", out, re.M)
    assert "latency per bar: enhance_signal median" in out
    # 8 bars through a real server, SIGKILLed before bar 5: every bar answered, none lost.
    assert "remote: 8 bars through http://127.0.0.1:" in out
    answered = re.search(r"every bar answered: (\w+) \((\{.*\})\); max \|bull_prob .*= (\S+)", out)
    assert answered is not None, out
    assert answered.group(1) == "True"
    sources = ast.literal_eval(answered.group(2))  # a dict repr we printed ourselves
    assert sources.get("remote", 0) >= 1 and sources.get("fallback", 0) >= 1
    assert sum(sources.values()) == 8
    assert float(answered.group(3)) == 0.0  # remote and fallback equal local, bit for bit
    # It says the verdict and where to go next.
    assert re.search(r"^verdict: (SKILL|NO SKILL DETECTED|WORSE THAN BASE RATE): ", out, re.M)
    assert f"mlsignal evaluate --bundle {tiny_bundle} --out reports/quick" in out
