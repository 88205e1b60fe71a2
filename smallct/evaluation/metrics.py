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
    """Accuracy, balanced accuracy, macro one-vs-rest ROC AUC, macro F1, log loss; ``y`` (N,) class indices,
    ``P`` (N, C) every class's probability.

    Defined, and quiet, on a test fold that lacks a class: balanced accuracy is the mean recall of the classes
    present; macro F1 is over the classes present or predicted (scikit-learn's default set); the macro AUC is
    NaN (one class's one-vs-rest AUC has no positives; :func:`summarize_folds` leaves the fold out of the mean,
    and :func:`counted_figures` does the same); the log loss counts all C classes.
    """
    y = np.asarray(y).astype(int)
    classes = list(range(P.shape[1]))
    pred = P.argmax(1)
    present = np.unique(y)
    auc = float("nan")
    if len(present) == len(classes):
        auc = float(skm.roc_auc_score(y, P, multi_class="ovr", labels=classes))
    return {
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float(skm.recall_score(y, pred, labels=present, average="macro", zero_division=0)),
        "roc_auc": auc,
        "f1": float(skm.f1_score(y, pred, labels=np.union1d(present, pred), average="macro", zero_division=0)),
        "log_loss": float(skm.log_loss(y, np.clip(P, 1e-15, 1), labels=classes)),
    }


def classification_metrics(y: np.ndarray, P: np.ndarray) -> dict[str, float]:
    """Binary metrics when ``P`` has two columns, multi-class ones otherwise."""
    return binary_metrics(y, P[:, 1]) if P.shape[1] == 2 else multiclass_metrics(y, P)


def counted_figures(y: np.ndarray, P: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and ROC AUC of ``(y, P)`` for every row of ``counts`` at once.

    ``counts`` (B, N): how often each image is taken (a bootstrap resample: how often its unit was drawn). Each
    figure (B,) is :func:`classification_metrics`' on the images repeated that often (tested), NaN where it is
    undefined (AUC without both classes; the macro AUC of several classes once one is missing): a bootstrap of
    many prediction sets then costs array operations, not B calls per set.
    """
    y = np.asarray(y).astype(int)
    W = np.atleast_2d(np.asarray(counts, dtype=float))
    n_classes = P.shape[1]
    right = ((P[:, 1] >= 0.5).astype(int) if n_classes == 2 else P.argmax(1)) == y  # binary_metrics' threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = (W @ right) / W.sum(1)
        per_class = np.stack([(W[:, y == c] @ right[y == c]) / W[:, y == c].sum(1) for c in range(n_classes)])
        present = np.isfinite(per_class)  # a class absent from the images has no recall (left out, as sklearn does)
        balanced = np.where(present, per_class, 0).sum(0) / present.sum(0)
        auc = np.mean([_counted_auc(y == c, P[:, c], W) for c in ((1,) if n_classes == 2 else range(n_classes))],
                      axis=0)
    return {"accuracy": accuracy, "balanced_accuracy": balanced, "roc_auc": auc}


def _counted_auc(positive: np.ndarray, score: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC (ties 1/2) of ``score`` for ``positive`` (N,) under each row of counts ``W`` (B, N)."""
    order = np.argsort(score, kind="stable")
    s, pos = score[order], positive[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # the first image of each distinct score
    Wo = W[:, order]
    at_pos, at_neg = np.add.reduceat(Wo * pos, starts, axis=1), np.add.reduceat(Wo * ~pos, starts, axis=1)
    below = np.cumsum(at_neg, axis=1) - at_neg  # negatives scored lower than each distinct score
    pairs = at_pos.sum(1) * at_neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, (at_pos * (below + 0.5 * at_neg)).sum(1) / pairs, np.nan)


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
