"""Plain baselines on the same features: logistic regression and gradient boosting.

If the LSTM, the TFT and their stack cannot beat these (fitted on the same windows, folds
and labels), their extra machinery buys nothing. Each window ``(T, F)`` becomes ``2 F``
tabular features: the last bar's features and their mean over the window.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Baseline names, in table order.
BASELINES = ("logistic", "boosting")


def tabular(X: np.ndarray) -> np.ndarray:
    """Windows ``(N, T, F)`` -> ``(N, 2F)`` float64: last bar's features, then window means."""
    X = np.asarray(X)
    return np.concatenate([X[:, -1, :], X.mean(axis=1)], axis=1).astype(np.float64)


def fit_baselines(X: np.ndarray, y: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Fit every baseline of :data:`BASELINES` on windows ``X (N, T, F)`` and labels ``y``.

    logistic: standardised features, L2 (C = 0.1); boosting: scikit-learn's histogram
    gradient boosting (200 shallow trees, learning rate 0.05, seeded).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    Z, y = tabular(X), np.asarray(y).astype(np.int64)
    models = {
        "logistic": make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)),
        "boosting": HistGradientBoostingClassifier(
            max_iter=200,
            learning_rate=0.05,
            max_leaf_nodes=15,
            min_samples_leaf=40,
            early_stopping=False,
            random_state=seed,
        ),
    }
    for m in models.values():
        m.fit(Z, y)
    return models


def predict_baselines(models: dict[str, Any], X: np.ndarray) -> dict[str, np.ndarray]:
    """P(label 1) ``(N,)`` of each fitted baseline on windows ``X (N, T, F)``."""
    Z = tabular(X)
    return {name: m.predict_proba(Z)[:, 1].astype(np.float64) for name, m in models.items()}
