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


def test_metrics_and_controls(report: Path) -> None:
    m = json.loads((report / "metrics.json").read_text())
    cls = m["classification"]
    for model in ("bull_prob", "p_lstm", "p_tft"):
        real, control = cls["pooled"][model], cls["control"]["pooled"][model]
        assert real["n"] == N_BARS
        assert 0.0 < real["brier"] < 0.5 and real["brier_base"] == pytest.approx(
            real["base_rate"] * (1 - real["base_rate"])
        )
        # shuffled labels: no skill, whatever the model
        assert abs(control["auc"] - 0.5) < 0.1
        assert abs(cls["auc_null"][model]["null_mean"] - 0.5) < 0.03
    assert sum(b["count"] for b in cls["reliability"]["bull_prob"]) == N_BARS
    bt = m["backtest"]
    strategies = {"long_only", "raw", "enhanced", "enhanced_kelly", "control_enhanced"}
    assert strategies <= set(bt["pooled"])
    assert bt["pooled"]["long_only"]["exposure"] == 1.0
    assert bt["pooled"]["raw"]["bars"] == N_BARS
    assert bt["sharpe_null"]["n_permutations"] == 60


def test_html_is_self_contained(report: Path) -> None:
    page = (report / "index.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4
    for text in ("Out of sample, backward", "shuffled labels", "Sharpe", "Reliability"):
        assert text in page


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


def test_allow_in_sample_is_marked_not_honest(tiny_bundle: Path, tmp_path: Path) -> None:
    args = ["evaluate", "--bundle", str(tiny_bundle), "--data", "sp500", "--out", str(tmp_path)]
    args += ["--allow-in-sample", "--last", "40", "--permutations", "5"]
    assert main(args) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["selection"]["status"] == "in_sample" and not m["selection"]["honest"]
    assert any("NOT AN HONEST" in w for w in m["selection"]["warnings"])
    assert "IN SAMPLE" in (tmp_path / "index.html").read_text()
