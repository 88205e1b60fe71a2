"""The figures of a run from its fold files: out-of-fold table, per-fold and pooled metrics, the printed table.

:func:`oof_table` lays the folds' test probabilities out as ``oof.csv`` (one row per image and repeat);
:func:`aggregate_results` makes ``results.json``: each fold's metrics, their mean and standard deviation
over folds, and the pooled out-of-fold metrics with a bootstrap interval (:func:`fold_figures`, over
:func:`smallct.evaluation.intervals.pooled_figures`); :func:`format_table` prints them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from smallct.config.run import CVConfig
from smallct.datasets.folder import Dataset, data_fingerprint
from smallct.evaluation.intervals import Units, over_repeats, pooled_figures
from smallct.evaluation.metrics import classification_metrics, summarize_folds
from smallct.evaluation.multilabel import multilabel_metrics

CI_METRICS = ("accuracy", "balanced_accuracy", "roc_auc", "weighted_log_loss", "mean_auc")  # figures with an interval
N_BOOT = 1000  # bootstrap resamples of the pooled figures
SMOOTHED = ("each label's out-of-fold probability averaged over a centred window of {n} slices of its series, never "
            "across a gap or a series end (the window cut short there); nothing chosen on a test fold")
FIXED = "the model after the last epoch is evaluated at threshold 0.5 (no epoch or threshold is chosen on a test fold)"


def fold_metrics(dataset: Dataset, y: np.ndarray, probs: np.ndarray) -> dict:
    """The figures of one fold's (or any set's) predictions: classification or RSNA multi-label ones."""
    return multilabel_metrics(y, probs) if dataset.task == "multilabel" else classification_metrics(y, probs)


def oof_table(folds: list[dict], dataset: Dataset) -> pd.DataFrame:
    """``oof.csv``: id, file, the label(s), the probabilities (``prob`` or ``prob_<class>``), pred, fold, repeat.

    ``id`` (the file's name without suffix, as text) and ``file`` (its name) are those of smallct.predict's table,
    so the two join on either. ``prob`` is the probability of the positive class, ``class_names[1]`` (recorded as
    ``positive_class`` in run.json and results.json).
    """
    multilabel = dataset.task == "multilabel"
    rows = []
    for f in folds:
        for i, idx in enumerate(f["test_index"]):
            row = {"id": dataset.ids[idx], "file": dataset.files[idx].name}
            p = f["probs"][i]
            if multilabel:
                for j, name in enumerate(dataset.class_names):
                    row[name] = int(dataset.labels[idx, j])
                for j, name in enumerate(dataset.class_names):
                    row[f"prob_{name}"] = p[j]
            else:
                row["label"] = int(dataset.labels[idx])
                if len(p) == 2:
                    row["prob"] = p[1]
                else:
                    row.update({f"prob_{c}": v for c, v in zip(dataset.class_names, p)})
                row["pred"] = int(np.argmax(p))
            row.update(fold=f["fold"], repeat=f["repeat"])
            rows.append(row)
    return pd.DataFrame(rows).sort_values(["repeat", "fold", "id"]).reset_index(drop=True)


def history_table(folds: list[dict]) -> pd.DataFrame:
    """``history.csv``: one row per epoch and fold."""
    return pd.DataFrame([{"repeat": f["repeat"], "fold": f["fold"], **h} for f in folds for h in f["history"]])


def stack_probs(folds: list[dict], n: int, repeats: int) -> np.ndarray:
    """(repeats, N, C) out-of-fold probabilities of the folds' files."""
    width = len(folds[0]["probs"][0])
    P = np.full((repeats, n, width), np.nan)
    for f in folds:
        P[f["repeat"], f["test_index"]] = np.asarray(f["probs"])
    return P


def fold_figures(folds: list[dict], task: str, labels: np.ndarray, repeats: int, units: Units,
                 seed: int = 0, complete: bool = True, n_boot: int = N_BOOT) -> dict:
    """The figures of a run's folds: ``per_fold``, ``mean_std_over_folds`` and, when every fold is there, the
    pooled out-of-fold figures with their bootstrap interval (``pooled_oof``, ``pooled_oof_ci95``, ``ci_method``,
    ``ci_resampled``).

    ``folds`` are fold files (repeat, fold, test_index, probs, metrics); ``labels`` (N,) or (N, L) of ``task``.
    With repeats, a pooled figure is the mean over repeats of the figure of that repeat's pooled out-of-fold
    predictions. The bootstrap resamples ``units`` (the groups the folds keep whole), the same in every repeat.
    Shared by cross-validation and ensembles of runs (:mod:`smallct.analysis.ensemble`).
    """
    per_fold = [{"repeat": f["repeat"], "fold": f["fold"], "n_test": len(f["test_index"]), **f["metrics"]}
                for f in folds]
    metric_names = [k for k in folds[0]["metrics"] if isinstance(folds[0]["metrics"][k], (int, float))]
    out = {"per_fold": per_fold,
           "mean_std_over_folds": summarize_folds([{k: f[k] for k in metric_names} for f in per_fold])}
    if complete:
        P = stack_probs(folds, len(labels), repeats)
        metric = multilabel_metrics if task == "multilabel" else classification_metrics
        figure = over_repeats(metric, labels, P, metric_names)
        point, ci = pooled_figures(figure, units, [m for m in metric_names if m in CI_METRICS],
                                   n_boot=n_boot, seed=seed)
        out["pooled_oof"] = point
        out["pooled_oof_ci95"] = ci
        out["ci_method"] = f"{units.describe(n_boot)} of pooled out-of-fold predictions"
        out["ci_resampled"] = units.record()
    return out


def smooth_folds(folds: list[dict], dataset: Dataset, n: int) -> list[dict]:
    """The fold files with each test fold's probabilities smoothed over ``n`` slices of each series
    (:meth:`smallct.data.neighbours.Neighbours.smooth`, among the fold's own slices) and its metrics again."""
    out = []
    for f in folds:
        test = np.asarray(f["test_index"])
        probs = dataset.neighbours.take(test).smooth(np.asarray(f["probs"]), n)
        out.append({**f, "probs": probs.tolist(), "metrics": fold_metrics(dataset, dataset.labels[test], probs)})
    return out


def settings_selection(cfg: CVConfig, dataset: Dataset) -> tuple[str, str | None]:
    """What a run chose, and on which images: ``results.json``'s ``selection``, and one console line (None: nothing
    to warn of) when the ``--params`` settings were chosen or compared on these same images, or do not say where.

    The images are compared by :func:`smallct.datasets.folder.data_fingerprint` against the settings file's
    ``_chosen_on`` (``cfg.params_chosen_on``: a study's best_params.json and the shipped recipes record it).
    """
    n, nested = len(dataset), "python -m smallct.nested --candidates FILE[,FILE...] gives an honest one"
    if cfg.params_source is None:
        return ("the model after the last epoch is evaluated; nothing (epoch, threshold, setting) is chosen on a "
                "test fold; threshold 0.5 is fixed"), None
    if cfg.params_chosen_on == data_fingerprint(dataset):
        return (f"the --params settings were chosen or compared on these same {n} images, on cross-validation folds "
                "of them (settings_source says how), so every test fold here took part in that choice and the "
                f"figures are optimistic (smallct.nested gives an honest one); {FIXED}",
                f"note: the --params settings were chosen or compared on these same {n} images (a study's trials or "
                f"a recipe's comparison): these figures are optimistic; {nested}")
    if cfg.params_chosen_on:
        return (f"the --params settings were chosen on an image set other than exactly these {n} (settings_source "
                f"says which; it may share images with them); {FIXED}"), None
    return (f"the --params settings do not record on which images they were chosen (settings_source): if on these "
            f"{n}, the figures are optimistic (smallct.nested gives an honest one); {FIXED}",
            f"note: the --params settings do not record on which images they were chosen; if on these {n}, these "
            f"figures are optimistic: {nested}")


def aggregate_results(folds: list[dict], dataset: Dataset, cfg: CVConfig, units: Units | None = None) -> dict:
    """Per-fold metrics, mean and std over folds, and pooled out-of-fold metrics with a bootstrap CI
    (:func:`fold_figures`), with the run's settings.

    The bootstrap resamples ``units``: the groups the folds keep whole
    (:attr:`smallct.data.folds.Folds.units`; default: every image on its own), the same ones in every repeat.
    """
    units = units if units is not None else Units(len(dataset))
    complete = len(folds) == cfg.folds * cfg.repeats
    figures = fold_figures(folds, dataset.task, dataset.labels, cfg.repeats, units, cfg.seed, complete)
    if cfg.smooth > 1 and dataset.neighbours is not None:
        smoothed = fold_figures(smooth_folds(folds, dataset, cfg.smooth), dataset.task, dataset.labels, cfg.repeats,
                                units, cfg.seed, complete)
        figures["smoothed"] = {"slices": cfg.smooth, "how": SMOOTHED.format(n=cfg.smooth), **smoothed}
    return {
        "task": dataset.task,
        "class_names": dataset.class_names,
        "positive_class": dataset.positive_class,  # what prob, sensitivity, specificity and roc_auc are for
        "arch": cfg.arch,
        "weights": cfg.weights,
        "n_images": len(dataset),
        "folds": cfg.folds,
        "repeats": cfg.repeats,
        "complete": complete,
        "per_fold": figures.pop("per_fold"),
        "mean_std_over_folds": figures.pop("mean_std_over_folds"),
        "selection": settings_selection(cfg, dataset)[0],  # what was chosen, on which images
        "settings_source": cfg.params_source or "command line and defaults (not tuned on these folds)",
        **figures,  # the pooled figures, when complete
    }


def format_table(results: dict) -> str:
    """The compact table printed at the end of a run."""
    names = [m for m in ("accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity", "f1",
                         "log_loss", "weighted_log_loss", "mean_auc") if m in results["mean_std_over_folds"]]
    short = {"accuracy": "acc", "balanced_accuracy": "bal_acc", "roc_auc": "auc", "sensitivity": "sens",
             "specificity": "spec", "log_loss": "logloss", "weighted_log_loss": "wlogloss", "mean_auc": "mean_auc"}
    head = f"{'fold':>8} " + " ".join(f"{short.get(n, n):>9}" for n in names)
    lines = [head]
    for f in results["per_fold"]:
        lines.append(f"{'r%d f%d' % (f['repeat'], f['fold']):>8} " + " ".join(f"{f[n]:>9.3f}" for n in names))
    ms = results["mean_std_over_folds"]
    lines.append(f"{'mean':>8} " + " ".join(f"{ms[n]['mean']:>9.3f}" for n in names))
    lines.append(f"{'std':>8} " + " ".join(f"{ms[n]['std']:>9.3f}" for n in names))
    if "pooled_oof" in results:
        lines.append(f"{'pooled':>8} " + " ".join(f"{results['pooled_oof'][n]:>9.3f}" for n in names))
        for n, (lo, hi) in results["pooled_oof_ci95"].items():
            lines.append(f"pooled out-of-fold {n}: {results['pooled_oof'][n]:.3f} (95% CI {lo:.3f}-{hi:.3f})")
        smoothed = results.get("smoothed", {})
        for n, (lo, hi) in smoothed.get("pooled_oof_ci95", {}).items():
            lines.append(f"smoothed over {smoothed['slices']} slices, pooled out-of-fold {n}: "
                         f"{smoothed['pooled_oof'][n]:.3f} (95% CI {lo:.3f}-{hi:.3f})")
        unit = results.get("ci_resampled")
        if unit:
            lines.append(f"intervals: bootstrap over {unit['n_units']} {unit['unit']}"
                         + (f" of {unit['n_images']} images" if unit["unit"] != "images" else "")
                         + " (the units the folds keep whole)")
    if results.get("positive_class"):
        lines.append(f"sens, spec and auc are for the positive class {results['positive_class']}")
    return "\n".join(lines)
