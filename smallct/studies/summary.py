"""Summaries of repeated measurements, and the printed table.

* :func:`summarize_episodes`: per group, the mean of each figure over episodes (or fits) with its standard
  deviation and the Student-t interval of the mean (:func:`smallct.evaluation.intervals.t_interval`). It
  narrows as episodes are added, also when they reuse the same images: it describes *this* pool of images.
* :func:`resampled_figures` and :func:`summarize_resampled`: the mean over prediction sets (a repeat's pooled
  out-of-fold predictions; an episode's query set) with a percentile bootstrap interval over the units the
  folds keep whole (:func:`smallct.evaluation.intervals.bootstrap_indices`, as smallct.cv's pooled interval).
  Every resample reweights the same images in all sets, so it covers which images were tested (a new pool of
  the same kind). Learning curves take each repeat's interval, averaged: one cross-validation's, which repeats
  on the same images do not narrow; few-shot resamples the episodes too (their support draws).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from smallct.engine.results import N_BOOT
from smallct.evaluation.intervals import Units, bootstrap_indices, percentile_interval, t_interval
from smallct.evaluation.metrics import classification_metrics, counted_figures

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


def _mean_over_sets(values: list[np.ndarray]) -> np.ndarray:
    """Mean over prediction sets (rows), leaving out sets where a figure is undefined (NaN where all are)."""
    v = np.stack(values)
    defined = np.isfinite(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(defined, v, 0).sum(0) / defined.sum(0)


def resampled_figures(labels: np.ndarray, sets: list[tuple[np.ndarray, np.ndarray]], units: Units,
                      n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95, metrics=SUMMARY_METRICS,
                      how: str = "mean") -> tuple[dict, dict[str, list[float]]]:
    """The mean over prediction ``sets`` of each figure, and its percentile bootstrap interval over ``units``.

    ``sets``: ``(index, P)`` pairs, predictions ``P`` (n, C) of the images ``index`` (n,) (a repeat's pooled
    out-of-fold predictions of every image; an episode's query set). A resample draws the units with
    replacement (:func:`~smallct.evaluation.intervals.bootstrap_indices`) and takes every set's figure over its
    images as often as they were drawn (:func:`~smallct.evaluation.metrics.counted_figures`). ``how``:

    * ``mean``: the interval of the mean over sets; with one set per repeat, smallct.cv's ``pooled_oof_ci95``
      (the same draws, the same figures). More repeats narrow it somewhat (their model noise averages out).
    * ``one``: each set's own interval (one repeat: one cross-validation's), bounds averaged over sets: repeats
      of the same images steady the figure but do not narrow its interval (learning curves).
    * ``sets``: each resample also draws the sets with replacement (episodes: their support draws vary too; a
      two-way bootstrap, images x episodes, slightly conservative).

    Returns ``(point, {name: [low, high]})``; resamples where a figure is undefined are left out of its interval.
    """
    labels = np.asarray(labels)
    counts = np.stack([np.bincount(idx, minlength=units.n_images)
                       for idx in bootstrap_indices(units, n_boot, seed)]).astype(float)
    point_sets, boot_sets = [], []
    for index, P in sets:
        point_sets.append(counted_figures(labels[index], P, np.ones((1, len(index)))))
        boot_sets.append(counted_figures(labels[index], P, counts[:, index]))
    if how not in ("mean", "one", "sets"):
        raise ValueError(f"how={how!r}: expected mean, one or sets")
    # which sets each resample averages: all of them, or as many drawn with replacement (B, S)
    chosen = (np.stack(list(bootstrap_indices(len(sets), n_boot, np.random.SeedSequence([seed, 1]))))
              if how == "sets" else np.broadcast_to(np.arange(len(sets)), (n_boot, len(sets))))
    point, ci = {}, {}
    for m in metrics:
        point[m] = float(_mean_over_sets([f[m] for f in point_sets])[0])
        per_set = np.stack([f[m] for f in boot_sets], axis=1)  # (B, S)
        if how == "one":
            bounds = [_interval(per_set[:, s], level) for s in range(len(sets))]
            ci[m] = list(_mean_over_sets([np.asarray(b) for b in bounds]))
        else:
            ci[m] = _interval(_mean_over_sets(list(np.take_along_axis(per_set, chosen, axis=1).T)), level)
    return point, ci


def _interval(values: np.ndarray, level: float) -> list[float]:
    """The percentile interval of the defined bootstrap ``values`` (NaN, NaN when none is)."""
    values = values[np.isfinite(values)]
    return list(percentile_interval(values, level)) if len(values) else [float("nan")] * 2


def summarize_resampled(fits: list[dict], by: list[str], labels: np.ndarray, units: Units, per: str,
                        n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Per group of ``fits`` (by ``by``): :func:`resampled_figures` as columns ``{metric}`` and
    ``{metric}_low``/``_high``.

    Each fit holds ``_index`` (the images it predicted) and ``_P`` (its predictions). ``per="repeat"``: one
    prediction set per ``repeat``, the pooled out-of-fold predictions of its folds (learning curves);
    ``per="row"``: one set per fit (few-shot episodes), the sets resampled too (``how`` of
    :func:`resampled_figures`: ``one`` and ``sets``).
    """
    labels = np.asarray(labels)
    keys = {}
    for f in fits:
        keys.setdefault(tuple(f[k] for k in by), []).append(f)
    rows = []
    for key, group in keys.items():
        if per == "repeat":
            sets = []
            for r in sorted({f["repeat"] for f in group}):
                parts = [f for f in group if f["repeat"] == r]
                sets.append((np.concatenate([f["_index"] for f in parts]), np.concatenate([f["_P"] for f in parts])))
        else:
            sets = [(f["_index"], f["_P"]) for f in group]
        how = "one" if per == "repeat" else "sets"
        point, ci = resampled_figures(labels, sets, units, n_boot, seed, level, how=how)
        row = dict(zip(by, key))
        for m in SUMMARY_METRICS:
            row.update({m: point[m], f"{m}_low": ci[m][0], f"{m}_high": ci[m][1]})
        rows.append(row)
    return pd.DataFrame(rows)


def format_summary(summary: pd.DataFrame, keys: tuple[str, ...] = ("method", "shots"), point: str = "mean",
                   intervals: tuple[tuple[str, str], ...] = (("ci", "95% CI of mean"),),
                   notes: tuple[str, ...] = ()) -> str:
    """A text table: per group (``keys``), each metric's ``point`` (``mean``: mean +- std; ``pooled``: the
    pooled figure) and its intervals, one per ``(column infix, header)`` of ``intervals`` (columns
    ``{metric}_{infix}_low``/``_high``); ``notes``: lines under the table (what each interval is)."""
    def cell(r, m):
        text = f"{r[f'{m}_{point}']:.3f}" + (f" +- {r[f'{m}_std']:.3f}" if point == "mean" else "")
        return text + "".join(f" [{r[f'{m}_{c}_low']:.3f}, {r[f'{m}_{c}_high']:.3f}]" for c, _ in intervals)

    width = [max(len(k), *(len(str(v)) for v in summary[k])) for k in keys]
    under = ("mean +- std" if point == "mean" else point) + "".join(f" [{name}]" for _, name in intervals)
    cells = [[cell(r, m) for m in SUMMARY_METRICS] for _, r in summary.iterrows()]
    w = max([len(under), *(len(c) for row in cells for c in row)])
    head = " ".join(f"{k:>{n}}" for k, n in zip(keys, width)) + f" {'count':>5}  "
    lines = [head + "  ".join(f"{m:>{w}}" for m in SUMMARY_METRICS),
             " " * len(head) + "  ".join(f"{under:>{w}}" for _ in SUMMARY_METRICS)]
    for (_, r), row in zip(summary.iterrows(), cells):
        lines.append(" ".join(f"{str(r[k]):>{n}}" for k, n in zip(keys, width)) + f" {r['count']:>5}  "
                     + "  ".join(f"{c:>{w}}" for c in row))
    return "\n".join([*lines, *notes])
