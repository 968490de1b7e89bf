"""Fitting the stacking meta-learner and the calibration (numpy / scikit-learn, training only).

The fitted numbers go into :class:`mlsignal.models.signal_model.SignalModel` buffers
(``set_stack``, ``set_calibration``); :func:`apply_stack` and :func:`apply_calibration` are the
numpy twins of what the module computes, equal to it within 1e-6.

Calibration is a piecewise-linear, non-decreasing map given by knots ``x`` (strictly
increasing, ``x[0] = 0``, ``x[-1] = 1``) and ``y`` (non-decreasing), evaluated as

    f(s) = y[0] + sum_i slope_i * (clamp(s, x[i], x[i+1]) - x[i]),
    slope_i = (y[i+1] - y[i]) / (x[i+1] - x[i])

which needs no search or indexing (ONNX- and CUDA-graph-friendly), then clamped to
``[PROB_EPS, 1 - PROB_EPS]``.
"""

from __future__ import annotations

import numpy as np

from mlsignal.errors import DataError

PROB_EPS = 1e-4  # bull_prob is clamped to [PROB_EPS, 1 - PROB_EPS]
MIN_KNOT_GAP = 1e-3  # smallest x gap between calibration knots (keeps slopes float32-safe)
MIN_CALIB_SAMPLES = 50  # fewer samples (or one class only) -> identity calibration
CALIB_PRIOR = 20.0  # pseudo-samples shrinking each calibration bin toward the base rate
STACK_C = 10.0  # inverse L2 strength of the stacking logistic regression (light)


def fit_stack(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Fit the meta-learner: logistic regression of y on the two base logits, with
    non-negative weights.

    logits: (N, 2) float, columns (logit_lstm, logit_tft); y: (N,) labels in {0, 1}.
    Returns (w (2,), b): stacked = sigmoid(logits @ w + b), w >= 0. The objective is
    scikit-learn's (``C * sum(log loss) + |w|^2 / 2``, C = :data:`STACK_C`); the bound keeps
    the stack from betting against a base model on fold noise (a negative weight would
    mean "this model ranks the wrong way round", which no model here is built to do).
    """
    from scipy.optimize import minimize

    logits, y = _check_xy(logits, y, "logits")
    if logits.ndim != 2 or logits.shape[1] != 2:
        raise DataError(f"logits must have shape (N, 2), got {logits.shape}")
    if np.unique(y).size < 2:
        raise DataError("fit_stack needs labels of both classes, got one class only")

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = logits @ theta[:2] + theta[2]
        p = _sigmoid(z)
        nll = np.logaddexp(0.0, z) - y * z  # (N,) log loss of each sample
        g = p - y
        grad = np.concatenate([STACK_C * logits.T @ g + theta[:2], [STACK_C * g.sum()]])
        return float(STACK_C * nll.sum() + 0.5 * theta[:2] @ theta[:2]), grad

    base = np.clip(y.mean(), 1e-6, 1 - 1e-6)
    start = np.array([0.0, 0.0, np.log(base / (1 - base))])
    res = minimize(
        loss, start, jac=True, method="L-BFGS-B", bounds=[(0, None), (0, None), (None, None)]
    )
    w = np.maximum(res.x[:2], 0.0)
    return w.astype(np.float64), float(res.x[2])


def apply_stack(logits: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    """logits (N, 2), w (2,), b -> stacked probability (N,) = sigmoid(logits @ w + b)."""
    return _sigmoid(np.asarray(logits, np.float64) @ np.asarray(w, np.float64) + float(b))


def fit_calibration(
    p: np.ndarray, y: np.ndarray, n_knots: int = 32, prior: float = CALIB_PRIOR
) -> tuple[np.ndarray, np.ndarray]:
    """Fit a monotone calibration map from stacked probability p to P(y = 1).

    Smoothed, binned isotonic calibration: p is cut into ``n_knots - 2`` quantile bins; each
    bin's hit rate is shrunk toward the overall base rate with ``prior`` pseudo-samples
    (``(hits + prior * base) / (count + prior)``), so a thin bin at the edge cannot map to 0
    or 1; isotonic regression over the bin centres (weighted by count) makes the map
    monotone. Knots are the bin centres plus 0 and 1 (flat beyond the outer centres).
    p: (N,) in [0, 1]; y: (N,) in {0, 1}. Returns (x (K,), y (K,)), K <= n_knots,
    float32-exact values in float64 arrays, x strictly increasing from 0 to 1, y
    non-decreasing. Falls back to the identity (two knots) when the data are degenerate:
    fewer than MIN_CALIB_SAMPLES samples, one class only, or p (nearly) constant.
    """
    from sklearn.isotonic import IsotonicRegression

    p, y = _check_xy(p, y, "p")
    if n_knots < 3:
        raise DataError(f"n_knots must be at least 3, got {n_knots}")
    if p.size < MIN_CALIB_SAMPLES or np.unique(y).size < 2 or np.ptp(p) < MIN_KNOT_GAP:
        return identity_knots()
    p = np.clip(p, 0.0, 1.0)
    edges = np.quantile(p, np.linspace(0.0, 1.0, n_knots - 1))
    bins = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_knots - 3)
    count = np.bincount(bins, minlength=n_knots - 2).astype(np.float64)
    used = count > 0
    hits = np.bincount(bins, weights=y, minlength=n_knots - 2)[used]
    centre = np.bincount(bins, weights=p, minlength=n_knots - 2)[used] / count[used]
    rate = (hits + prior * y.mean()) / (count[used] + prior)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(centre, rate, sample_weight=count[used])
    kx = _spaced(np.concatenate([[0.0], centre, [1.0]]), n_knots)
    ky = np.maximum.accumulate(np.clip(iso.predict(kx), 0.0, 1.0))  # guard float noise
    return _f32_exact(kx), np.maximum.accumulate(_f32_exact(ky))


def apply_calibration(p: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """p (N,) stacked probabilities, knots x, y (K,) -> bull_prob (N,), clamped to
    [PROB_EPS, 1 - PROB_EPS]. The same clamp formula as ``SignalModel`` (see module doc)."""
    p = np.asarray(p, np.float64)[:, None]  # (N, 1)
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    slope = np.diff(y) / np.diff(x)  # (K-1,)
    seg = np.minimum(np.maximum(p, x[:-1]), x[1:]) - x[:-1]  # (N, K-1)
    return np.clip(y[0] + seg @ slope, PROB_EPS, 1.0 - PROB_EPS)


def flat_knots(rate: float) -> tuple[np.ndarray, np.ndarray]:
    """A constant calibration map: every stacked probability becomes ``rate`` (float32-exact),
    what a model without detectable skill should say."""
    r = float(np.float32(rate))
    return np.array([0.0, 1.0]), np.array([r, r])


def identity_knots() -> tuple[np.ndarray, np.ndarray]:
    """The identity calibration as two knots: x = y = [0, 1]."""
    return np.array([0.0, 1.0]), np.array([0.0, 1.0])


def pad_knots(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Add knots on the existing segments (widest first, at its midpoint) until there are k.

    The map is unchanged (up to float32 rounding of the new knots); the result is what a
    fixed-size ``(k,)`` buffer holds. x must be strictly increasing, len(x) <= k.
    """
    x, y = np.asarray(x, np.float64).copy(), np.asarray(y, np.float64).copy()
    if len(x) > k:
        raise DataError(f"{len(x)} calibration knots do not fit in {k}")
    while len(x) < k:
        i = int(np.argmax(np.diff(x)))
        xm = float(np.float32((x[i] + x[i + 1]) / 2))
        ym = y[i] + (y[i + 1] - y[i]) * (xm - x[i]) / (x[i + 1] - x[i])
        x, y = np.insert(x, i + 1, xm), np.insert(y, i + 1, ym)
    return x, y


def check_knots(x: np.ndarray, y: np.ndarray) -> None:
    """Raise DataError unless x, y are finite 1-D knots of equal length >= 2 with x strictly
    increasing from 0 to 1 (gaps >= MIN_KNOT_GAP / 2) and y non-decreasing within [0, 1]."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size < 2:
        raise DataError(
            f"calibration knots must be 1-D of equal length >= 2, got {x.shape}, {y.shape}"
        )
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise DataError("calibration knots must be finite")
    if x[0] != 0.0 or x[-1] != 1.0 or np.diff(x).min() < MIN_KNOT_GAP / 2:
        raise DataError(f"calibration x must rise strictly from 0 to 1, got {x.tolist()}")
    if np.diff(y).min() < 0 or y[0] < 0 or y[-1] > 1:
        raise DataError(f"calibration y must be non-decreasing within [0, 1], got {y.tolist()}")


def _spaced(x: np.ndarray, n_knots: int) -> np.ndarray:
    """Sorted knots at least MIN_KNOT_GAP apart, 0 and 1 kept, at most n_knots of them."""
    x = np.unique(np.clip(x, 0.0, 1.0))
    keep = [0.0]
    for v in x[1:-1]:
        if v - keep[-1] >= MIN_KNOT_GAP and 1.0 - v >= MIN_KNOT_GAP:
            keep.append(float(v))
    keep.append(1.0)
    assert len(keep) <= n_knots
    return np.array(keep)


def _f32_exact(a: np.ndarray) -> np.ndarray:
    """Round to float32 and back: the buffers hold float32, so numpy and torch share knots."""
    return np.asarray(a, np.float32).astype(np.float64)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def _check_xy(a: np.ndarray, y: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    a, y = np.asarray(a, np.float64), np.asarray(y, np.float64)
    if y.ndim != 1 or a.shape[0] != y.shape[0] or y.size == 0:
        raise DataError(f"{name} {a.shape} and y {y.shape} must have the same non-zero length N")
    if not (np.isfinite(a).all() and np.isfinite(y).all()):
        raise DataError(f"{name} and y must be finite")
    if not np.isin(y, (0.0, 1.0)).all():
        raise DataError("y must hold labels 0 and 1 only")
    return a, y
