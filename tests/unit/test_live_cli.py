"""``mlsignal live`` on the command line: hook by name, JSON lines, resume, errors."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from mlsignal.cli.main import main

HOOK = """
def scores(symbol, bars):
    # sell when the last close is below the previous one, buy otherwise
    down = bars["close"].iloc[-1] < bars["close"].iloc[-2]
    return (80.0, 10.0) if down else (10.0, 80.0)
"""


@pytest.fixture(scope="module")
def csv(sp500_bars, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "spx.csv"
    sp500_bars.iloc[-(255 + 6) :].to_csv(path)
    return path


def test_live_with_a_hook_file_prints_json_lines_and_resumes(tiny_bundle, csv, tmp_path, capsys):
    (tmp_path / "hook.py").write_text(HOOK)
    db = tmp_path / "s.db"
    argv = [
        "live", "--bundle", str(tiny_bundle), "--source", f"replay:{csv}", "--device", "cpu",
        "--db", str(db), "--jsonl", "--scores", f"{tmp_path / 'hook.py'}:scores",
    ]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    docs = [json.loads(line) for line in out.splitlines()]
    assert len(docs) == 6 and {d["symbol"] for d in docs} == {"spx"}
    assert all((d["ss"], d["bs"]) in {(80.0, 10.0), (10.0, 80.0)} for d in docs)
    assert all(d["ml_info"]["source"] == "local" for d in docs)
    assert "spx: 6 bars recorded" in err and "by source local 6" in err
    rows = sqlite3.connect(db).execute("SELECT bar_ts, ss, enhanced_ss FROM signals").fetchall()
    assert sorted(r[0] for r in rows) == [d["bar_ts"] for d in docs]
    assert main(argv) == 0  # a second run resumes after the last bar: nothing new
    out, err = capsys.readouterr()
    assert out == "" and "total 0 bars" in err and "already recorded 1" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "ccxt:binance"], "expected ccxt:EXCHANGE:TIMEFRAME"),
        (["--source", "replay:nowhere.csv"], "nowhere.csv: no such file"),
        (["--source", "{csv}", "--scores", "no_such_mod_q:f"], "cannot import 'no_such_mod_q'"),
        (["--source", "{csv}", "--symbols", "X"], "symbol(s) X not in the source"),
        (["--source", "{csv}", "--pace", "-1"], "pace must be >= 0"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tiny_bundle, csv, tmp_path, capsys, args, message):
    args = [a.format(csv=csv) for a in args]
    code = main(["live", "--bundle", str(tiny_bundle), "--db", str(tmp_path / "x.db"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_help_documents_the_source_syntax(capsys):
    with pytest.raises(SystemExit) as e:
        main(["live", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for text in ("replay:ENTRY", "follow:FILE", "ccxt:EXCHANGE:TIMEFRAME", "--bar-deadline-ms"):
        assert text in out
    for text in ("--strict", "table 'rejected'", "rejected.jsonl", "Exit 3"):
        assert text in out


def test_the_live_package_imports_without_torch():
    code = "import sys, mlsignal.live, mlsignal.cli.live; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_jsonl_sink_quarantines_bad_rows_in_a_file_next_to_the_db(
    tiny_bundle, csv, tmp_path, capsys
):
    lines = csv.read_text().splitlines(keepends=True)
    src = tmp_path / "spx.csv"
    src.write_text("".join([*lines[:-2], "2012-12-19,abc,1,1,1,1\n", *lines[-2:]]))
    argv = [
        "live", "--bundle", str(tiny_bundle), "--source", str(src), "--device", "cpu",
        "--db", str(tmp_path / "live.db"), "--sink", "jsonl",
    ]  # fmt: skip
    for _ in range(2):  # JSON lines keep no resume point: the second run replays it all
        assert main(argv) == 0
        out, _ = capsys.readouterr()
        assert len(out.splitlines()) == 6
    docs = [json.loads(x) for x in (tmp_path / "live.rejected.jsonl").read_text().splitlines()]
    assert [(d["source"], d["line"], d["reason"]) for d in docs] == [
        (str(src), len(lines) - 1, "open 'abc' is not a number")
    ]
    assert not (tmp_path / "live.db").exists()


def test_live_reads_its_key_file_like_serve_and_refuses_several_keys(tmp_path):
    from mlsignal.cli.live import _api_key
    from mlsignal.errors import ConfigError

    one = tmp_path / "one.key"
    one.write_text("# this host\n\n  k-123  \n")
    assert _api_key(str(one)) == "k-123"
    many = tmp_path / "many.key"
    many.write_text("k-1\nk-2\n")
    with pytest.raises(ConfigError, match="holds 2 keys; a client sends one"):
        _api_key(str(many))
