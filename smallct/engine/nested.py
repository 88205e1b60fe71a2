"""Nested cross-validation: the honest figure when settings or a decision threshold are chosen from data.

``python -m smallct.nested --data DIR --candidates lite0_finetune,b.json [--inner-folds 3] [--select accuracy]``

A figure from settings chosen on the same folds (a study, then ``smallct.cv --params``; a recipe picked
among several) is optimistic. Here every outer fold repeats the whole choice on its training part alone:

1. each candidate (a settings file or recipe name, as ``smallct.cv --params`` takes) is cross-validated
   on the outer training part (``--inner-folds``, near-duplicates grouped as in the outer folds);
2. the candidate with the best inner pooled figure (``--select``) wins; ties go to the one listed first;
3. for a binary task the decision threshold is chosen too, on the winner's inner out-of-fold
   predictions (:func:`smallct.evaluation.metrics.choose_threshold`, by balanced accuracy when that is
   ``--select``, else accuracy), unless ``--threshold fixed``. Those predictions come from models
   trained on (inner - 1) / inner of the training part; the threshold is applied to the outer model;
4. the winner is trained on the whole outer training part and tested once on the outer test fold;
   with ``--no-refit`` its inner fold models are averaged instead (a cross-fitted ensemble).

Nothing is chosen on an outer test fold, so the outer figures estimate the choice among the
candidates. They are honest only if the candidates were fixed without these images: a study's
``best_params.json``, or a recipe picked on the same set, has already seen every outer test fold.
One candidate is allowed: then the inner folds only choose the threshold. A candidate whose inner
run fails (NaN loss, out of memory) loses that outer fold's choice, and the failure is recorded.

The run folder is a cv run folder for the outer folds (:mod:`smallct.engine.run_folder`), so
:mod:`smallct.analysis.compare` pairs it with a plain cv run of the same data and seed; ``results.json``
adds ``nested`` (the choices, and the figures at the chosen thresholds), ``nested.json`` keeps the
candidates' settings, and ``inner/<outer fold>/<candidate>/`` holds each inner run (a cv run folder). Every inner
run and outer fold resumes where it stopped.

Cost: ``folds x repeats x (candidates x inner folds + 1)`` fits (no ``+ 1`` with ``--no-refit``),
the inner ones on ``(inner - 1) / inner`` of a training part. The duration is printed first.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from smallct.progress import tqdm

from smallct.config.run import CVConfig, to_dict, with_defaults
from smallct.config.schema import flat
from smallct.config.studies import NestedConfig
from smallct.data.cache import open_images
from smallct.data.source import BatchSource
from smallct.data.folds import check_fold_classes
from smallct.data.similar import Grouping
from smallct.datasets.folder import Dataset, data_fingerprint, load_data
from smallct.engine.cv import CVResult, FoldJob, check_task, finish_run, folds_of, run_cv, train_fold, write_fold
from smallct.engine.estimate import estimate_seconds, fmt_duration
from smallct.engine.run_folder import SETTINGS_THAT_CHANGE_RESULTS, RunFolder, fold_name, run_record
from smallct.engine.run_models import load_fold_model, load_run
from smallct.engine.tracking import Tracker, finish_cv
from smallct.engine.train import predict_proba, resolve_device, with_threads
from smallct.evaluation.intervals import Units, pooled_figures
from smallct.evaluation.metrics import binary_metrics, choose_threshold, summarize_folds
from smallct.models.factory import create_model
from smallct.models.weights import resolve_weights

# figures a candidate can be chosen by, and whether higher is better
SELECT = {"accuracy": True, "balanced_accuracy": True, "roc_auc": True, "mean_auc": True,
          "log_loss": False, "weighted_log_loss": False}
# settings every candidate must share: they define the images and the folds
SHARED_DATA = ("data", "labels", "id_col", "label_col", "group_similar")
# errors of one fit that say nothing about the other candidates (as smallct.tune treats a failed trial)
FAILURES = (FloatingPointError, RuntimeError, MemoryError)
N_BOOT = 1000


def check_config(cfg: NestedConfig) -> None:
    """``ValueError`` naming what is wrong, before any work."""
    if not cfg.candidates:
        raise ValueError("no candidates: give --candidates with one or more settings files or recipe names")
    if cfg.select not in SELECT:
        raise ValueError(f"--select {cfg.select}: choose one of {', '.join(SELECT)}")
    if cfg.inner_folds < 2:
        raise ValueError(f"--inner-folds {cfg.inner_folds}: need at least 2")
    if cfg.threshold not in ("inner", "fixed"):
        raise ValueError(f"--threshold {cfg.threshold!r}: choose inner (chosen on the inner folds) or fixed (0.5)")
    first_name, first = next(iter(cfg.candidates.items()))
    for name, c in cfg.candidates.items():
        differ = [k for k in SHARED_DATA if getattr(c.data, k) != getattr(first.data, k)]
        differ += ["task"] if c.task != first.task else []
        if differ:
            raise ValueError(f"candidate {name}: {', '.join(differ)} differ from candidate {first_name}; every "
                             "candidate must see the same images and folds")
        if c.context or c.smooth > 1:
            raise ValueError(f"candidate {name}: --context and --smooth are smallct.cv's (and tune's) for now, not "
                             "nested candidates'; compare them with smallct.cv runs on the same folds")


def _outer_config(cfg: NestedConfig) -> CVConfig:
    """The first candidate with the outer folds: what run.json records and what aggregates the outer folds."""
    first = next(iter(cfg.candidates.values()))
    names = ", ".join(cfg.candidates)
    return replace(first, folds=cfg.folds, repeats=cfg.repeats, seed=cfg.seed, out=Path(cfg.out),
                   params_source=f"nested CV: chosen per outer fold among {names} by inner {cfg.inner_folds}-fold "
                                 f"{cfg.select} on the outer training part")


def _inner_config(cfg: NestedConfig, name: str, r: int, k: int) -> CVConfig:
    # inner runs draw no curves: nobody looks at them, and they cost about a tenth of the time
    return replace(cfg.candidates[name], folds=cfg.inner_folds, repeats=1, seed=cfg.seed, test_curves=False,
                   out=RunFolder(cfg.out).inner_run(r, k, name).path)


def _record(cfg: NestedConfig) -> dict:
    return {"candidates": {n: to_dict(c) for n, c in cfg.candidates.items()}, "inner_folds": cfg.inner_folds,
            "select": cfg.select, "threshold": "inner" if cfg.threshold == "inner" else "fixed 0.5",
            "outer_model": "refit on the outer training part" if cfg.refit else "mean of the inner fold models",
            "inner_groups": "the outer folds' groups"}  # smallct <= 0.3 regrouped each outer training part


def _nested_differences(folder: RunFolder, record: dict) -> list[str]:
    """What differs between ``record`` (``nested.json``'s content) and the nested run in ``folder``: its candidates,
    their settings and the choice rules, for :meth:`RunFolder.check_resume` (the one resume rule) to judge.
    ``ValueError`` when the folder holds a plain cv run."""
    old = folder.read_nested()
    if old is None:
        if folder.has_record():
            raise ValueError(f"{folder.path}: holds a smallct.cv run, not a nested one; use another --out")
        return []

    def settings(r: dict) -> dict:  # a setting absent from an older nested.json: its default now
        return {n: {k: with_defaults(CVConfig, c).get(k) for k in SETTINGS_THAT_CHANGE_RESULTS}
                for n, c in r["candidates"].items()}
    changed = [f"nested {k}" for k in ("inner_folds", "select", "threshold", "outer_model") if old.get(k) != record[k]]
    if old.get("inner_groups") != record["inner_groups"]:  # its inner runs' folds would differ half-way through
        changed.append("inner folds (the run there regrouped each outer training part: smallct <= 0.3)")
    if list(old["candidates"]) != list(record["candidates"]):
        changed.insert(0, f"candidates ({', '.join(old['candidates'])} there)")
    elif settings(old) != settings(record):
        changed.insert(0, "the candidates' settings")
    return changed


def estimate_nested_seconds(cfg: NestedConfig, dataset: Dataset, todo: list[tuple[int, int]], device,
                            images_for) -> float:
    """Expected wall time (s) of the outer folds ``todo``: the inner fits not yet done, then one outer fit each."""
    n_train = len(dataset) * (cfg.folds - 1) / cfg.folds
    inner_train = n_train * (cfg.inner_folds - 1) / cfg.inner_folds
    total, slowest = 0.0, 0.0
    for name, c in cfg.candidates.items():
        inner_fits = sum(cfg.inner_folds - RunFolder(_inner_config(cfg, name, r, k).out).count_done()
                         for r, k in todo)
        source = resolve_weights(c.arch, c.weights, offline=c.offline)
        model = create_model(c.arch, len(dataset.class_names), source)
        images = images_for(name)
        inner, _ = estimate_seconds(model, images, dataset.labels, _inner_config(cfg, name, 0, 0), source,
                                    dataset.task, device, inner_train, n_train - inner_train, inner_fits)
        outer, _ = estimate_seconds(model, images, dataset.labels, c, source, dataset.task, device,
                                    n_train, len(dataset) - n_train, len(todo))
        total += inner
        slowest = max(slowest, outer if cfg.refit else 0.0)
    return total + slowest


@with_threads(lambda cfg: next(iter(cfg.candidates.values())).threads if cfg.candidates else None)
def run_nested(cfg: NestedConfig, dataset: Dataset | None = None, progress: bool = True,
               log=print) -> CVResult:
    """Run (or resume) a nested cross-validation and write the run folder ``cfg.out``.

    Returns the outer folds' :class:`~smallct.engine.cv.CVResult`; its ``results["nested"]`` holds the
    choices per outer fold and the figures at the chosen thresholds.
    """
    check_config(cfg)
    outer_cfg = _outer_config(cfg)
    dataset = dataset if dataset is not None else load_data(outer_cfg.data, outer_cfg.seed, log)  # no data, no run
    check_fold_classes(dataset, outer_cfg.folds)  # a stray label: stops before any download or decoding
    sources = {n: resolve_weights(c.arch, c.weights, offline=c.offline)  # no weights, no run
               for n, c in cfg.candidates.items()}
    check_task(outer_cfg, dataset)
    _check_select(cfg, dataset)
    device = resolve_device(outer_cfg.device)
    sizes = {n: sources[n].image_size(c.data.img_size) for n, c in cfg.candidates.items()}
    loaded: dict[tuple, BatchSource] = {}

    def images_for(name: str) -> BatchSource:  # decoded once per (size, resize, crop), shared by candidates
        c = cfg.candidates[name]
        key = (sizes[name], c.data.resize, c.data.crop)
        if key not in loaded:
            loaded[key] = open_images(dataset.files, *key, store=c.cache, workers=c.workers, progress=progress,
                                      log=log)
        return loaded[key]

    for name in cfg.candidates:  # decoded (and so checked) before anything is written under --out
        images_for(name)
    folds = folds_of(outer_cfg, dataset, progress, log)
    folder = RunFolder(cfg.out)
    first = next(iter(cfg.candidates))
    record = run_record(outer_cfg, dataset, sources[first], sizes[first], folds, device=device)
    record["nested"] = _record(cfg)
    resuming = folder.check_resume(record, _nested_differences(folder, record["nested"]))
    tracker = Tracker.for_run(outer_cfg, folder)  # the outer run; the inner runs are nested under it (MLflow)
    folder.start(record, resuming=resuming, nested=record["nested"])
    todo = [(r, k) for r in range(cfg.repeats) for k in range(cfg.folds) if not folder.is_done(r, k)]
    _log_start(cfg, dataset, todo, device, images_for, log)

    inner_log = _append_to(folder.inner_log)
    start = time.perf_counter()
    with tracker:
        tracker.start({**flat(outer_cfg), **{k: v for k, v in flat(cfg).items() if k != "candidates"},
                       "candidates": ",".join(cfg.candidates)})
        for r, k in tqdm(todo, desc="outer folds", unit="fold", disable=not progress):
            train, test = folds.train_test(r, k)
            choice = choose_candidate(cfg, dataset.subset(train), r, k, progress, inner_log,
                                      images=lambda name: images_for(name).take(train), parent=tracker,
                                      grouping=folds.grouping.subset(train))
            name = choice["candidate"]
            log(_choice_line(cfg, folder, r, k, choice))
            if cfg.refit:
                c = replace(cfg.candidates[name], out=folder.path, folds=cfg.folds, repeats=cfg.repeats,
                            seed=cfg.seed)
                job = FoldJob(c, dataset, sources[name], sizes[name], images_for(name), device, folder, progress)
                train_fold(job, r, k, train, test, tracker.on_epoch(), extra={"nested": choice})
                tracker.end_fold(fold_name(r, k))
            else:  # the winner's inner fold models, averaged: a cross-fitted ensemble, no further fit
                fold_start = time.perf_counter()
                probs = inner_ensemble_proba(_inner_config(cfg, name, r, k).out, images_for(name).take(test),
                                             device)
                write_fold(folder, dataset, r, k, test, probs, [], time.perf_counter() - fold_start,
                           extra={"nested": choice})
        result = finish_run(folder, dataset, outer_cfg, log=log, seconds=time.perf_counter() - start)
        result = add_nested_results(result, dataset, cfg, log)
        finish_cv(tracker, result.results, folder)
    return result


def _check_select(cfg: NestedConfig, dataset: Dataset) -> None:
    allowed = ("weighted_log_loss", "mean_auc", "accuracy") if dataset.task == "multilabel" else \
        ("accuracy", "balanced_accuracy", "roc_auc", "log_loss")
    if cfg.select not in allowed:
        raise ValueError(f"--select {cfg.select}: not a figure of a {dataset.task} task; choose {', '.join(allowed)}")


def _log_start(cfg: NestedConfig, dataset: Dataset, todo: list, device, images_for, log) -> None:
    done = cfg.folds * cfg.repeats - len(todo)
    log(f"smallct.nested: {len(cfg.candidates)} candidate(s) ({', '.join(cfg.candidates)}), {len(dataset)} images, "
        f"{cfg.folds} outer folds x {cfg.repeats} repeats, {cfg.inner_folds} inner folds, chosen by {cfg.select}"
        + (", threshold chosen on inner folds" if cfg.threshold == "inner" and dataset.task == "binary" else "")
        + (f"; resuming: {done} outer folds done" if done else ""))
    if todo:
        seconds = estimate_nested_seconds(cfg, dataset, todo, device, images_for)
        log(f"estimated duration: about {fmt_duration(seconds)} "
            f"({len(todo)} outer folds x ({len(cfg.candidates)} candidates x {cfg.inner_folds} inner fits"
            f"{' + 1' if cfg.refit else ''}), less the inner fits already done, on {device.type})")


def _choice_line(cfg: NestedConfig, folder: RunFolder, r: int, k: int, choice: dict) -> str:
    return (f"outer fold r{r} f{k}: {choice['candidate']} chosen (inner {cfg.select}: "
            + ", ".join(f"{n} {v:.3f}" for n, v in choice["inner_scores"].items())
            + (f"; threshold {choice['threshold']:.3f}" if "threshold" in choice else "")
            + (f"; failed: {', '.join(choice['failed'])} (see {folder.inner_log})" if choice["failed"] else "")
            + ")")


def inner_ensemble_proba(inner_run: Path, images: BatchSource | torch.Tensor, device) -> np.ndarray:
    """Mean class probabilities (N, C) of the fold models of one inner run, on uint8 images (N, 3, H, W): a batch
    source or a tensor."""
    run = load_run(inner_run)
    probs = []
    for ckpt in run.checkpoints:
        model, info = load_fold_model(ckpt.path, device)
        probs.append(predict_proba(model, images, info["mean"], info["std"], run.task, run.tta,
                                   device=device, amp=run.amp))
    return np.mean(probs, axis=0)


def _append_to(path: Path):
    """A log function writing to ``path``: the inner runs' messages, so that the console tells the outer story."""
    def log(message: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(f"{message}\n")
    return log


def choose_candidate(cfg: NestedConfig, train_part: Dataset, r: int, k: int, progress: bool = True,
                     log=print, images=None, parent: Tracker | None = None, grouping: Grouping | None = None) -> dict:
    """Cross-validate every candidate on one outer training part; the winner and, for binary tasks, its threshold.

    ``images(name)``, when given, returns the training part's images decoded for that candidate (else
    each inner run decodes them). The inner runs are tracked as their settings say, nested under ``parent``
    (MLflow). ``grouping``: the outer folds' groups of the training part, which the inner folds keep whole
    (None: looked for again on the training part, as a cv run of it would).

    Returns ``{"candidate", "inner_scores": {name: figure}, "failed": {name: reason}}``, and for a binary
    task ``threshold`` and ``inner_accuracy_at_threshold`` (the winner's inner pooled accuracy there).
    A candidate whose inner run fails is left out of the choice; ``ValueError`` when every one fails.
    """
    higher = SELECT[cfg.select]
    scores, oofs, failed = {}, {}, {}
    for name in cfg.candidates:
        try:
            inner = run_cv(_inner_config(cfg, name, r, k), dataset=train_part, progress=progress, log=log,
                           estimate=False, images=None if images is None else images(name), parent=parent,
                           grouping=grouping)
        except FAILURES as err:  # a diverging candidate loses this fold's choice, the others go on
            failed[name] = f"{type(err).__name__}: {err}"
            log(f"candidate {name}, outer fold r{r} f{k}: inner run failed ({failed[name]})")
            continue
        scores[name] = float(inner.results["pooled_oof"][cfg.select])
        oofs[name] = inner.oof
    if not scores:
        raise ValueError(f"outer fold r{r} f{k}: every candidate's inner run failed: "
                         + "; ".join(f"{n}: {why}" for n, why in failed.items()))
    best = max(scores, key=lambda n: scores[n] if higher else -scores[n])  # max keeps the first of equals
    choice = {"candidate": best, "inner_scores": scores, "failed": failed}
    if train_part.task == "binary" and "prob" in oofs[best]:
        oof = oofs[best]
        metric = "balanced_accuracy" if cfg.select == "balanced_accuracy" else "accuracy"
        choice["threshold"] = choose_threshold(oof["label"], oof["prob"], metric) if cfg.threshold == "inner" else 0.5
        choice["inner_accuracy_at_threshold"] = float(((oof["prob"] >= choice["threshold"]) == oof["label"]).mean())
    return choice


def add_nested_results(result: CVResult, dataset: Dataset, cfg: NestedConfig, log=print) -> CVResult:
    """Add the per-fold choices and the figures at the chosen thresholds to ``results.json`` and ``oof.csv``."""
    folder = RunFolder(result.out)
    folds = folder.read_folds()
    results = result.results
    choices = [{"repeat": f["repeat"], "fold": f["fold"], **f["nested"]} for f in folds]
    counts = {n: sum(c["candidate"] == n for c in choices) for n in cfg.candidates}
    results["selection"] = ("nested CV: per outer fold, the candidate and (binary) the threshold were chosen by "
                            f"{cfg.inner_folds}-fold CV on the outer training part only; nothing was chosen on an "
                            "outer test fold. The figures are honest for this choice; settings inside a candidate "
                            "that were chosen on these images (a study's best_params.json, a recipe picked on this "
                            "set) are not re-chosen here")
    results["nested"] = {**_record(cfg), "choices": choices, "times_chosen": counts}
    lines = ["chosen: " + ", ".join(f"{n} {c}x" for n, c in counts.items())]
    seen = [n for n, c in cfg.candidates.items() if c.params_chosen_on == data_fingerprint(dataset)]
    if seen:  # their settings files record these very images: every outer test fold took part in that choice
        said = f"{', '.join(seen)}: settings chosen or compared on these same {len(dataset)} images (their _chosen_on)"
        results["selection"] += f"; {said}, so the figures are optimistic for them"
        lines.append(f"note: {said}; the figures are optimistic for them")
    if dataset.task == "binary" and all("threshold" in c for c in choices):
        figures = _figures_at_thresholds(result, folds, dataset, cfg)
        results["nested"]["at_chosen_threshold"] = figures
        lines.append(_threshold_line(figures))
    folder.write_results(results)
    for line in lines:
        log(line)
    return CVResult(result.out, results, result.oof, result.history)


def _figures_at_thresholds(result: CVResult, folds: list[dict], dataset: Dataset, cfg: NestedConfig) -> dict:
    """Per-fold and pooled figures with each outer fold's inner-chosen threshold; ``oof.csv`` gains the
    threshold and the prediction at it."""
    thresholds = {(f["repeat"], f["fold"]): f["nested"]["threshold"] for f in folds}
    per_fold = []
    for f in folds:
        y = dataset.labels[f["test_index"]]
        p = np.asarray(f["probs"])[:, 1]
        t = thresholds[f["repeat"], f["fold"]]
        per_fold.append({"repeat": f["repeat"], "fold": f["fold"], "threshold": t, **binary_metrics(y, p, t)})
    figures = {"per_fold": per_fold,
               "mean_std_over_folds": summarize_folds([{k: v for k, v in f.items() if k not in ("repeat", "fold")}
                                                       for f in per_fold])}
    oof = result.oof
    oof["threshold"] = [thresholds[r, k] for r, k in zip(oof["repeat"], oof["fold"])]
    oof["pred_at_threshold"] = (oof["prob"] >= oof["threshold"]).astype(int)
    RunFolder(result.out).write_tables(oof, result.history)
    if result.results.get("complete"):
        figures.update(_pooled_at_thresholds(oof, dataset, cfg, RunFolder(result.out).resampling_units()))
    return figures


def _threshold_line(figures: dict) -> str:
    ms = figures["mean_std_over_folds"]
    pooled = ""
    if "pooled_oof" in figures:
        lo, hi = figures["pooled_oof_ci95"]["accuracy"]
        unit = figures["ci_resampled"]
        pooled = (f", pooled {figures['pooled_oof']['accuracy']:.3f} (95% CI {lo:.3f}-{hi:.3f}, resampling "
                  f"{unit['n_units']} {unit['unit']})")
    return (f"at the inner-chosen thresholds: accuracy {ms['accuracy']['mean']:.3f} +- {ms['accuracy']['std']:.3f} "
            f"over folds{pooled}; sensitivity {ms['sensitivity']['mean']:.3f}, specificity "
            f"{ms['specificity']['mean']:.3f}")


def _pooled_at_thresholds(oof, dataset: Dataset, cfg: NestedConfig, units: Units) -> dict:
    """Pooled out-of-fold figures, each image at its own fold's threshold (mean over repeats), with a bootstrap CI
    over ``units`` (the groups the outer folds keep whole)."""
    index = {i: n for n, i in enumerate(dataset.ids)}
    n = len(dataset)
    P = np.full((cfg.repeats, n), np.nan)
    T = np.full((cfg.repeats, n), np.nan)
    for row in oof.itertuples():
        P[row.repeat, index[row.id]] = row.prob
        T[row.repeat, index[row.id]] = row.threshold
    names = ("accuracy", "balanced_accuracy", "sensitivity", "specificity")
    y = dataset.labels

    def figure(idx: np.ndarray) -> dict:
        per = [binary_metrics(y[idx], P[r, idx], T[r, idx]) for r in range(cfg.repeats)]
        return {m: float(np.mean([p[m] for p in per])) for m in names}
    pooled, ci = pooled_figures(figure, units, ("accuracy", "balanced_accuracy"), n_boot=N_BOOT, seed=cfg.seed)
    return {"pooled_oof": pooled, "pooled_oof_ci95": ci, "ci_method": units.describe(N_BOOT),
            "ci_resampled": units.record()}
