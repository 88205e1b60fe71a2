"""Metrics of out-of-fold predictions: accuracy, AUC, sensitivity and the rest, and a threshold for inner folds.

Binary metrics use the positive-class probability and a threshold of 0.5 unless told otherwise; a
threshold is never chosen on a test fold (:func:`choose_threshold` serves inner folds, in
smallct.nested). Intervals are :mod:`smallct.evaluation.intervals`.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn import metrics as skm


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count 1/2); NaN when ``y`` has one class.

    Equal to ``sklearn.metrics.roc_auc_score`` (tested), without its input validation, which costs
    milliseconds per call and dominates a bootstrap.
    """
    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, balanced accuracy, ROC AUC, sensitivity, specificity, F1, log loss.

    ``y`` (N,) 0/1; ``p`` (N,) probability of class 1.
    """
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    pred = (p >= threshold).astype(int)
    pc = np.clip(p, 1e-15, 1 - 1e-15)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    return {
        "accuracy": (tp + tn) / len(y),
        "balanced_accuracy": float(np.nanmean([sens, spec])),
        "roc_auc": roc_auc(y, p),
        "sensitivity": sens,
        "specificity": spec,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "log_loss": float(-np.mean(np.where(y == 1, np.log(pc), np.log(1 - pc)))),
    }


def choose_threshold(y: np.ndarray, p: np.ndarray, metric: str = "accuracy") -> float:
    """The decision threshold on ``p`` (probability of class 1) with the best ``metric`` on ``(y, p)``.

    ``metric`` is ``accuracy`` or ``balanced_accuracy`` (which an imbalanced set needs: accuracy may
    then call everything the majority class). Candidates are 0.5, the midpoints between consecutive
    distinct probabilities, and cuts just below the lowest and above the highest; among equally good
    ones the closest to 0.5 wins, so a tie never moves the threshold for nothing. Meant for
    predictions that are *not* a test fold's (smallct.nested gives it inner out-of-fold ones).
    """
    if metric not in ("accuracy", "balanced_accuracy"):
        raise ValueError(f"threshold metric {metric!r}: choose accuracy or balanced_accuracy")
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    values = np.unique(p)
    candidates = np.concatenate([[0.5], (values[1:] + values[:-1]) / 2, [values[0] - 1e-9, values[-1] + 1e-9]])
    right = (p[None, :] >= candidates[:, None]) == y[None, :]
    if metric == "accuracy":
        score = right.mean(1)
    else:  # mean of the per-class recalls (a class absent from y is left out)
        score = np.mean([right[:, y == c].mean(1) for c in (0, 1) if (y == c).any()], axis=0)
    best = np.flatnonzero(score >= score.max() - 1e-12)
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def multiclass_metrics(y: np.ndarray, P: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro one-vs-rest ROC AUC, macro F1, log loss; ``P`` (N, C)."""
    y = np.asarray(y).astype(int)
    pred = P.argmax(1)
    try:
        auc = float(skm.roc_auc_score(y, P, multi_class="ovr", labels=list(range(P.shape[1]))))
    except ValueError:
        auc = float("nan")
    return {
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)),
        "roc_auc": auc,
        "f1": float(skm.f1_score(y, pred, average="macro")),
        "log_loss": float(skm.log_loss(y, np.clip(P, 1e-15, 1), labels=list(range(P.shape[1])))),
    }


def classification_metrics(y: np.ndarray, P: np.ndarray) -> dict[str, float]:
    """Binary metrics when ``P`` has two columns, multi-class ones otherwise."""
    return binary_metrics(y, P[:, 1]) if P.shape[1] == 2 else multiclass_metrics(y, P)


def summarize_folds(per_fold: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation (ddof=1) over folds of each metric, over the folds where it is defined."""
    keys = [k for k in per_fold[0] if isinstance(per_fold[0][k], (int, float))]
    out = {}
    for k in keys:
        v = np.array([f[k] for f in per_fold], dtype=float)
        v = v[np.isfinite(v)]  # a figure undefined in a fold (AUC of a one-class fold) is left out
        out[k] = {"mean": float(v.mean()) if len(v) else float("nan"),
                  "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan" if not len(v) else 0.0)}
    return out
