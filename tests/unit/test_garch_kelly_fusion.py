"""GARCH regime, Kelly sizing and score fusion (numpy side)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mlsignal.errors import ConfigError, DataError
from mlsignal.models.fusion import FusionConfig, conviction, fuse, fuse_batch
from mlsignal.models.garch import (
    GarchParams,
    classify_regime,
    classify_regime_batch,
    fit_garch,
    garch_forecast,
    garch_forecast_batch,
)
from mlsignal.models.kelly import (
    KellyConfig,
    KellyParams,
    fit_kelly_params,
    kelly_fraction,
    kelly_fraction_batch,
)

# --- GARCH -------------------------------------------------------------------------------


def simulate_garch(n: int, mu: float, omega: float, alpha: float, beta: float, seed: int):
    """Log returns (fractions) from a GARCH(1,1) in percent units."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(n + 500)
    sigma2, out = omega / (1 - alpha - beta), np.empty(n + 500)
    for t in range(n + 500):
        eps = math.sqrt(sigma2) * z[t]
        out[t] = mu + eps
        sigma2 = omega + alpha * eps**2 + beta * sigma2
    return out[500:] / 100


@pytest.fixture(scope="module")
def sp500_returns() -> np.ndarray:
    from arch.data import sp500

    close = sp500.load()["Adj Close"].to_numpy()
    return np.diff(np.log(close))


@pytest.fixture(scope="module")
def sp500_params(sp500_returns) -> GarchParams:
    return fit_garch(sp500_returns)


def reference_forecast(p: GarchParams, r: np.ndarray) -> float:
    """Scalar textbook version: filter, then the closed-form h-step variance sum."""
    uncond = p.omega / (1 - p.alpha - p.beta)
    s2 = uncond
    for x in r[-p.lookback :]:
        s2 = p.omega + p.alpha * (100 * x - p.mu) ** 2 + p.beta * s2
    phi = p.alpha + p.beta
    total = sum(uncond + phi ** (k - 1) * (s2 - uncond) for k in range(1, p.horizon + 1))
    return math.sqrt(total) / 100


def test_fit_garch_recovers_simulated_parameters():
    r = simulate_garch(6000, mu=0.04, omega=0.05, alpha=0.10, beta=0.85, seed=0)
    p = fit_garch(r)
    assert p.alpha == pytest.approx(0.10, abs=0.04)
    assert p.beta == pytest.approx(0.85, abs=0.06)
    assert p.persistence == pytest.approx(0.95, abs=0.03)
    assert p.omega / (1 - p.persistence) == pytest.approx(1.0, rel=0.3)  # unconditional var


def test_fit_garch_on_sp500(sp500_params, sp500_returns):
    p = sp500_params
    assert p.alpha > 0 and p.beta > 0 and p.persistence < 1
    assert 0 < p.q_low < p.q_high
    vol = garch_forecast(p, sp500_returns)
    assert 0.005 < vol < 0.2  # 5-day std of the S&P 500: a few percent
    assert classify_regime(p, vol) in ("low", "normal", "high")


def test_forecast_matches_reference_and_arch(sp500_params, sp500_returns):
    from arch import arch_model

    p, r = sp500_params, sp500_returns
    assert garch_forecast(p, r) == pytest.approx(reference_forecast(p, r), rel=1e-10)
    # arch filters the whole sample; after 250 steps the start no longer matters (beta^250).
    am = arch_model(100 * r, mean="Constant", vol="GARCH", p=1, q=1, dist="normal")
    res = am.fix([p.mu, p.omega, p.alpha, p.beta])
    arch_var = res.forecast(horizon=p.horizon, reindex=False).variance.to_numpy()[-1].sum()
    assert garch_forecast(p, r) == pytest.approx(math.sqrt(arch_var) / 100, rel=1e-6)


def test_forecast_rises_after_a_volatility_shock(sp500_params, sp500_returns):
    calm = np.r_[sp500_returns[:3000], 0.0]
    shock = np.r_[sp500_returns[:3000], -0.08]
    assert garch_forecast(sp500_params, shock) > 1.2 * garch_forecast(sp500_params, calm)


def test_vectorised_equals_scalar(sp500_params, sp500_returns):
    p, r = sp500_params, sp500_returns
    rows = np.stack([r[:400], r[1000:1400], r[-400:]])
    batch = garch_forecast_batch(p, rows)
    np.testing.assert_allclose(batch, [garch_forecast(p, row) for row in rows], rtol=1e-12)
    # the fit's training distribution uses the same vectorised filter over sliding windows
    short = dict(horizon=3, lookback=60, quantiles=(0.1, 0.9))
    q = fit_garch(r[:800], **short)
    vols = [garch_forecast(q, r[:800][i - 60 : i]) for i in range(60, 801)]
    assert q.q_low == pytest.approx(np.quantile(vols, 0.1), rel=1e-10)
    assert q.q_high == pytest.approx(np.quantile(vols, 0.9), rel=1e-10)
    regimes = classify_regime_batch(q, np.array(vols))
    assert list(regimes) == [classify_regime(q, v) for v in vols]
    assert set(regimes) == {"low", "normal", "high"}


def test_forecast_with_short_history_and_nonstationary_params():
    p = GarchParams(mu=0.0, omega=0.02, alpha=0.1, beta=0.85, horizon=5, lookback=250)
    assert garch_forecast(p, np.array([0.01])) > 0  # fewer than lookback: use what is there
    unit_root = GarchParams(mu=0.0, omega=0.02, alpha=0.15, beta=0.9, horizon=5, lookback=250)
    vol = garch_forecast(unit_root, np.full(300, 0.01))
    assert np.isfinite(vol) and vol > 0


def test_garch_params_round_trip_and_validation(sp500_params):
    d = json.loads(json.dumps(sp500_params.to_dict()))
    assert GarchParams.from_dict(d) == sp500_params
    with pytest.raises(ConfigError):
        GarchParams(mu=0.0, omega=-1.0, alpha=0.1, beta=0.8)
    with pytest.raises(DataError, match="finite"):
        garch_forecast(sp500_params, np.array([0.01, np.nan]))
    with pytest.raises(DataError, match="at least"):
        fit_garch(np.zeros(50))


# --- Kelly -------------------------------------------------------------------------------

EVEN = KellyParams(payoff_long=1.0, payoff_short=1.0)
CFG = KellyConfig()


def test_kelly_formula_side_and_regime_scaling():
    assert kelly_fraction(0.6, "normal", EVEN, CFG) == (pytest.approx(0.1), "long")
    assert kelly_fraction(0.6, "high", EVEN, CFG) == (pytest.approx(0.05), "long")
    assert kelly_fraction(0.3, "low", EVEN, CFG) == (pytest.approx(0.2), "short")
    assert kelly_fraction(0.5, "normal", EVEN, CFG) == (0.0, "flat")


def test_kelly_cap_and_negative_edge():
    assert kelly_fraction(0.99, "normal", EVEN, CFG) == (0.25, "long")
    assert kelly_fraction(0.0, "low", EVEN, CFG) == (0.25, "short")
    poor = KellyParams(payoff_long=0.5, payoff_short=2.0)
    assert kelly_fraction(0.55, "normal", poor, CFG) == (0.0, "flat")  # 0.55 - 0.45/0.5 < 0


def test_kelly_bounds_and_batch_equals_scalar():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 500)
    regimes = list(rng.choice(["low", "normal", "high"], 500))
    params = KellyParams(payoff_long=1.3, payoff_short=1 / 1.3)
    k, sides = kelly_fraction_batch(p, regimes, params, CFG)
    assert ((k >= 0) & (k <= CFG.cap)).all()
    assert list(zip(k, sides, strict=True)) == [
        kelly_fraction(pi, r, params, CFG) for pi, r in zip(p, regimes, strict=True)
    ]
    assert set(sides) == {"long", "short", "flat"}


def test_fit_kelly_params_and_errors():
    params = fit_kelly_params(np.array([0.02, 0.02, -0.01, -0.01, 0.0]))
    assert params.payoff_long == pytest.approx(2.0) and params.payoff_short == pytest.approx(0.5)
    assert KellyParams.from_dict(params.to_dict()) == params
    assert KellyConfig.from_dict(json.loads(json.dumps(CFG.to_dict()))) == CFG
    with pytest.raises(DataError, match="up and down"):
        fit_kelly_params(np.array([0.01, 0.02]))
    with pytest.raises(DataError, match="bull_prob"):
        kelly_fraction(1.5, "normal", EVEN, CFG)
    with pytest.raises(DataError, match="regime"):
        kelly_fraction(0.6, "extreme", EVEN, CFG)
    with pytest.raises(ConfigError):
        KellyConfig(cap=2.0)


# --- fusion ------------------------------------------------------------------------------


def test_fusion_worked_example():
    e_ss, e_bs = fuse(40, 70, 0.80, FusionConfig())
    assert e_bs == pytest.approx(91.0) and e_ss == pytest.approx(28.0)
    assert conviction(0.80, FusionConfig()) == pytest.approx(0.6)


def test_fusion_direction_identity_and_zero_scores():
    cfg = FusionConfig()
    assert fuse(40, 70, 0.5, cfg) == (40.0, 70.0)
    e_ss, e_bs = fuse(40, 70, 0.2, cfg)  # bearish: ss up, bs down
    assert e_ss > 40 and e_bs < 70
    assert fuse(0, 0, 1.0, cfg) == (0.0, 0.0)  # never creates a signal
    assert fuse(90, 90, 0.0, FusionConfig(strength=1.0)) == (100.0, 0.0)  # clipped


def test_fusion_dead_zone_is_continuous():
    cfg = FusionConfig(dead_zone=0.2)
    assert fuse(40, 70, 0.55, cfg) == (40.0, 70.0)  # |c| = 0.1 inside the zone
    assert conviction(0.6, cfg) == pytest.approx(0.0)  # at the edge
    assert conviction(0.6 + 1e-9, cfg) == pytest.approx(0.0, abs=1e-8)
    assert conviction(1.0, cfg) == pytest.approx(1.0) and conviction(0.0, cfg) == -1.0


def test_fusion_bounds_and_batch_equals_scalar():
    rng = np.random.default_rng(1)
    ss, bs, p = rng.uniform(0, 100, 300), rng.uniform(0, 100, 300), rng.uniform(0, 1, 300)
    cfg = FusionConfig(strength=0.8, dead_zone=0.1)
    e_ss, e_bs = fuse_batch(ss, bs, p, cfg)
    assert ((e_ss >= 0) & (e_ss <= 100) & (e_bs >= 0) & (e_bs <= 100)).all()
    for i in range(0, 300, 37):
        assert fuse(ss[i], bs[i], p[i], cfg) == (e_ss[i], e_bs[i])


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((-1.0, 50.0, 0.5), "ss"),
        ((10.0, 101.0, 0.5), "bs"),
        ((10.0, float("nan"), 0.5), "bs"),
        ((10.0, 50.0, 1.2), "bull_prob"),
        ((10.0, 50.0, "high"), "bull_prob"),
    ],
)
def test_fusion_rejects_bad_input(args, name):
    with pytest.raises(DataError, match=rf"^{name} must be .* got"):
        fuse(*args, FusionConfig())


def test_fusion_batch_error_names_index_and_config_validation():
    with pytest.raises(DataError, match=r"bull_prob\[2\].*-0\.1"):
        fuse_batch(np.ones(3), np.ones(3), np.array([0.5, 0.5, -0.1]), FusionConfig())
    with pytest.raises(ConfigError):
        FusionConfig(strength=1.5)
    with pytest.raises(ConfigError):
        FusionConfig(dead_zone=1.0)
