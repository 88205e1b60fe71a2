"""Ensembles of runs as a figure: ``python -m smallct.ensemble RUN_A RUN_B ... --out DIR``.

Runs on the same images, labels, classes and fold assignment (different architectures, sizes or seeds of
initialisation, same ``--folds``, ``--repeats`` and ``--seed``) predict every image once per repeat, each from a
model that never saw it. Averaging their out-of-fold probabilities, per image and repeat, is what the ensemble
of their fold models would have predicted for that image, so the average is an out-of-fold prediction too, and
its figures are honest as long as the weights were fixed beforehand (weights chosen by looking at these figures
make them optimistic).

:func:`ensemble_runs` writes a run-like folder: ``oof.csv`` (the columns of a cv run's), ``results.json``
(per-fold and pooled figures with the same grouped bootstrap interval as cv,
:func:`smallct.engine.results.fold_figures`, and the members), ``ensemble.json``, ``roc.png`` /
``confusion.png``, a ``run.json`` holding the folds (so that :mod:`smallct.analysis.compare` pairs the ensemble
with other runs; it has no fold models, so ``smallct predict`` takes the member runs instead), and
``compare.json`` / ``compare.png``: the paired comparison (:func:`smallct.analysis.compare.compare_predictions`)
of the ensemble (B) against its best member (A, by pooled accuracy, then AUC).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

import smallct
from smallct.analysis.compare import (RunPredictions, check_paired, check_resamples, compare_predictions,
                                      read_predictions, summary_lines, write_comparison)
from smallct.data.folds import Folds
from smallct.datasets.folder import Dataset
from smallct.engine.results import fold_figures, format_table, oof_table
from smallct.engine.run_folder import RunFolder
from smallct.evaluation import plots
from smallct.evaluation.intervals import over_repeats
from smallct.evaluation.metrics import classification_metrics
from smallct.io.files import atomic_csv, atomic_json

ENSEMBLE_JSON = "ensemble.json"  # beside the run files RunFolder names: what an ensemble adds


def read_member(path: str | Path) -> RunPredictions:
    """The out-of-fold predictions of a finished binary or multi-class run; ``ValueError`` naming the folder
    when it is unfinished, not a run, or a multi-label run."""
    folder = RunFolder(Path(path))
    if folder.read_record().get("task") == "multilabel":
        raise ValueError(f"{folder.path}: a multi-label run; smallct.ensemble averages binary and multi-class runs")
    return read_predictions(folder.path)


def normalised_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    """``weights`` (one per run, >= 0, not all 0) scaled to sum to 1; equal weights when None."""
    if weights is None:
        return np.full(n, 1 / n)
    w = np.asarray(weights, dtype=float)
    if w.shape != (n,):
        raise ValueError(f"--weights: {w.size} weights for {n} runs; give one per run (e.g. --weights "
                         f"{','.join(['1'] * n)})")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"--weights {','.join(f'{v:g}' for v in w)}: weights must be >= 0 and not all 0")
    return w / w.sum()


def average_probs(members: Sequence[RunPredictions], weights: np.ndarray) -> np.ndarray:
    """(repeats, N, C) weighted mean of the members' out-of-fold probabilities (``weights`` summing to 1)."""
    return np.tensordot(weights, np.stack([m.P for m in members]), axes=1)


def pooled_point(labels: np.ndarray, P: np.ndarray) -> dict:
    """The pooled out-of-fold figures of (repeats, N, C) probabilities: with repeats, the mean over repeats."""
    names = list(classification_metrics(labels, P[0]))
    return over_repeats(classification_metrics, labels, P, names)(np.arange(len(labels)))


def best_member(figures: list[dict]) -> int:
    """Index of the member with the best pooled accuracy, ties broken by AUC (undefined AUC last)."""
    def key(i: int) -> tuple[float, float]:
        auc = figures[i]["roc_auc"]
        return figures[i]["accuracy"], auc if np.isfinite(auc) else -np.inf
    return max(range(len(figures)), key=key)


def _fold_files(labels: np.ndarray, P: np.ndarray, assignment: np.ndarray) -> list[dict]:
    """The ensemble's folds as cv's fold files: repeat, fold, test_index, probs and metrics of each test fold."""
    folds, split = [], Folds(np.asarray(assignment))
    for r in range(split.repeats):
        for k, _, test in split.split(r):
            folds.append({"repeat": r, "fold": k, "test_index": test.tolist(), "probs": P[r, test].tolist(),
                          "metrics": classification_metrics(labels[test], P[r, test])})
    return folds


def _dataset(first: RunPredictions) -> Dataset:
    """The images of the members as a :class:`Dataset` of ids, file names and labels (for ``oof.csv``)."""
    oof = RunFolder(first.path).read_oof()
    names = dict(zip(oof["id"], oof["file"])) if "file" in oof else {}
    classes = list(first.record["class_names"])
    positive = first.record.get("positive_class", classes[1] if len(classes) == 2 else None)
    return Dataset(ids=first.ids, files=[Path(str(names.get(i, i))) for i in first.ids], labels=first.labels,
                   class_names=classes, task="binary" if len(classes) == 2 else "multiclass",
                   positive_class=positive)


def _weights_kind(weights: Sequence[float] | None) -> str:
    return "equal weights" if weights is None else "weights " + ":".join(f"{float(v):g}" for v in weights)


def _check_out(out: Path, paths: list[Path]) -> None:
    target = out.resolve()
    for p in paths:
        if p.resolve() == target:
            raise ValueError(f"--out {out}: is the member run {p}; write the ensemble to another folder")
    folder = RunFolder(out)
    if folder.has_record() and "ensemble" not in folder.read_record():
        raise ValueError(f"--out {out}: holds a smallct.cv run; write the ensemble to another folder")


def ensemble_runs(paths: Sequence[str | Path], out: str | Path, weights: Sequence[float] | None = None,
                  n_boot: int = 2000, seed: int = 0, log=print) -> dict:
    """Average the out-of-fold predictions of runs on the same folds and write the ensemble as a run folder.

    Parameters
    ----------
    paths
        Two or more finished run folders (``run.json``, ``oof.csv``) of binary or multi-class runs on the same
        images, labels, classes and fold assignment; a run may appear twice.
    out
        The ensemble's folder (not a member's).
    weights
        One weight per run (>= 0), normalised to sum to 1; default equal weights. Fix them beforehand.
    n_boot
        Bootstrap resamples of the units the folds keep whole, for the pooled intervals and the paired
        comparison against the best member.
    seed
        Seed of the bootstraps.

    Returns
    -------
    dict
        ``results.json``'s content; its ``ensemble`` entry holds the members, their weights and pooled
        figures, the best member and the comparison's sentence.

    Raises
    ------
    ValueError
        Naming the folders when a run is unfinished or the runs are not on the same images, labels, classes and
        folds; for bad weights or ``out``.
    """
    paths, out = [Path(p) for p in paths], Path(out)
    if len(paths) < 2:
        raise ValueError(f"{len(paths)} run given: an ensemble averages two or more runs on the same folds")
    check_resamples(n_boot)
    w = normalised_weights(weights, len(paths))
    _check_out(out, paths)
    members = [read_member(p) for p in paths]
    for m in members[1:]:
        check_paired(members[0], m)  # same images, labels, classes and folds, or a one-line error naming both
    first, y = members[0], members[0].labels
    ensemble = RunPredictions(out, _record(first, paths, weights, w), first.ids, y, average_probs(members, w),
                              first.assignment)
    figures = [pooled_point(y, m.P) for m in members]
    best = members[best_member(figures)]
    comparison = compare_predictions(best, ensemble, n_boot, seed)  # B - A = ensemble - best member

    dataset, folds = _dataset(first), _fold_files(y, ensemble.P, first.assignment)
    repeats, n = first.assignment.shape
    units = RunFolder(first.path).resampling_units(first.record)  # the groups the members' folds keep whole
    results = {
        "task": dataset.task, "class_names": dataset.class_names, "positive_class": dataset.positive_class,
        "arch": ensemble.record["arch"], "weights": ensemble.record["weights"]["kind"], "n_images": n,
        "folds": int(first.assignment.max()) + 1, "repeats": repeats, "complete": True,
        **fold_figures(folds, dataset.task, y, repeats, units, seed, n_boot=n_boot),
        "selection": ("the members' out-of-fold probabilities averaged per image and repeat with weights given "
                      "beforehand; nothing is chosen on a test fold; threshold 0.5 is fixed"),
        "ensemble": {
            "members": [{"path": str(m.path), "label": m.label, "arch": m.record.get("arch"), "weight": float(wi),
                         "pooled_oof": f} for m, wi, f in zip(members, w, figures)],
            "best_member": {"path": str(best.path), "label": best.label,
                            "chosen_by": "pooled out-of-fold accuracy, ties by AUC (chosen on these folds, so the "
                                         "best member's figure is itself a little optimistic)"},
            "comparison": {"difference": "ensemble - best member", "sentence": comparison["sentence"],
                           **{m: comparison[m] for m in ("accuracy", "roc_auc")}},
        },
    }
    _write(out, ensemble.record, dataset, folds, results, comparison)
    log(format_table(results))
    log(f"the ensemble (B) against its best member (A), {best.label}:")
    for line in summary_lines(comparison):
        log(line)
    log(f"ensemble folder: {out}")
    return results


def _record(first: RunPredictions, paths: list[Path], weights: Sequence[float] | None, w: np.ndarray) -> dict:
    """The ensemble's ``run.json``: the members' images, classes, folds and resampling groups, and the members."""
    record = {k: first.record[k] for k in ("task", "class_names", "positive_class", "folds", "resampling",
                                           "similar_images", "data") if k in first.record}
    config = first.record.get("config", {})  # only the settings that make the folds: the members differ in others
    record.update(config={**{k: config.get(k) for k in ("folds", "repeats", "seed")},
                          "data": {"group_similar": config.get("data", {}).get("group_similar")}},
                  arch=f"ensemble of {len(paths)} runs", weights={"kind": _weights_kind(weights)},
                  versions={"smallct": smallct.__version__},
                  ensemble={"members": [str(p) for p in paths], "weights": w.tolist()})
    return record


def _write(out: Path, record: dict, dataset: Dataset, folds: list[dict], results: dict, comparison: dict) -> None:
    """The ensemble's folder: run.json, oof.csv, results.json, ensemble.json, the plots and the comparison."""
    folder = RunFolder(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_json(folder.run_json, record)
    oof = oof_table(folds, dataset)
    atomic_csv(folder.oof_csv, oof)
    folder.write_results(results)
    atomic_json(out / ENSEMBLE_JSON, {**record["ensemble"], "members": results["ensemble"]["members"],
                                      "best_member": results["ensemble"]["best_member"]})
    pngs = {"roc": folder.roc_png, "confusion": folder.confusion_png}
    for name, figure in plots.run_figures(results, oof).items():
        plots.save_figure(figure, pngs[name])
    write_comparison(comparison, out)


__all__ = ["ENSEMBLE_JSON", "average_probs", "best_member", "ensemble_runs", "normalised_weights", "pooled_point",
           "read_member"]
