"""`mlsignal evaluate` end to end on the real tiny bundle and the real S&P 500 sample.

The tiny bundle is trained on the last 900 labelled bars of sp500 (no held-out tail), so the
forward test must refuse, and the honest part left is the bars before its training span.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlsignal.cli.main import main

N_BARS = 250


@pytest.fixture(scope="module")
def report(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "report"
    args = ["evaluate", "--bundle", str(tiny_bundle), "--data", "sp500", "--out", str(out)]
    args += ["--period", "before", "--last", str(N_BARS), "--permutations", "60"]
    args += ["--batch-size", "100"]  # three forward passes: chunk boundaries are checked too
    assert main(args) == 0
    return out


def test_report_files_and_honesty_status(report: Path, tiny_bundle: Path) -> None:
    for name in ("index.html", "metrics.json", "signals.csv"):
        assert (report / name).stat().st_size > 0
    for name in ("reliability.png", "bull_prob_hist.png", "equity.png", "auc_null.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads((report / "metrics.json").read_text())
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert m["bundle"]["contract_hash"] == manifest["contract_hash"]
    assert m["selection"]["status"] == "oos_backward" and not m["selection"]["honest"]
    sym = m["selection"]["per_symbol"]["sp500"]
    assert sym["bars"] == N_BARS and sym["labelled"] == N_BARS and sym["in_sample_bars"] == 0
    # every evaluated bar's label ends before the training span, minus the embargo
    assert pd.Timestamp(sym["last"]) < pd.Timestamp(manifest["training"]["span"][0])
    assert 240 < m["bars_per_year"] < 260  # daily stock bars
    assert sym["bars_per_year"] == m["bars_per_year"]  # one symbol: the pooled timeline is its own


def test_metrics_and_controls(report: Path) -> None:
    m = json.loads((report / "metrics.json").read_text())
    cls = m["classification"]
    assert cls["models"] == ["bull_prob", "p_lstm", "p_tft", "logistic", "boosting"]
    nulls = cls["nulls"]
    assert nulls["block"] == 20 and "block permutation" in nulls["method"]  # horizon 5
    assert nulls["n_permutations"] == 60
    for model in cls["models"]:
        real, control = cls["pooled"][model], cls["control"]["pooled"][model]
        assert real["n"] == N_BARS
        if real["ic"] is None:  # a constant bull_prob (a flat calibration) has no rank
            assert model == "bull_prob" and real["auc"] == 0.5
        else:
            assert -1.0 <= real["ic"] <= 1.0
        assert 0.0 < real["brier"] < 0.5 and real["brier_base"] == pytest.approx(
            real["base_rate"] * (1 - real["base_rate"])
        )
        assert "ic" in cls["per_symbol"]["sp500"][model]
        # shuffled labels: no skill, whatever the model
        assert abs(control["auc"] - 0.5) < 0.15
        assert abs(nulls["auc"][model]["null_mean"] - 0.5) < 0.05
        assert nulls["auc"][model]["observed"] == pytest.approx(real["auc"])
        if real["ic"] is not None:
            assert nulls["ic"][model]["observed"] == pytest.approx(real["ic"])
    assert sum(b["count"] for b in cls["reliability"]["bull_prob"]) == N_BARS
    bt = m["backtest"]
    strategies = {"long_only", "raw", "enhanced", "enhanced_kelly", "control_enhanced"}
    assert strategies <= set(bt["pooled"])
    assert bt["pooled"]["long_only"]["exposure"] == 1.0
    assert bt["pooled"]["raw"]["bars"] == N_BARS
    assert bt["sharpe_null"]["n_permutations"] == 60
    assert "block permutation" in bt["sharpe_null"]["method"]


def test_verdict_baselines_and_fusion_effect(report: Path, tiny_bundle: Path) -> None:
    m = json.loads((report / "metrics.json").read_text())
    assert next(iter(m)) == "verdict"
    v = m["verdict"]
    assert v["verdict"] in ("skill", "no skill detected", "worse than base rate")
    assert v["model"] == "bull_prob" and v["plain"] and v["why"]
    assert any("not a forward" in c for c in v["caveats"])  # a backward test
    base = m["baselines"]
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    first, last = manifest["training"]["span"]
    assert base["fitted"] and base["models"] == ["logistic", "boosting"]
    # fitted on the training span only, the last horizon's labels dropped
    assert base["first"] == first and base["last"] < last
    assert manifest["training"]["n_samples"] - 5 == base["samples"]
    fe = m["fusion_effect"]
    assert fe["pooled"]["bars"] == N_BARS
    shares = [fe["pooled"][f"kelly_{s}"] for s in ("flat", "long", "short")]
    assert sum(shares) == pytest.approx(1.0)
    signals = pd.read_csv(report / "signals.csv")
    assert fe["pooled"]["mean_abs_delta_bs"] == pytest.approx(
        (signals["enhanced_bs"] - signals["bs"]).abs().mean()
    )
    assert {"logistic", "boosting"} <= set(signals.columns)


def test_html_is_self_contained(report: Path) -> None:
    page = (report / "index.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4
    for text in (
        "Out of sample, backward", "shuffled labels", "Sharpe", "Reliability", "block",
        "How much the model moved your scores", "logistic", "boosting", "IC",
    ):  # fmt: skip
        assert text in page
    # the verdict comes first, before the honesty banner
    assert page.index("Verdict: ") < page.index("Out of sample, backward")


def test_signals_equal_enhance_signal(report: Path, tiny_bundle: Path) -> None:
    from mlsignal.data import load_sample
    from mlsignal.enhancer import MLSignalEnhancer

    table = pd.read_csv(report / "signals.csv", parse_dates=["timestamp"])
    bars = load_sample("sp500")
    enhancer = MLSignalEnhancer(tiny_bundle, device="cpu", remote_urls=())
    for i in (0, 137, N_BARS - 1):
        row = table.iloc[i]
        t = bars.index.get_loc(row["timestamp"])
        ess, ebs, info = enhancer.enhance_signal(bars.iloc[: t + 1])
        assert (row["enhanced_ss"], row["enhanced_bs"]) == (ess, ebs)
        assert (row["bull_prob"], row["kelly"], row["ss"]) == (
            info["bull_prob"],
            info["kelly"],
            info["rule_ss"],
        )
        # the next-bar return is the move from this bar's close to the next one
        close = bars["close"].to_numpy()
        assert row["next_ret"] == pytest.approx(close[t + 1] / close[t] - 1, rel=1e-12)
    assert np.isfinite(table["bull_prob"]).all()


def test_forward_evaluation_refuses_in_sample_data(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["evaluate", "--bundle", str(tiny_bundle), "--data", "sp500", "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "nothing to evaluate" in err and "after the training span" in err
    assert not (tmp_path / "index.html").exists()


def test_cli_ends_with_the_verdict(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["evaluate", "--bundle", str(tiny_bundle), "--data", "sp500", "--out", str(tmp_path)]
    args += ["--period", "before", "--last", "60", "--permutations", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    verdict = next(i for i, line in enumerate(out) if line.startswith("VERDICT: "))
    assert out[verdict] == "VERDICT: no skill detected"  # no null, no claim of skill
    assert out.index(next(line for line in out if line.startswith("report: "))) < verdict
    assert "--permutations 0" in out[verdict + 2]
    # a strategy that never held a position has no Sharpe ratio: said so, not "+nan"
    assert not [line for line in out if "nan" in line.split()[-1] or "=+nan" in line], out
    flat = [x for x in out if "turnover/yr=0.0 " in x + " "]
    assert flat, out  # this bundle's Kelly is flat (no skill): enhanced_kelly never trades
    for line in flat:
        assert "sharpe=n/a" in line and line.endswith("(never in the market)"), line


def test_allow_in_sample_is_marked_not_honest(tiny_bundle: Path, tmp_path: Path) -> None:
    args = ["evaluate", "--bundle", str(tiny_bundle), "--data", "sp500", "--out", str(tmp_path)]
    args += ["--allow-in-sample", "--last", "40", "--permutations", "5"]
    assert main(args) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["selection"]["status"] == "in_sample" and not m["selection"]["honest"]
    assert any("NOT AN HONEST" in w for w in m["selection"]["warnings"])
    assert "IN SAMPLE" in (tmp_path / "index.html").read_text()


def test_mixed_daily_and_hourly_symbols_are_annualised_apart(
    tiny_bundle: Path, tmp_path: Path, sp500_bars: pd.DataFrame
) -> None:
    """A daily symbol and an hourly one (S&P 500 bars re-stamped an hour apart, before the
    training span) in one report: each gets its own bars per year; the hourly one is scored
    only because the timeframe check is overridden, and the report says so."""
    hourly = sp500_bars.iloc[:1500].copy()
    hourly.index = pd.date_range("2005-01-03", periods=len(hourly), freq="h", name="timestamp")
    path = tmp_path / "hourly.csv"
    hourly.to_csv(path)
    out = tmp_path / "report"
    args = ["evaluate", "--bundle", str(tiny_bundle), "--data", f"sp500,{path}", "--out", str(out)]
    args += ["--period", "before", "--last", "80", "--permutations", "5"]
    args += ["--allow-timeframe-mismatch"]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    sym = m["selection"]["per_symbol"]
    assert 240 < sym["sp500"]["bars_per_year"] < 260
    assert sym["hourly"]["bars_per_year"] == pytest.approx(365.2425 * 24)
    assert m["backtest"]["bars_per_year_per_symbol"] == {
        s: v["bars_per_year"] for s, v in sym.items()
    }
    assert m["annualisation"]["per_symbol"]["hourly"] == sym["hourly"]["bars_per_year"]
    assert any("--allow-timeframe-mismatch" in w for w in m["selection"]["warnings"])
    assert m["options"]["allow_timeframe_mismatch"] is True


def test_report_without_baselines_says_why(tiny_bundle: Path, tmp_path: Path) -> None:
    import dataclasses

    from mlsignal.bundle import load_bundle
    from mlsignal.evaluate import EvalOptions, evaluate_bundle

    bundle = load_bundle(tiny_bundle)
    training = dict(bundle.manifest["training"], data=str(tmp_path / "gone.csv"))
    bundle = dataclasses.replace(bundle, manifest={**bundle.manifest, "training": training})
    opts = EvalOptions(period="before", last=40, permutations=5)
    result = evaluate_bundle(bundle, "sp500", tmp_path / "report", opts, echo=lambda _: None)
    m = result.metrics
    assert not m["baselines"]["fitted"]
    assert any(w.startswith("baselines left out") for w in m["selection"]["warnings"])
    assert m["classification"]["models"] == ["bull_prob", "p_lstm", "p_tft"]
    assert "baselines left out" in (tmp_path / "report" / "index.html").read_text()
