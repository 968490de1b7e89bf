"""Purged walk-forward splits with an embargo, built by hand for time series.

scikit-learn's stacking and its splitters do not purge overlapping labels, so the folds are
built here. Samples live on one global timeline (sorted unique timestamps of all symbols):
``start[i]`` is the position of sample i's bar, ``end[i]`` the position of the last bar its
label looks at. The period after an initial training share is cut into ``n_folds``
contiguous test blocks. For a block ``[a, b]``:

- test: samples with ``a <= start <= b``;
- train: samples whose whole label span ends before the block, with a gap:
  ``end < a - embargo`` (purging removes labels that overlap the test period; the embargo
  adds ``embargo`` more bars so serial correlation cannot leak across the boundary).

Training is always strictly earlier than testing (walk-forward), never later.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Fold:
    """Indices into the sample arrays for one walk-forward step."""

    index: int
    train: np.ndarray
    test: np.ndarray
    test_start: int
    test_end: int


def purged_walk_forward(
    start: np.ndarray,
    end: np.ndarray,
    n_folds: int,
    embargo: int,
    initial_train_frac: float = 0.4,
) -> list[Fold]:
    """Build ``n_folds`` purged, embargoed walk-forward folds over global positions."""
    start, end = np.asarray(start), np.asarray(end)
    if start.shape != end.shape or start.ndim != 1:
        raise ValueError("start and end must be 1-d arrays of the same length")
    if n_folds < 1 or not 0.0 < initial_train_frac < 1.0:
        raise ValueError("need n_folds >= 1 and 0 < initial_train_frac < 1")
    lo, hi = int(start.min()), int(start.max())
    first_test = lo + int((hi - lo + 1) * initial_train_frac)
    edges = np.linspace(first_test, hi + 1, n_folds + 1).astype(int)
    folds = []
    for k in range(n_folds):
        a, b = int(edges[k]), int(edges[k + 1]) - 1
        test = np.flatnonzero((start >= a) & (start <= b))
        train = np.flatnonzero(end < a - embargo)
        if len(test) and len(train):
            folds.append(Fold(k, train, test, a, b))
    return folds


def holdout_tail(
    train: np.ndarray, start: np.ndarray, end: np.ndarray, frac: float, gap: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split training indices into (fit, validation) with the validation as the latest
    ``frac`` of the period, purged by ``gap`` bars, for early stopping."""
    s = start[train]
    cut = int(np.quantile(s, 1.0 - frac))
    val = train[s >= cut]
    fit = train[end[train] < cut - gap]
    return fit, val
