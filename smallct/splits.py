"""Fold assignment for (repeated) stratified k-fold cross-validation.

A thin layer over scikit-learn's splitters: ``StratifiedKFold``, or ``StratifiedGroupKFold``
when images carry a patient id (no patient in two folds). Multi-label targets are stratified
on their most informative single column (``any`` for RSNA: the first column) as far as groups allow.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold


def _strata(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return labels
    # multi-label: stratify on the label combination when every combination can fill the folds,
    # else on the first column (``any``)
    return labels[:, 0]


def fold_assignment(labels: np.ndarray, folds: int = 5, repeats: int = 1, seed: int = 0,
                    groups: np.ndarray | None = None) -> np.ndarray:
    """Test-fold index of every image in every repeat: int array (repeats, N).

    Repeat ``r`` shuffles with ``seed + r``, so the same seed always gives the same folds.
    """
    strata = _strata(labels)
    n = len(strata)
    _, counts = np.unique(strata, return_counts=True)
    if folds < 2:
        raise ValueError(f"--folds {folds}: need at least 2")
    if groups is None and counts.min() < folds:
        raise ValueError(f"--folds {folds}: the smallest class has only {counts.min()} images; "
                         f"use at most {counts.min()} folds")
    if groups is not None and len(np.unique(groups)) < folds:
        raise ValueError(f"--folds {folds}: only {len(np.unique(groups))} patients; use fewer folds")
    out = np.full((repeats, n), -1, dtype=np.int64)
    for r in range(repeats):
        if groups is None:
            splitter = StratifiedKFold(folds, shuffle=True, random_state=seed + r)
            splits = splitter.split(np.zeros(n), strata)
        else:
            splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed + r)
            splits = splitter.split(np.zeros(n), strata, groups)
        for k, (_, test) in enumerate(splits):
            out[r, test] = k
    return out
