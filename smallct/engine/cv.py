"""Cross-validated transfer learning: :func:`run_cv` (``python -m smallct.cv``).

One run: open the images (decoded once, :mod:`smallct.data.cache`; read by index from a
:class:`smallct.data.source.BatchSource`, in memory or memory-mapped), make the folds
(:func:`smallct.data.folds.make_folds`), fit one model per fold (:func:`smallct.engine.train.fit`) and
predict its test fold, write each fold as it finishes, then aggregate the folds into the run's tables,
figures and plots. The run folder (:class:`smallct.engine.run_folder.RunFolder`) is the contract read
by prediction, tuning, comparison and the notebooks; an interrupted run resumes at the first unfinished
fold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from timm.layers import convert_sync_batchnorm

from smallct.config.run import CVConfig
from smallct.config.schema import flat
from smallct.data.cache import open_images
from smallct.data.context import Context, check_series
from smallct.data.folds import Folds, check_fold_classes, make_folds
from smallct.data.similar import Grouping
from smallct.data.source import BatchSource, as_source
from smallct.data.seeds import fit_seed
from smallct.datasets.classes import class_note
from smallct.datasets.explore import size_note
from smallct.datasets.folder import Dataset, data_fingerprint, load_data
from smallct.datasets.rsna import label_weights
from smallct.engine import results as tables
from smallct.engine.estimate import estimate_seconds, fmt_duration, slow_on_cpu
from smallct.engine.ranks import Ranks
from smallct.engine.run_folder import RunFolder, fold_name, run_record
from smallct.engine.tracking import Tracker, finish_cv
from smallct.engine.train import fit, predict_proba, resolve_device, with_threads
from smallct.evaluation import plots
from smallct.models.factory import create_model
from smallct.models.weights import WeightSource, resolve_weights


@dataclass
class CVResult:
    """What :func:`run_cv` returns: the run folder and its main tables."""

    out: Path
    results: dict
    oof: pd.DataFrame
    history: pd.DataFrame


@dataclass
class FoldJob:
    """What every fold of a run shares: its settings, images and model contract, its device and folder.

    ``images``: ``dataset``'s images (N, 3, S, S) uint8 decoded at ``img_size`` px as ``cfg.data`` says, as a batch
    source; the model is ``cfg.arch`` initialised from ``source``, whose mean and std normalise its input.
    """

    cfg: CVConfig
    dataset: Dataset
    source: WeightSource
    img_size: int
    images: BatchSource
    device: torch.device
    folder: RunFolder
    progress: bool = True
    context: Context | None = None
    ranks: Ranks = Ranks()  # the processes that train each fold together (DDP); rank 0 writes its files

    @property
    def channels(self) -> int:
        """Input channels of the model: 3, or a 2.5D input's (:mod:`smallct.data.context`)."""
        return int(self.images.shape[1])

    def checkpoint_facts(self, repeat: int, fold: int) -> dict:
        """What a fold checkpoint records beside its weights: enough to rebuild and apply it."""
        cfg, dataset = self.cfg, self.dataset
        return {"arch": cfg.arch, "num_outputs": len(dataset.class_names), "task": dataset.task,
                "class_names": dataset.class_names, "repeat": repeat, "fold": fold, "img_size": self.img_size,
                "resize": cfg.data.resize, "crop": cfg.data.crop, "mean": list(self.source.mean),
                "std": list(self.source.std), "channels": self.channels,
                "context": None if self.context is None else self.context.record()}


def check_task(cfg: CVConfig, dataset: Dataset) -> None:
    if cfg.task is not None and cfg.task != dataset.task:
        raise ValueError(f"--task {cfg.task}: the data ({dataset.source}) is a {dataset.task} task")


def run_context(cfg: CVConfig, dataset: Dataset) -> Context | None:
    """The 2.5D input of a run of ``cfg`` on ``dataset`` (``--context``), or None for single slices."""
    if cfg.context == 0:
        return None
    check_series(cfg.context, dataset.neighbours, len(dataset), dataset.source)  # first: what --context needs
    windows = dataset.meta.get("windows") or ("(not prepared from DICOM)",) * 3
    return Context(cfg.context, cfg.context_channels, cfg.context_window, tuple(windows))


def check_series_in_folds(dataset: Dataset, folds: Folds) -> None:
    """Refuse, in one line, folds that split a series (its slices would be each other's 2.5D neighbours across a
    training and a test fold)."""
    links = dataset.neighbours
    apart = folds.separated(links.prev)
    if apart is not None:
        r, i = apart
        raise ValueError(f"--context {dataset.source}: slices {dataset.ids[links.prev[i]]} and {dataset.ids[i]} of one "
                         f"series fall in two folds (repeat {r}); give every slice its patient in the manifest so "
                         "that folds keep series whole")


def folds_of(cfg: CVConfig, dataset: Dataset, progress: bool = True, log=print,
             grouping: Grouping | None = None) -> Folds:
    """The folds of a run of ``cfg`` on ``dataset`` (:func:`smallct.data.folds.make_folds`); ``grouping``: the
    groups to keep whole, already found (nested CV's inner runs inherit the outer ones)."""
    return make_folds(dataset, cfg.folds, cfg.repeats, cfg.seed, cfg.data.group_similar, cfg.workers,
                      progress, log, grouping)


@with_threads()
def run_cv(cfg: CVConfig, dataset: Dataset | None = None, progress: bool = True, log=print,
           on_epoch=None, estimate: bool = True, images: BatchSource | torch.Tensor | None = None,
           parent: Tracker | None = None, grouping: Grouping | None = None) -> CVResult:
    """Run (or resume) a cross-validation and write the run folder ``cfg.out``.

    ``on_epoch(repeat, fold, record)`` is called after every epoch (a tuner reports to its pruner
    there). ``estimate=False`` skips the timed steps of the duration estimate (a tuner's trials).
    ``images`` (N, 3, S, S) uint8 are ``dataset``'s images already decoded as ``cfg.data`` says, a batch source or a
    tensor (smallct.nested passes rows of its own, a tuner its study's source); by default they are opened here
    (decoded and cached once; ``cfg.cache`` says memory or disk). ``grouping``:
    the groups the folds keep whole, when already found (smallct.nested: the outer folds' groups of its training
    part, never a fresh near-duplicate search on fewer images).
    The run is tracked as ``cfg.tensorboard`` and ``cfg.mlflow`` say (:mod:`smallct.engine.tracking`); its MLflow
    run is nested under ``parent``'s (a study's, a nested CV's).
    Every input (data, weights, device, images, folds) is checked before anything is written under
    ``cfg.out``; torch runs at ``cfg.threads`` threads. Returns a :class:`CVResult`.

    Under torchrun (:class:`smallct.engine.ranks.Ranks`) the processes train each fold together
    (DistributedDataParallel), or with ``cfg.fold_parallel`` different folds at the same time; rank 0 logs, shows
    progress and writes the run's files (in fold-parallel runs each process writes its own folds'), and returns the
    result (the other ranks return None).
    """
    ranks = Ranks.from_env()
    device = ranks.device(resolve_device(cfg.device))
    with ranks.joined(device, gradients=not cfg.fold_parallel), \
            ranks.during("the start (data, image cache, folds) or the end", cfg.out):
        if not ranks.main:  # rank 0 speaks for the job
            log, progress = _quiet, False
        return _run_cv(cfg, ranks, device, dataset, progress, log, on_epoch, estimate, images, parent, grouping)


def _quiet(*args, **kwargs) -> None:
    """The log of a rank other than 0."""


def _run_cv(cfg: CVConfig, ranks: Ranks, device: torch.device, dataset, progress, log, on_epoch, estimate, images,
            parent, grouping) -> CVResult | None:
    ranks.check_same("settings", same_settings(cfg))  # another --data on one node: before anything is read
    if dataset is None:  # first: no data, no run (each machine's local rank 0 first: it may write the phantom set)
        with ranks.local_first():
            dataset = load_data(cfg.data, cfg.seed, log)
    check_fold_classes(dataset, cfg.folds)  # a stray label: stops before any download or decoding
    source = resolve_weights(cfg.arch, cfg.weights, offline=cfg.offline)  # then: no weights, no run
    check_task(cfg, dataset)
    context = run_context(cfg, dataset)  # before any decoding
    if cfg.smooth > 1 and dataset.neighbours is None:
        raise ValueError(f"--smooth {cfg.smooth}: {dataset.source} has no series order (prev/next) to smooth along; "
                         "--smooth needs slices prepared from DICOM by smallct.prepare rsna")
    check_shares(cfg, ranks, len(dataset))
    if cfg.train.sync_bn and device.type != "cuda":
        raise ValueError("--sync-bn: SyncBatchNorm needs CUDA (NCCL); on a CPU each rank's BatchNorm sees its own "
                         "batch, and rank 0's statistics are kept")
    img_size = source.image_size(cfg.data.img_size)
    if images is None:
        with ranks.local_first():  # each machine decodes once; its other ranks wait, then read the cache
            images = open_images(dataset.files, img_size, cfg.data.resize, cfg.data.crop, store=cfg.cache,
                                 workers=cfg.workers, progress=progress, log=log)
    images = as_source(images)
    if tuple(images.shape) != (len(dataset), 3, img_size, img_size):
        raise ValueError(f"images: shape {tuple(images.shape)}, expected {(len(dataset), 3, img_size, img_size)}")
    if context is not None:  # each slice with its neighbours, gathered from the per-slice images
        images = context.source(images, dataset.neighbours, dataset.source)
        source = replace(source, mean=context.stats(source.mean), std=context.stats(source.std))
    ranks.check_same("data", {"data": data_fingerprint(dataset), "images": list(images.shape), "device": device.type,
                              "threads": torch.get_num_threads()})
    folds = ranks.decide(lambda: folds_of(cfg, dataset, progress, log, grouping))  # one near-duplicate search
    if context is not None:  # a training input must never carry a test slice as a neighbour
        check_series_in_folds(dataset, folds)
    folder = RunFolder(cfg.out)
    fold_ranks = Ranks() if cfg.fold_parallel else ranks  # fold-parallel: each process trains its folds alone
    record = run_record(cfg, dataset, source, img_size, folds, device=device, context=context, ranks=fold_ranks,
                        processes=ranks.world)
    if folder.is_nested():  # its results.json and oof.csv carry more than a cv run's
        raise ValueError(f"{folder.path}: holds a smallct.nested run; use another --out")
    tracker = Tracker.for_run(cfg, folder, parent) if ranks.main else Tracker()  # MLflow missing: stops here

    def start() -> list[tuple[int, int]]:  # rank 0's decision, for every rank: the folds left to train
        folder.start(record, resuming=folder.check_resume(record))
        return [(r, k) for r in range(cfg.repeats) for k in range(cfg.folds) if not folder.is_done(r, k)]

    todo = ranks.decide(start)
    job = FoldJob(cfg, dataset, source, img_size, images, device, folder, progress, context, fold_ranks)
    done = cfg.repeats * cfg.folds - len(todo)
    log(f"smallct.cv: {cfg.arch} ({source.description}), {len(dataset)} images at {img_size} px, "
        f"{cfg.folds} folds x {cfg.repeats} repeats, {cfg.train.epochs} epochs on {device.type}"
        + (f"; resuming: {done} folds already done" if done else "") + ranks_note(cfg, ranks))
    log(class_note(dataset.task, dataset.class_names))
    chosen = tables.settings_selection(cfg, dataset)[1]
    if chosen:  # settings chosen on these images (or not saying where): the figures will be optimistic
        log(chosen)
    note = size_note(dataset.files, cfg.data.data) if cfg.data.data is not None else None
    if note:  # one pointer line; the audit itself is smallct.audit
        log(note)
    if todo and estimate and ranks.main:  # fold-parallel: the folds of the busiest rank, one after another
        log_estimate(job, -(-len(todo) // ranks.world) if cfg.fold_parallel else len(todo), log)

    started = time.perf_counter()
    with tracker:
        tracker.start(flat(cfg))
        for r, k in todo[ranks.rank::ranks.world] if cfg.fold_parallel else todo:
            train, test = folds.train_test(r, k)
            with ranks.during(f"fold {fold_name(r, k)}", folder.path):
                train_fold(job, r, k, train, test, tracker.on_epoch(on_epoch) if ranks.main else None)
            tracker.end_fold(fold_name(r, k))
        with ranks.during("the wait for the other ranks' folds", folder.path):
            ranks.wait_for_all()  # every fold file written before rank 0 reads them
        if not ranks.main:
            return None
        missing = [fold_name(r, k) for r, k in todo if not folder.is_done(r, k)]
        if missing:  # fold-parallel on machines that do not share --out: rank 0 sees only its own folds
            raise ValueError(f"{folder.path}: folds {', '.join(missing)} were trained by other ranks but are not "
                             "here; --fold-parallel on several machines needs --out on a file system every machine "
                             "sees (copy their folds/ and checkpoints/ here and run the same command to finish)")
        result = finish_run(folder, dataset, cfg, log=log, seconds=time.perf_counter() - started)
        finish_cv(tracker, result.results, folder)
    return result


# Settings a rank may hold on its own: where it logs, how it decodes and caches (no figure changes with them)
RANK_OWN_SETTINGS = ("mlflow", "tensorboard", "workers", "cache", "offline")


def same_settings(cfg: CVConfig) -> dict:
    """The settings every rank must share (all but :data:`RANK_OWN_SETTINGS`; an MLflow URI may hold a password)."""
    return {k: v for k, v in flat(cfg).items() if k not in RANK_OWN_SETTINGS}


def check_shares(cfg: CVConfig, ranks: Ranks, n: int) -> None:
    """Refuse, in one line, DDP folds too small for every rank to hold at least one test image."""
    smallest = n // cfg.folds
    if ranks.world > 1 and not cfg.fold_parallel and smallest < ranks.world:
        raise ValueError(f"{ranks.world} processes train each fold together, but a test fold of {n} images in "
                         f"{cfg.folds} folds holds {smallest}: use fewer processes, or --fold-parallel")


def ranks_note(cfg: CVConfig, ranks: Ranks) -> str:
    """What the first line says of the processes under torchrun (nothing for one process)."""
    if ranks.world == 1:
        return ""
    if cfg.fold_parallel:
        return f"; {ranks.world} processes, each training its own folds"
    return (f"; {ranks.world} processes train each fold together (DDP): {cfg.train.batch_size} images a step on "
            f"each, {cfg.train.batch_size * ranks.world} in all")


def log_estimate(job: FoldJob, n_fits: int, log=print) -> None:
    """Print the expected duration of ``n_fits`` fits of ``job``, one after another (and a hint when it is slow on a
    CPU); under DDP each rank's share of the images (the gradient exchange is not counted)."""
    cfg, dataset = job.cfg, job.dataset
    model = create_model(cfg.arch, len(dataset.class_names), job.source, job.channels)
    n_test = len(dataset) / cfg.folds / job.ranks.world  # DDP: each rank trains and predicts its share
    seconds, rate = estimate_seconds(model, job.images, dataset.labels, cfg, job.source, dataset.task, job.device,
                                     len(dataset) / job.ranks.world - n_test, n_test, n_fits)
    log(f"estimated duration: about {fmt_duration(seconds)} ({rate:.1f} training images/s on {job.device.type})")
    hint = slow_on_cpu(cfg.arch, job.device, seconds, rate)
    if hint:
        log(hint)


def train_fold(job: FoldJob, r: int, k: int, train: np.ndarray, test: np.ndarray, on_epoch=None,
               extra: dict | None = None) -> None:
    """Fit one fold model on ``train``, predict ``test``; write its checkpoint and then its fold file.

    ``extra`` is recorded in the fold file too (smallct.nested: the chosen settings and threshold). A NaN
    loss raises ``FloatingPointError`` naming the fold; the folds finished before it are kept.
    """
    cfg, dataset = job.cfg, job.dataset
    fold_seed = fit_seed(cfg.seed, r, k)
    torch.manual_seed(fold_seed)
    model = create_model(cfg.arch, len(dataset.class_names), job.source, job.channels)
    if cfg.train.sync_bn and job.ranks.distributed:  # BatchNorm statistics over every rank's batch (CUDA)
        model = convert_sync_batchnorm(model)  # timm's: keeps BatchNormAct2d's activation (torch's drops it)
    labels = torch.as_tensor(dataset.labels)
    start = time.perf_counter()
    callback = None if on_epoch is None else (lambda rec: on_epoch(r, k, rec))
    try:
        history = fit(model, job.images.take(train), labels[train], cfg.train, job.source.mean, job.source.std,
                      dataset.task, seed=fold_seed, device=job.device,
                      val=(job.images.take(test), labels[test]) if cfg.test_curves else None, on_epoch=callback,
                      desc=f"repeat {r + 1}/{cfg.repeats} fold {k + 1}/{cfg.folds}", progress=job.progress,
                      label_weights=label_weights(dataset.class_names) if dataset.task == "multilabel" else None,
                      ranks=job.ranks)
        part = test[job.ranks.part(len(test))] if job.ranks.distributed else test  # each rank a part, gathered
        probs = job.ranks.gather(torch.from_numpy(predict_proba(
            model, job.images.take(part), job.source.mean, job.source.std, dataset.task, cfg.train.tta,
            device=job.device, amp=cfg.train.amp))).numpy()
        if not np.isfinite(probs).all():
            raise FloatingPointError("the model's outputs are NaN or infinite after training: lower the learning "
                                     "rate")
    except FloatingPointError as err:
        raise FloatingPointError(f"{err} (fold {fold_name(r, k)} of {job.folder.path})") from None
    if not job.ranks.main:  # rank 0 writes the fold
        return
    job.folder.save_checkpoint(r, k, model, job.checkpoint_facts(r, k))
    write_fold(job.folder, dataset, r, k, test, probs, history, time.perf_counter() - start, extra)


def write_fold(folder: RunFolder, dataset: Dataset, r: int, k: int, test: np.ndarray, probs: np.ndarray,
               history: list[dict], seconds: float, extra: dict | None = None) -> None:
    """The file of fold (r, k): the test fold's probabilities (n_test, C), metrics and training history."""
    metrics = tables.fold_metrics(dataset, dataset.labels[test], probs)
    folder.write_fold(r, k, {
        "repeat": r, "fold": k, "test_index": test.tolist(), "ids": [dataset.ids[i] for i in test],
        "probs": probs.tolist(), "history": history, "metrics": metrics, "seconds": seconds, **(extra or {})})


def finish_run(folder: RunFolder, dataset: Dataset, cfg: CVConfig, log=print, seconds: float = 0.0) -> CVResult:
    """Aggregate the fold files of a run into oof.csv, history.csv, results.json and the plots."""
    folds = folder.read_folds()
    oof, history = tables.oof_table(folds, dataset), tables.history_table(folds)
    folder.write_tables(oof, history)
    results = tables.aggregate_results(folds, dataset, cfg, folder.resampling_units())
    results["seconds_this_session"] = seconds
    results["seconds_all_folds"] = float(sum(f["seconds"] for f in folds))
    folder.write_results(results)
    pngs = {"curves": folder.curves_png, "roc": folder.roc_png, "confusion": folder.confusion_png}
    for name, figure in plots.run_figures(results, oof, history).items():
        plots.save_figure(figure, pngs[name])
    log(tables.format_table(results))
    log(f"run folder: {folder.path}")
    return CVResult(folder.path, results, oof, history)
