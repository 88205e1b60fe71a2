"""Figures of multi-label predictions: the RSNA 2019 weighted log loss, per-label AUC and F1.

Label order and weights come from :data:`smallct.datasets.rsna.LABEL_WEIGHTS`, the one place they are set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from smallct.datasets.rsna import EPS, LABELS, WEIGHTS
from smallct.evaluation.metrics import roc_auc  # equal to sklearn's roc_auc_score, fast enough for a bootstrap


def _check(y_true, y_prob, n_labels: int | None = len(LABELS)) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_prob, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 2 or (n_labels is not None and y.shape[1] != n_labels):
        raise ValueError(f"y_true {y.shape} and y_prob {p.shape}: expected two arrays of shape "
                         f"(N, {n_labels or 'L'}), columns in the order {', '.join(LABELS)}")
    if y.shape[0] == 0:
        raise ValueError("y_true and y_prob: no rows")
    if not (np.all(np.isfinite(p)) and np.all((y >= 0) & (y <= 1))):
        raise ValueError("y_true must hold values in [0, 1] and y_prob finite values")
    return y, p


def weighted_log_loss(y_true, y_prob) -> float:
    """The RSNA 2019 metric: weighted multi-label log loss.

    Per image, the weighted average over the six labels of the binary log loss (weights
    :data:`WEIGHTS`: 2 for ``any``, 1 per subtype), then the mean over images; probabilities are
    clipped to [1e-15, 1 - 1e-15].

    Parameters
    ----------
    y_true, y_prob
        Arrays (N, 6), columns in :data:`LABELS` order: 0/1 labels and predicted probabilities.

    Returns
    -------
    float
        The loss (lower is better; the 1st-place private score was 0.04383).
    """
    y, p = _check(y_true, y_prob)
    p = np.clip(p, EPS, 1 - EPS)
    w = np.asarray(WEIGHTS)
    per_label = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return float(np.mean(per_label @ w / w.sum()))


def per_label_auc(y_true, y_prob, labels: Sequence[str] = LABELS) -> dict[str, float]:
    """ROC AUC of each label column: ``{label: auc}``, NaN where the column holds one class only."""
    y, p = _check(y_true, y_prob, len(labels))
    return {name: roc_auc(y[:, j], p[:, j]) for j, name in enumerate(labels)}


def f1_at_half(y_true, y_prob, labels: Sequence[str] = LABELS) -> dict[str, float]:
    """F1 of each label column with positives at ``p >= 0.5``: ``{label: f1}``.

    NaN where the label has no positive and none is predicted (F1 is undefined there).
    """
    y, p = _check(y_true, y_prob, len(labels))
    truth, pred = y >= 0.5, p >= 0.5
    tp = (truth & pred).sum(axis=0)
    wrong = (truth != pred).sum(axis=0)  # false positives + false negatives
    return {name: float(2 * tp[j] / (2 * tp[j] + wrong[j])) if 2 * tp[j] + wrong[j] else float("nan")
            for j, name in enumerate(labels)}


def multilabel_metrics(y_true, y_prob) -> dict[str, float]:
    """The figures of a multi-label cross-validation fold (or of pooled out-of-fold predictions).

    Parameters
    ----------
    y_true, y_prob
        Arrays (N, 6), columns in :data:`LABELS` order: 0/1 labels and predicted probabilities.

    Returns
    -------
    dict
        A flat dict of floats: ``weighted_log_loss`` (the competition metric), ``mean_auc`` (mean of
        the defined per-label AUCs; NaN when none is), ``accuracy`` (mean over labels of the accuracy
        at p >= 0.5), then ``auc_<label>`` and ``f1_<label>`` (at p >= 0.5) per label, NaN where
        undefined (see :func:`per_label_auc`, :func:`f1_at_half`).
    """
    y, p = _check(y_true, y_prob)
    auc = per_label_auc(y, p)
    f1 = f1_at_half(y, p)
    defined = [v for v in auc.values() if not np.isnan(v)]
    out = {
        "weighted_log_loss": weighted_log_loss(y, p),
        "mean_auc": float(np.mean(defined)) if defined else float("nan"),
        "accuracy": float(np.mean((p >= 0.5) == (y >= 0.5))),
    }
    out.update({f"auc_{name}": v for name, v in auc.items()})
    out.update({f"f1_{name}": v for name, v in f1.items()})
    return out
