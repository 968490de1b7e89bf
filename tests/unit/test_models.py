"""SignalModel, its base models, stacking and calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mlsignal.errors import ConfigError, DataError
from mlsignal.models.lstm import LSTMClassifier, LSTMConfig
from mlsignal.models.signal_model import SignalModel, SignalModelConfig
from mlsignal.models.stack import (
    apply_calibration,
    apply_stack,
    fit_calibration,
    fit_stack,
    identity_knots,
)
from mlsignal.models.tft import TemporalFusionTransformer, TFTConfig

T, F = 64, 29


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def model() -> SignalModel:
    torch.manual_seed(0)
    m = SignalModel(SignalModelConfig()).eval()
    rng = np.random.default_rng(0)
    m.set_scaler(rng.normal(size=F), rng.uniform(0.5, 2.0, size=F))
    m.set_stack(np.array([0.7, 1.3]), -0.2)
    return m


def windows(b: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, T, F, generator=g) * 2 + 0.5


def test_parameter_count_is_about_148k():
    m = SignalModel(SignalModelConfig())
    total = n_params(m)
    assert abs(total - 148_000) <= 0.05 * 148_000, total
    assert total == n_params(m.lstm) + n_params(m.tft)  # buffers do not count


def test_output_shape_dtype_and_range(model):
    with torch.no_grad():
        out = model(windows(16))
    assert out.shape == (16, 3) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert (out > 0).all() and (out < 1).all()
    assert (out[:, 2] >= 1e-4).all() and (out[:, 2] <= 1 - 1e-4).all()


def test_forward_is_deterministic(model):
    x = windows(8)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_batch_rows_are_independent(model):
    x = windows(32)
    with torch.no_grad():
        batch = model(x)
        for i in (0, 7, 31):
            assert torch.allclose(batch[i], model(x[i : i + 1])[0], atol=1e-6)


def test_input_shape_is_asserted(model):
    with pytest.raises(AssertionError):
        model(torch.zeros(2, T, F + 1))
    with pytest.raises(AssertionError):
        model(torch.zeros(T, F))


def test_identity_calibration_leaves_stacked_prob_unchanged(model):
    x = windows(64)
    with torch.no_grad():
        logits = model.base_logits(x)
        out = model(x)
    stacked = apply_stack(logits.double().numpy(), np.array([0.7, 1.3]), -0.2)
    np.testing.assert_allclose(
        out[:, 2].double().numpy(), np.clip(stacked, 1e-4, 1 - 1e-4), atol=1e-6
    )
    np.testing.assert_allclose(out[:, :2].numpy(), torch.sigmoid(logits).numpy(), atol=1e-7)


def miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Overconfident scores: the true probability is a squashed version of p."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, n)
    true = 0.5 + 0.5 * (p - 0.5)  # real odds are much milder than p claims
    return p, (rng.uniform(0, 1, n) < true).astype(float)


def brier(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((p - y) ** 2))


def test_fit_calibration_improves_brier_and_is_monotone():
    p, y = miscalibrated(20_000, seed=2)
    kx, ky = fit_calibration(p, y, n_knots=32)
    assert len(kx) <= 32 and kx[0] == 0 and kx[-1] == 1
    assert (np.diff(kx) > 0).all() and (np.diff(ky) >= 0).all()
    p_test, y_test = miscalibrated(20_000, seed=3)
    assert brier(apply_calibration(p_test, kx, ky), y_test) < brier(p_test, y_test) - 0.01
    grid = np.linspace(0, 1, 1001)
    assert (np.diff(apply_calibration(grid, kx, ky)) >= 0).all()


def test_torch_and_numpy_calibration_agree():
    p, y = miscalibrated(5_000, seed=4)
    kx, ky = fit_calibration(p, y, n_knots=32)
    m = SignalModel(SignalModelConfig()).eval()
    m.set_calibration(kx, ky)
    s = torch.rand(4096, generator=torch.Generator().manual_seed(5))
    s = torch.cat([s, torch.tensor([0.0, 1.0]), torch.from_numpy(kx).float()])
    with torch.no_grad():
        got = m.calibrate(s).clamp(1e-4, 1 - 1e-4).double().numpy()
    np.testing.assert_allclose(got, apply_calibration(s.double().numpy(), kx, ky), atol=1e-6)


def test_fit_calibration_falls_back_to_identity_on_degenerate_data():
    cases = [
        (np.full(500, 0.3), np.tile([0.0, 1.0], 250)),  # constant p
        (np.linspace(0, 1, 200), np.ones(200)),  # one class
        (np.array([0.2, 0.8]), np.array([0.0, 1.0])),  # too few samples
    ]
    for p, y in cases:
        kx, ky = fit_calibration(p, y)
        assert np.array_equal(kx, [0, 1]) and np.array_equal(ky, [0, 1])


def test_set_calibration_rejects_bad_knots():
    m = SignalModel(SignalModelConfig())
    with pytest.raises(DataError, match="rise strictly"):
        m.set_calibration(np.array([0.0, 0.5, 0.4, 1.0]), np.array([0.0, 0.2, 0.3, 1.0]))
    with pytest.raises(DataError, match="non-decreasing"):
        m.set_calibration(np.array([0.0, 0.5, 1.0]), np.array([0.0, 0.6, 0.4]))


def test_fit_stack_learns_the_right_sign():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 4000).astype(float)
    good = (2 * y - 1) * 1.5 + rng.normal(size=4000)  # informative logit
    inverted = -good + rng.normal(size=4000)  # anti-informative logit
    w, b = fit_stack(np.stack([good, inverted], axis=1), y)
    assert w.shape == (2,) and isinstance(b, float)
    assert w[0] > 0 and w[1] == 0.0  # never a bet against a model: its weight stops at 0
    w2, _ = fit_stack(np.stack([-good, good], axis=1), y)
    assert w2[0] == 0.0 < w2[1]
    with pytest.raises(DataError, match="both classes"):
        fit_stack(np.zeros((10, 2)), np.ones(10))


def test_state_dict_round_trip_gives_identical_outputs(model, tmp_path):
    p, y = miscalibrated(3_000, seed=7)
    model.set_calibration(*fit_calibration(p, y))
    cfg_json = json.dumps(model.config.to_dict())
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    fresh = SignalModel(SignalModelConfig.from_dict(json.loads(cfg_json))).eval()
    fresh.load_state_dict(torch.load(tmp_path / "weights.pt", map_location="cpu"))
    x = windows(16, seed=8)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    model.set_calibration(*identity_knots())


def test_config_dict_round_trip_and_validation():
    cfg = SignalModelConfig.for_shape(n_features=12, window=32)
    assert SignalModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        SignalModelConfig.from_dict({**cfg.to_dict(), "colour": "red"})
    with pytest.raises(ConfigError, match="n_features"):
        SignalModelConfig(n_features=12)
    m = SignalModel(cfg).eval()
    with torch.no_grad():
        assert m(torch.randn(3, 32, 12)).shape == (3, 3)


def test_set_scaler_validates_and_standardises():
    m = SignalModel(SignalModelConfig())
    with pytest.raises(DataError, match="shape"):
        m.set_scaler(np.zeros(F - 1), np.ones(F - 1))
    with pytest.raises(DataError, match="finite"):
        m.set_scaler(np.full(F, np.nan), np.ones(F))
    m.set_scaler(np.arange(F), np.r_[np.zeros(1), np.ones(F - 1)])  # constant feature 0
    assert m.feat_std[0] == 1.0 and m.feat_mean[3] == 3.0


def test_base_models_shapes_and_tft_interpretation():
    torch.manual_seed(0)
    x = torch.randn(4, T, F)
    assert LSTMClassifier(LSTMConfig()).eval()(x).shape == (4,)
    tft = TemporalFusionTransformer(TFTConfig()).eval()
    with torch.no_grad():
        out = tft.interpret(x)
        assert torch.equal(out["logit"], tft(x))
    assert out["variable_weights"].shape == (4, T, F)
    assert torch.allclose(out["variable_weights"].sum(-1), torch.ones(4, T), atol=1e-5)
    attn = out["attention"]
    assert attn.shape == (4, T, T)
    assert torch.allclose(attn.sum(-1), torch.ones(4, T), atol=1e-5)
    assert attn.triu(diagonal=1).abs().max() == 0  # causal: no weight on later steps


def test_signal_model_interpret_matches_forward(model):
    x = windows(3)
    with torch.no_grad():
        out = model.interpret(x)
        assert torch.allclose(out["logit"], model.base_logits(x)[:, 1])
    assert out["variable_weights"].shape == (3, T, F)


def test_tft_is_causal_in_time():
    torch.manual_seed(0)
    tft = TemporalFusionTransformer(TFTConfig()).eval()
    x = torch.randn(2, T, F)
    y = x.clone()
    y[:, -1] += 1.0  # change only the newest bar
    with torch.no_grad():
        a, b = tft.interpret(x)["attention"], tft.interpret(y)["attention"]
    assert torch.allclose(a[:, :-1], b[:, :-1], atol=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_model_traces_for_other_batch_sizes(model):
    # No data-dependent Python control flow: a trace at batch 4 serves batch 9.
    with torch.no_grad(), pytest.warns(torch.jit.TracerWarning):
        traced = torch.jit.trace(model, windows(4))
        x = windows(9, seed=9)
        assert torch.allclose(traced(x), model(x), atol=1e-6)
