"""Summaries of repeated measurements: per group, the mean of each figure over episodes (or folds) with its
standard deviation and the Student-t interval of the mean (:func:`smallct.evaluation.intervals.t_interval`),
and the printed table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from smallct.evaluation.intervals import t_interval
from smallct.evaluation.metrics import classification_metrics

SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "roc_auc")  # the figures of an episode or a fit


def episode_figures(y: np.ndarray, P: np.ndarray) -> dict:
    """The :data:`SUMMARY_METRICS` of one episode's (or fit's) predictions ``P`` (N, C) of labels ``y``."""
    m = classification_metrics(y, P)
    return {k: m[k] for k in SUMMARY_METRICS}


def summarize_episodes(episodes: pd.DataFrame, by: list[str], metrics=SUMMARY_METRICS,
                       level: float = 0.95) -> pd.DataFrame:
    """Per group: ``count`` (episodes or fits), and per metric the mean, the standard deviation over episodes (ddof=1)
    and the ``level`` confidence interval of the mean (Student t)."""
    rows = []
    for key, g in episodes.groupby(by, sort=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row["count"] = len(g)
        for m in metrics:
            mean, sd, low, high = t_interval(g[m].to_numpy(dtype=float), level)
            row.update({f"{m}_mean": mean, f"{m}_std": sd, f"{m}_ci_low": low, f"{m}_ci_high": high})
        rows.append(row)
    return pd.DataFrame(rows)


def format_summary(summary: pd.DataFrame, keys: tuple[str, ...] = ("method", "shots")) -> str:
    """A text table: per group (``keys``), mean +- std [95% CI of the mean] of each metric."""
    width = [max(len(k), *(len(str(v)) for v in summary[k])) for k in keys]
    head = " ".join(f"{k:>{w}}" for k, w in zip(keys, width)) + f" {'count':>5}  "
    lines = [head + "  ".join(f"{m:>32}" for m in SUMMARY_METRICS),
             " " * len(head) + "  ".join(f"{'mean +- std [95% CI of mean]':>32}" for _ in SUMMARY_METRICS)]
    for _, r in summary.iterrows():
        cells = [f"{r[f'{m}_mean']:.3f} +- {r[f'{m}_std']:.3f} [{r[f'{m}_ci_low']:.3f}, {r[f'{m}_ci_high']:.3f}]"
                 for m in SUMMARY_METRICS]
        lines.append(" ".join(f"{str(r[k]):>{w}}" for k, w in zip(keys, width)) + f" {r['count']:>5}  "
                     + "  ".join(f"{c:>32}" for c in cells))
    return "\n".join(lines)
