"""`mlsignal evaluate`'s honesty parts on hand-made inputs: block nulls, the verdict, the
baselines' training samples, the fusion's footprint and per-symbol annualisation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlsignal.errors import ConfigError
from mlsignal.evaluate.annualise import annualisation
from mlsignal.evaluate.backtest import SECONDS_PER_YEAR, sharpe
from mlsignal.evaluate.baselines import fit_on_training_data, training_samples
from mlsignal.evaluate.fusion_effect import fusion_effect
from mlsignal.evaluate.nulls import null_block, report_verdict
from mlsignal.evaluate.periods import TrainingSpan
from mlsignal.evaluate.run import EvalOptions
from mlsignal.evaluate.study import classification_section, trading_section
from mlsignal.features import DEFAULT_SCHEMA
from mlsignal.training.dataset import build_dataset
from mlsignal.training.labels import LabelConfig

H = 5  # label horizon of the synthetic series


def _bundle(labels: dict | None = None) -> object:
    from mlsignal.bundle import Bundle
    from mlsignal.models.fusion import FusionConfig
    from mlsignal.models.garch import GarchParams
    from mlsignal.models.kelly import KellyConfig, KellyParams

    garch = GarchParams(mu=0.0, omega=0.01, alpha=0.1, beta=0.8)
    config = {"labels": labels} if labels is not None else {}
    return Bundle(
        Path("."), {}, config, DEFAULT_SCHEMA, garch, KellyParams(), KellyConfig(), FusionConfig()
    )


def _overlapping(n: int, seed: int, skill: float = 0.0, scale: float = 3.0) -> pd.DataFrame:
    """One symbol, no skill unless ``skill`` > 0: ``H``-bar forward returns of i.i.d. moves
    (neighbouring labels share ``H - 1`` moves) and a smooth, persistent probability (a 20-bar
    moving average of its own noise, ``scale`` its spread), as a real model's output is."""
    rng = np.random.default_rng(seed)
    moves = rng.normal(size=n + H)
    fwd = np.array([moves[t + 1 : t + 1 + H].sum() for t in range(n)])
    z = np.convolve(rng.normal(size=n + 19), np.ones(20) / 20, "valid") + skill * fwd
    p = 1 / (1 + np.exp(-scale * z))
    return pd.DataFrame(
        {
            "timestamp": pd.date_range("2020-01-01", periods=n, freq="D"),
            "symbol": "x",
            "bull_prob": p,
            "p_lstm": p,
            "p_tft": p,
            "label": (fwd > 0).astype(float),
            "fwd": fwd,
        }
    )


def _width(t: dict) -> float:
    return t["null_q95"] - t["null_q05"]


# --- block nulls ------------------------------------------------------------------------------
def test_block_null_is_wider_than_iid_on_overlapping_labels() -> None:
    """The i.i.d. null (blocks of one bar) is too narrow when labels overlap and the model's
    output is persistent; the default block (20 bars for horizon 5) is not."""
    table = _overlapping(1000, seed=3)
    opts = EvalOptions(permutations=200)
    block = null_block(_bundle(), opts)
    assert block == 20
    wide, _ = classification_section(table, opts, block)
    narrow, _ = classification_section(table, opts, 1)
    for stat in ("auc", "ic"):
        ratio = _width(wide["nulls"][stat]["bull_prob"]) / _width(
            narrow["nulls"][stat]["bull_prob"]
        )
        assert ratio > 1.3, (stat, ratio)
    assert "blocks of 20 bars" in wide["nulls"]["method"]
    assert wide["nulls"]["block"] == 20 and wide["nulls"]["n_permutations"] == 200


def test_null_block_from_the_horizon_and_never_shorter() -> None:
    assert null_block(_bundle({"horizon": 10}), EvalOptions()) == 40
    assert null_block(_bundle({"horizon": 10}), EvalOptions(block=10)) == 10
    with pytest.raises(ConfigError, match="shorter than the label horizon"):
        null_block(_bundle({"horizon": 10}), EvalOptions(block=9))
    with pytest.raises(ConfigError, match="block"):
        EvalOptions(block=0).check()


def test_ic_sits_next_to_auc_pooled_and_per_symbol() -> None:
    from scipy.stats import spearmanr

    table = _overlapping(300, seed=1)
    section, _ = classification_section(table, EvalOptions(permutations=5), 20)
    ic = spearmanr(table["bull_prob"], table["fwd"]).statistic
    assert section["pooled"]["bull_prob"]["ic"] == pytest.approx(ic)
    assert section["per_symbol"]["x"]["p_tft"]["ic"] == pytest.approx(ic)
    assert section["nulls"]["ic"]["bull_prob"]["observed"] == pytest.approx(ic)


# --- the verdict --------------------------------------------------------------------------------
def _verdict(
    table: pd.DataFrame, honest: bool = True, permutations: int = 100, base: float | None = None
) -> dict:
    section, _ = classification_section(table, EvalOptions(permutations=permutations), 20)
    status = "oos_forward" if honest else "in_sample"
    base = float(table["label"].mean()) if base is None else base
    return report_verdict(section, {"honest": honest, "status": status}, few=250, base_rate=base)


def test_a_bundle_saying_its_base_rate_everywhere_is_no_skill_not_worse() -> None:
    """The period's share of up-labels drifts from the bundle's; a constant forecast of the
    bundle's base rate is still only "no information", the reference itself."""
    table = _overlapping(1000, seed=3)
    period = float(table["label"].mean())
    flat = table.assign(bull_prob=period + 0.08)  # the bundle's (training) base rate
    v = _verdict(flat, base=period + 0.08)
    assert v["verdict"] == "no skill detected", v
    assert "the bundle's base rate" in v["why"]


def test_verdict_words() -> None:
    noise = _verdict(_overlapping(1000, seed=3, scale=0.3))  # close to the base rate
    assert noise["verdict"] == "no skill detected"
    assert "not as an edge" in noise["plain"] and noise["caveats"] == []
    skilled = _verdict(_overlapping(1000, seed=3, skill=1.0))
    assert skilled["verdict"] == "skill"
    assert "not a proven trading edge" in skilled["plain"]
    assert "block null" in skilled["why"] and "block permutation" in skilled["method"]
    # a confident, uninformative probability: worse than always saying the base rate
    bad = _overlapping(1000, seed=3).assign(bull_prob=0.95)
    worse = _verdict(bad)
    assert worse["verdict"] == "worse than base rate"
    assert "do not let them move your scores" in worse["plain"]


def test_verdict_caveats_and_no_null_no_claim() -> None:
    skilled = _verdict(_overlapping(200, seed=3, skill=1.0), honest=False)
    assert skilled["verdict"] == "skill"
    assert any("not a forward" in c for c in skilled["caveats"])
    assert any("only 200 labelled bars" in c for c in skilled["caveats"])
    none = _verdict(_overlapping(1000, seed=3, skill=1.0), permutations=0)
    assert none["verdict"] == "no skill detected" and "--permutations 0" in none["why"]


def test_verdict_says_when_a_plain_baseline_is_as_good() -> None:
    table = _overlapping(1000, seed=3, skill=1.0)
    table["logistic"] = table["bull_prob"]
    table["boosting"] = 0.5
    v = _verdict(table)
    assert v["verdict"] == "skill"
    assert any("logistic" in c and "add nothing" in c for c in v["caveats"])
    assert not any("boosting" in c for c in v["caveats"])


# --- baselines ------------------------------------------------------------------------------
def _span(data: str, start: str, end: str) -> TrainingSpan:
    return TrainingSpan(pd.Timestamp(start), pd.Timestamp(end), H, H, ("sp500",), data, 0, False)


def test_baseline_samples_are_the_training_span_with_labels_inside_it() -> None:
    from mlsignal.data import load_sample

    labels = LabelConfig()
    span = _span("sp500", "2010-01-04", "2010-12-31")
    ds = training_samples(span, DEFAULT_SCHEMA, labels)
    bars = load_sample("sp500")
    idx = bars.index
    inside = np.flatnonzero((idx >= span.start) & (idx <= span.end))
    # every bar of the span but the last H, whose labels would end after the span
    assert ds.ts.tolist() == idx.values[inside[:-H]].tolist()
    # the same windows and labels as built from the whole series
    full = build_dataset({"sp500": bars}, DEFAULT_SCHEMA, labels)
    keep = np.isin(full.ts, ds.ts)
    np.testing.assert_array_equal(full.X[keep], ds.X)
    np.testing.assert_array_equal(full.y[keep], ds.y)


def test_baselines_left_out_with_a_reason_never_a_crash() -> None:
    labels = LabelConfig()
    b = fit_on_training_data(None, DEFAULT_SCHEMA, labels)
    assert not b.models and "no training span" in b.info["reason"]
    b = fit_on_training_data(
        _span("/nonexistent/bars.csv", "2010-01-04", "2010-12-31"), DEFAULT_SCHEMA, labels
    )
    assert not b.models and "could not be loaded" in b.info["reason"]
    assert b.info["reason"].startswith("baselines left out")
    assert b.score(pd.DataFrame(), np.array([1]), DEFAULT_SCHEMA) == {}


def test_baselines_fit_and_score() -> None:
    from mlsignal.data import load_sample

    span = _span("sp500", "2009-01-01", "2010-12-31")
    b = fit_on_training_data(span, DEFAULT_SCHEMA, LabelConfig(), seed=0)
    assert set(b.models) == {"logistic", "boosting"} and b.info["fitted"]
    assert b.info["samples"] == len(training_samples(span, DEFAULT_SCHEMA, LabelConfig()))
    bars = load_sample("sp500")
    ends = np.arange(len(bars) - 30, len(bars))
    p = b.score(bars, ends, DEFAULT_SCHEMA)
    for name in ("logistic", "boosting"):
        assert p[name].shape == (30,) and ((p[name] > 0) & (p[name] < 1)).all()


# --- how far the fusion moved the scores -----------------------------------------------------
def test_fusion_effect_by_hand() -> None:
    table = pd.DataFrame(
        {
            "symbol": ["a", "a", "b", "b"],
            "ss": [10.0, 20.0, 30.0, 40.0],
            "bs": [50.0, 40.0, 30.0, 20.0],
            "enhanced_ss": [9.0, 20.0, 33.0, 40.0],
            "enhanced_bs": [52.0, 40.0, 29.0, 20.0],
            "kelly_side": ["long", "flat", "short", "long"],
            "bull_prob": [0.6, 0.5, 0.4, 0.7],
        }
    )
    f = fusion_effect(table, base_rate=0.55)
    pooled, a = f["pooled"], f["per_symbol"]["a"]
    assert pooled["bars"] == 4
    assert pooled["mean_abs_delta_bs"] == pytest.approx((2 + 0 + 1 + 0) / 4)
    assert pooled["mean_abs_delta_ss"] == pytest.approx((1 + 0 + 3 + 0) / 4)
    assert (pooled["kelly_flat"], pooled["kelly_long"], pooled["kelly_short"]) == (0.25, 0.5, 0.25)
    assert pooled["mean_bull_prob"] == pytest.approx(0.55)
    assert pooled["mean_bull_prob_minus_base_rate"] == pytest.approx(0.0)
    assert a["mean_abs_delta_bs"] == pytest.approx(1.0) and a["mean_abs_delta_ss"] == 0.5
    assert (a["kelly_flat"], a["kelly_long"], a["kelly_short"]) == (0.5, 0.5, 0.0)
    assert f["per_symbol"]["b"]["mean_bull_prob"] == pytest.approx(0.55)
    assert f["base_rate"] == 0.55 and a["base_rate"] == 0.55


def test_base_rate_of_a_bundle_without_one_is_one_half() -> None:
    from mlsignal.evaluate.run import base_rate

    bundle = _bundle()
    assert base_rate(bundle) == 0.5

    @dataclasses.dataclass(frozen=True)
    class Fusion:
        base_rate: float = 0.58

    assert base_rate(dataclasses.replace(bundle, fusion=Fusion())) == 0.58


# --- annualisation by each symbol's own interval ------------------------------------------------
def _mixed() -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """A daily symbol (the S&P 500 sample) and an hourly one (its last bars re-stamped an hour
    apart), and a trading table of their last 60 bars each with alternating positions."""
    from mlsignal.data import load_sample

    daily = load_sample("sp500")
    hourly = daily.iloc[-2000:].copy()
    hourly.index = pd.date_range("2018-06-01", periods=len(hourly), freq="h")
    bars = {"daily": daily, "hourly": hourly}
    rows = []
    for sym, b in bars.items():
        close = b["close"].to_numpy()
        for i in range(len(b) - 61, len(b) - 1):
            ss, bs = (10.0, 40.0) if i % 3 else (40.0, 10.0)
            rows.append(
                {
                    "timestamp": b.index[i], "symbol": sym, "ss": ss, "bs": bs,
                    "enhanced_ss": ss, "enhanced_bs": bs, "bull_prob": 0.5, "kelly": 0.0,
                    "kelly_side": "flat", "regime": "normal",
                    "next_ret": close[i + 1] / close[i] - 1,
                }
            )  # fmt: skip
    return bars, pd.DataFrame(rows)


def test_each_symbol_is_annualised_by_its_own_interval() -> None:
    bars, table = _mixed()
    years = annualisation(bars, table, None)
    daily, hourly = years["per_symbol"]["daily"], years["per_symbol"]["hourly"]
    assert 250 < daily < 254  # trading days
    assert hourly == pytest.approx(SECONDS_PER_YEAR / 3600)
    # the pooled timeline: the union of both symbols' evaluated timestamps
    timeline = pd.DatetimeIndex(np.unique(table["timestamp"]))
    span_years = (timeline[-1] - timeline[0]).total_seconds() / SECONDS_PER_YEAR
    assert years["pooled"] == pytest.approx((len(timeline) - 1) / span_years)
    opts = EvalOptions(cost_bps=0.0, permutations=2)
    section, _ = trading_section(_bundle(), table, opts, years["pooled"], 20, years["per_symbol"])
    assert section["bars_per_year_per_symbol"] == years["per_symbol"]
    for sym, own in years["per_symbol"].items():
        g = table[table["symbol"] == sym]
        # the same symbol evaluated alone gets the same Sharpe: its own interval, not a median
        alone, _ = trading_section(_bundle(), g, opts, own, 20)
        raw = section["per_symbol"][sym]["raw"]
        assert raw["sharpe"] == pytest.approx(alone["per_symbol"][sym]["raw"]["sharpe"])
        assert raw["turnover_per_year"] == pytest.approx(
            alone["pooled"]["raw"]["turnover_per_year"]
        )
    # a daily Sharpe annualised as hourly would be sqrt(8766 / 252) ~ 5.9 times too large
    g = table[table["symbol"] == "daily"]
    sign = np.where(g["bs"] > g["ss"], 1.0, -1.0)
    net = sign * g["next_ret"].to_numpy()
    assert section["per_symbol"]["daily"]["raw"]["sharpe"] == pytest.approx(sharpe(net, daily))


def test_bars_per_year_given_overrides_every_symbol() -> None:
    bars, table = _mixed()
    years = annualisation(bars, table, 365.0)
    assert years["pooled"] == 365.0 and years["per_symbol"] == {"daily": 365.0, "hourly": 365.0}
    assert "given" in years["how"]
    one = annualisation(bars, table[table["symbol"] == "hourly"], None)
    assert one["pooled"] == one["per_symbol"]["hourly"]  # one symbol: its own timeline
