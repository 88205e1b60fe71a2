"""Learning curves: ``python -m smallct.curve``.

Would more labels help? For each training-set size ``n``, each repeat and each fold of a stratified
k-fold cross-validation, ``n`` images are drawn (stratified) from the fold's training part, a model
is trained on them and evaluated on the whole test fold. The same draws serve every weight source
and method (paired comparison). Per (weights, method, n) the run reports accuracy, balanced accuracy and
ROC AUC: the mean and standard deviation over folds x repeats, and the figure of the pooled out-of-fold
predictions (each repeat's test folds cover every image once; mean over repeats) with a 95% percentile
bootstrap interval over the groups the folds keep whole (near-duplicates, patients; images when none): each
repeat's interval as smallct.cv gives one cross-validation's, the same draws for every repeat, bounds
averaged (:func:`smallct.studies.summary.summarize_resampled`). Repeats on the same images steady the figure
but do not narrow its interval (a Student t over folds x repeats did, about 3.7x at 10 repeats; the bootstrap
of the repeats' mean would by about 14% on Head CT at n = 150, though the training images stay the same 200).

Methods:

``probe``     a linear probe (:func:`smallct.studies.methods.linear_probe`, fixed ``C``) on frozen embeddings
              (:mod:`smallct.models.embeddings`, computed once, cached): seconds.
``finetune``  the whole network trained on the ``n`` images (:mod:`smallct.studies.finetune`): one network per
              (n, fold, repeat, weights); on a 2-core CPU about 10-30 s per fit of Lite0 at 160 px, so
              ``--method finetune`` with 5 sizes x 5 folds x 2 weight sources takes 10-30 minutes.

Writes ``curve.csv`` (one row per weights, method and n), ``curve_folds.csv`` (one row per fit),
``curve.json`` and ``curve.png`` (pooled accuracy with its 95% interval against n, log scale; the legend names
the unit resampled).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from smallct.progress import tqdm

from smallct.config.run import to_dict
from smallct.config.schema import flat
from smallct.config.studies import CurveConfig
from smallct.data.cache import open_images
from smallct.data.folds import Folds, check_fold_classes, make_folds
from smallct.data.seeds import subset_seed
from smallct.datasets.folder import Dataset, load_data
from smallct.engine.estimate import fmt_duration
from smallct.engine.results import N_BOOT
from smallct.engine.run_folder import RunFolder
from smallct.engine.tracking import Tracker
from smallct.engine.train import resolve_device, with_threads
from smallct.evaluation.intervals import Units
from smallct.evaluation.plots import interval_plot, save_figure
from smallct.io.files import atomic_csv, atomic_json
from smallct.models.embeddings import POOLINGS, load_embeddings
from smallct.models.weights import WeightSource, resolve_weights
from smallct.studies.finetune import finetune_fit_seconds, finetune_predict, seconds_per_image
from smallct.studies.methods import NORMALIZATIONS, linear_probe, normalize_embeddings
from smallct.studies.summary import (SUMMARY_METRICS, episode_figures, format_summary, summarize_episodes,
                                     summarize_resampled)

CURVE_METHODS = ("probe", "finetune")


def draw_training_subset(train: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices drawn from ``train``, stratified by ``labels`` (all of ``train`` when ``n`` covers it), sorted."""
    if n >= len(train):
        return np.sort(train)
    if len(train) - n < len(np.unique(labels[train])):  # too few left out to stratify them: drop them at random
        drop = np.random.default_rng(seed).choice(len(train), len(train) - n, replace=False)
        return np.sort(np.delete(train, drop))
    sub, _ = train_test_split(train, train_size=n, stratify=labels[train], random_state=seed)
    return np.sort(sub)


def check_sizes(sizes: list[int], labels: np.ndarray, folds: np.ndarray) -> str | None:
    """``ValueError`` when a size is below twice the class count or above the largest training part; a note
    (else ``None``) when a size exceeds some folds' training parts (those folds train on all of theirs)."""
    n_classes = len(np.unique(labels))
    parts = [int((f != k).sum()) for f in folds for k in np.unique(f)]
    smallest, largest = min(parts), max(parts)
    bad = [n for n in sizes if n < 2 * n_classes or n > largest]
    if bad or not sizes:
        raise ValueError(f"--sizes {','.join(map(str, bad)) or '(empty)'}: need {2 * n_classes} <= n <= {largest} "
                         f"(two images per class at least; the largest training part holds {largest} images)")
    over = [n for n in sizes if n > smallest]
    if over:
        return (f"note: training parts hold {smallest}-{largest} images (grouped folds are uneven); at n = "
                f"{','.join(map(str, over))} a fold whose part is smaller trains on all of it "
                "(n_train in curve_folds.csv)")
    return None


@dataclass
class CurveResult:
    out: Path
    summary: pd.DataFrame
    folds: pd.DataFrame


def check_config(cfg: CurveConfig) -> None:
    """``ValueError`` naming what is wrong, before any work."""
    bad = [m for m in cfg.methods if m not in CURVE_METHODS]
    if bad or not cfg.methods:
        raise ValueError(f"--method {','.join(bad) or '(empty)'}: expected some of {', '.join(CURVE_METHODS)}")
    if cfg.pool not in POOLINGS or cfg.normalize not in NORMALIZATIONS:
        raise ValueError(f"--pool {cfg.pool} / --normalize {cfg.normalize}: expected one of {POOLINGS} / "
                         f"{NORMALIZATIONS}")


def draw_splits(cfg: CurveConfig, labels: np.ndarray, folds: Folds) -> list[tuple]:
    """``(n, repeat, fold, training subset, test fold)`` for every size, repeat and fold: the same draws for every
    weight source and method (a paired comparison)."""
    splits = []
    for n in cfg.sizes:
        for r in range(cfg.repeats):
            for k in range(cfg.folds):
                train, test = folds.train_test(r, k)
                sub = draw_training_subset(train, labels, n, seed=subset_seed(cfg.seed, n, r, k))
                splits.append((n, r, k, sub, test))
    return splits


def _row(weights: str, method: str, n: int, repeat: int, fold: int, y: np.ndarray, P: np.ndarray,
         n_train: int, test: np.ndarray) -> dict:
    """One fit's row of ``curve_folds.csv``, with its test images and predictions (``_index``, ``_P``: not written,
    pooled per repeat for the interval)."""
    return {"weights": weights, "method": method, "n": n, "n_train": n_train, "repeat": repeat, "fold": fold,
            "n_test": len(y), **episode_figures(y, P), "_index": test, "_P": P}


def probe_fits(cfg: CurveConfig, dataset: Dataset, weights: str, source: WeightSource, splits: list,
               device: torch.device, progress: bool = True, log=print) -> list[dict]:
    """A linear probe on frozen embeddings for every split."""
    labels, n_classes = np.asarray(dataset.labels), len(dataset.class_names)
    img_size = source.image_size(cfg.data.img_size)
    z = load_embeddings(dataset.files, cfg.arch, weights, img_size, cfg.data.resize, cfg.data.crop, pool=cfg.pool,
                        flip=cfg.flip, seed=cfg.seed, device=device, progress=progress, log=log,
                        offline=cfg.offline)
    z = normalize_embeddings(z, cfg.normalize)
    return [_row(weights, "probe", n, r, k, labels[test], linear_probe(z[sub], labels[sub], z[test], n_classes,
                                                                        C=cfg.C), len(sub), test)
            for n, r, k, sub, test in splits]


def finetune_fits(cfg: CurveConfig, dataset: Dataset, weights: str, source: WeightSource, splits: list,
                  device: torch.device, progress: bool = True, log=print) -> list[dict]:
    """The whole network fine-tuned for every split; the duration is said first."""
    labels, n_classes = np.asarray(dataset.labels), len(dataset.class_names)
    ft_size = cfg.finetune_img_size or source.image_size(cfg.data.img_size)
    images = open_images(dataset.files, ft_size, cfg.data.resize, cfg.data.crop, progress=progress, log=log)
    per_image = seconds_per_image(cfg.arch, source, images, labels, n_classes, cfg.finetune, device)
    seconds = sum(finetune_fit_seconds(per_image, cfg.finetune, len(sub), len(test)) for _, _, _, sub, test in splits)
    log(f"fine-tuning ({weights}): {len(splits)} fits at {ft_size} px, {cfg.finetune.epochs} epochs each; "
        f"estimated duration: about {fmt_duration(seconds)} on {device.type}")
    start = time.perf_counter()
    rows = []
    for n, r, k, sub, test in tqdm(splits, desc=f"fine-tuning ({weights})", disable=not progress, leave=False):
        P = finetune_predict(cfg.arch, source, images, labels, sub, test, n_classes, cfg.finetune,
                             seed=subset_seed(cfg.seed, n, r, k), device=device)
        rows.append(_row(weights, "finetune", n, r, k, labels[test], P, len(sub), test))
    log(f"fine-tuning ({weights}) took {fmt_duration(time.perf_counter() - start)}")
    return rows


def summarize_curve(fits: list[dict], labels: np.ndarray, units: Units, seed: int = 0,
                    n_boot: int = N_BOOT) -> pd.DataFrame:
    """``curve.csv``: per (weights, method, n), ``count`` (fits), each figure's mean and standard deviation over
    fits, its pooled out-of-fold figure (mean over repeats) with the 95% bootstrap interval over ``units``
    (``{metric}_pooled``, ``_ci_low``, ``_ci_high``: :func:`smallct.studies.summary.summarize_resampled`, each
    repeat's interval as smallct.cv's ``pooled_oof_ci95`` of one repeat, averaged), and what was resampled
    (``ci_unit``, ``n_units``, ``ci_method``)."""
    by = ["weights", "method", "n"]
    per_fit = pd.DataFrame([{k: v for k, v in f.items() if not k.startswith("_")} for f in fits])
    spread = summarize_episodes(per_fit, by)
    pooled = spread[by].merge(summarize_resampled(fits, by, labels, units, per="repeat", n_boot=n_boot, seed=seed),
                              on=by, how="left")  # in the summary's order
    summary = spread[by + ["count"]].copy()
    for m in SUMMARY_METRICS:
        summary[f"{m}_mean"], summary[f"{m}_std"] = spread[f"{m}_mean"], spread[f"{m}_std"]
        summary[f"{m}_pooled"] = pooled[m].to_numpy()
        summary[f"{m}_ci_low"], summary[f"{m}_ci_high"] = pooled[f"{m}_low"].to_numpy(), pooled[f"{m}_high"].to_numpy()
    summary["ci_unit"], summary["n_units"] = units.name, units.n
    summary["ci_method"] = (f"{units.describe(n_boot)} of each repeat's pooled out-of-fold predictions, the "
                            "repeats' intervals averaged")
    return summary


@with_threads()
def run_curve(cfg: CurveConfig, dataset: Dataset | None = None, progress: bool = True, log=print) -> CurveResult:
    """Train and evaluate every (weights, method, n, repeat, fold) of ``cfg`` (at ``cfg.threads`` torch threads);
    write the outputs to ``cfg.out``."""
    check_config(cfg)
    dataset = dataset if dataset is not None else load_data(cfg.data, cfg.seed, log)  # first: no data, no run
    check_fold_classes(dataset, cfg.folds)  # a stray label: stops before any download
    sources = {w: resolve_weights(cfg.arch, w, offline=cfg.offline)  # then: no weights, no run
               for w in cfg.weights}
    labels = np.asarray(dataset.labels)
    if labels.ndim != 1:
        raise ValueError("learning curves need one class per image (binary or multi-class), not multi-label")
    folds = make_folds(dataset, cfg.folds, cfg.repeats, cfg.seed, cfg.data.group_similar,
                       progress=progress, log=log)  # smallct.cv's folds
    note = check_sizes(cfg.sizes, labels, folds.assignment)
    if note:
        log(note)
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    tracker = Tracker.open(RunFolder(out).tensorboard_dir if cfg.tensorboard else None, cfg.mlflow,
                           f"curve {out.name}")  # MLflow asked for but not installed: stops here
    out.mkdir(parents=True, exist_ok=True)
    log(f"smallct.curve: {cfg.arch}, weights {','.join(cfg.weights)}, methods {','.join(cfg.methods)}, sizes "
        f"{','.join(map(str, cfg.sizes))}, {cfg.folds} folds x {cfg.repeats} repeats, {len(dataset)} images")
    splits = draw_splits(cfg, labels, folds)
    rows = []
    for w, source in sources.items():
        if "probe" in cfg.methods:
            rows += probe_fits(cfg, dataset, w, source, splits, device, progress, log)
        if "finetune" in cfg.methods:
            rows += finetune_fits(cfg, dataset, w, source, splits, device, progress, log)
    per_fit = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    units = folds.units
    summary = summarize_curve(rows, labels, units, seed=cfg.seed)
    short = {w: w if w in ("imagenet", "none") else Path(w).name for w in cfg.weights}  # a PATH by its file name
    summary.insert(2, "series", summary["method"] + " / " + summary["weights"].map(short))
    atomic_csv(out / "curve_folds.csv", per_fit)
    atomic_csv(out / "curve.csv", summary)
    atomic_json(out / "curve.json", curve_record(cfg, dataset, sources, summary, folds))
    save_figure(interval_plot(summary, "n", "series", "training images per fold (n, log scale)",
                              f"learning curve: {cfg.arch}, {cfg.folds}-fold CV x {cfg.repeats}", logx=True,
                              point="pooled", band=f"95% CI, {units.describe(N_BOOT)}"),
                out / "curve.png")
    track_curve(tracker, cfg, summary, out)
    log(format_summary(summary, ("series", "n"), point="pooled", intervals=(("ci", "95% CI"),),
                       notes=(f"pooled: the figure of each repeat's pooled out-of-fold predictions, mean over "
                              f"{cfg.repeats} repeat(s) (mean +- std over fits: curve.csv)",
                              f"95% CI: {summary['ci_method'].iloc[0]}; repeats of the same images do not "
                              "narrow it")))
    log(f"outputs: {out}")
    return CurveResult(out, summary, per_fit)


def track_curve(tracker: Tracker, cfg: CurveConfig, summary: pd.DataFrame, out: Path) -> None:
    """The curve in TensorBoard and MLflow: per series (``probe_imagenet``), each pooled figure and its 95% interval
    bounds against n (the step: ``accuracy/probe_imagenet``), then curve.png and the output files."""
    with tracker:
        # no HParams declaration: a curve has neither cv's settings nor its final figures; a logdir's cv runs declare
        # the columns (the same in each), and a logdir of curves alone gets TensorBoard's own from all their sessions
        tracker.start(flat(cfg), declare=False)
        for row in summary.to_dict(orient="records"):
            series = str(row["series"]).replace(" / ", "_")
            tracker.scalars({f"{m}{part}/{series}": row[f"{m}_{column}"] for m in SUMMARY_METRICS
                             for part, column in (("", "pooled"), ("_ci95_low", "ci_low"), ("_ci95_high", "ci_high"))},
                            step=int(row["n"]))
        tracker.finish({}, [out / "curve.png"], out)


def curve_record(cfg: CurveConfig, dataset: Dataset, sources: dict, summary: pd.DataFrame, folds: Folds) -> dict:
    """``curve.json``: the settings, the weight sources, the data, the folds (the test fold of every image and
    the near-duplicates kept together), the summary, and notes on the figures."""
    return {
        "config": to_dict(cfg),
        "weights": {w: s.to_dict() for w, s in sources.items()},
        "data": {"source": dataset.source, "n_images": len(dataset), "class_names": dataset.class_names,
                 "synthetic": cfg.data.data is None},
        "folds": {"ids": dataset.ids, "assignment": folds.assignment.tolist()},
        "similar_images": folds.similar_record(dataset.ids),
        # the same settings give the same figures on the same kind of device at the same torch thread count
        "device": resolve_device(cfg.device).type,
        "threads": torch.get_num_threads(),
        "summary": summary.to_dict(orient="records"),
        "intervals": {**folds.units.record(), "method": summary["ci_method"].iloc[0]},
        "notes": {
            "n": "training images drawn (stratified) from each fold's training part; all of it when n covers it",
            "mean": "mean over folds x repeats of each fit's figure on its test fold",
            "std": "standard deviation over folds x repeats (ddof=1)",
            "pooled": "the figure of each repeat's pooled out-of-fold predictions (every image once), mean over "
                      "repeats: what curve.png draws",
            "ci95": "ci_low/ci_high: 95% percentile bootstrap interval of the pooled figure over the groups the "
                    "folds keep whole (ci_unit, n_units, ci_method): each repeat's interval as smallct.cv gives it "
                    "for one cross-validation (the same resamples for every repeat), the bounds averaged over "
                    "repeats, so repeats do not narrow it: they reuse the same images for testing and training. It "
                    "covers which images were tested (a new set of the same kind) and one cross-validation's "
                    "model noise; a new set of training images is not drawn",
            "selection": "nothing is chosen on a test fold: C, pooling, epochs and learning rate are fixed (the "
                         "pooling and normalisation defaults come from smallct.fewshot, chosen on Head CT episodes "
                         "of seed 1)",
            "normalize": "a per-feature standardize over all images is undone by the probe's own scaler, fitted "
                         "on the training images only; l2 and none use no other image; center-l2 subtracts the "
                         "mean of all images (no labels)",
        },
    }
