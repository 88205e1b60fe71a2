"""Hyper-parameter tuning with Optuna: :func:`run_study` (``python -m smallct.tune``).

Each trial is one cross-validation (:func:`smallct.engine.cv.run_cv`) with settings drawn from the search
space (:mod:`smallct.tuning.space`); the objective is the cross-validated figure, the mean over folds of
``--metric`` (ROC AUC for binary and multi-class tasks, the RSNA weighted log loss for multi-label ones).
The objective is computed on the same folds a later ``smallct.cv --params best_params.json`` reports, so
that figure is optimistic (the standard, documented one). :mod:`smallct.engine.nested` makes a choice
among settings files honest only for candidates fixed without these images: a study's best_params.json
has seen every fold.

Pruning. After every epoch the trial reports a running figure at step
``(repeat * folds + fold) * epochs + epoch``: the mean over the folds so far of each fold's per-epoch
figure (finished folds at their last epoch, the current fold at this epoch), from the test-fold
columns of the epoch record (``val_auc``, ``val_acc`` or ``val_loss``, without test-time
augmentation). The pruner (median by default, Hyperband as an option) compares trials at equal steps.

What a study writes under ``--out``:

``optuna.db``           the default storage (``sqlite:///OUT/optuna.db``); the same command resumes
``study.json``          which study and storage this folder belongs to
``trials/<number>/``    each trial's cross-validation run folder (checkpoints removed unless kept)
``best_params.json``    the best trial's settings, read by ``python -m smallct.cv --params``
``top_trials.csv``      the best finished trials, also printed; ``trials.csv`` holds every trial
``summary.json``        counts, best value, trials per hour and the epochs pruning saved
``*.png``               optimisation history, parameter importances, slices, intermediate values
(the report files: :mod:`smallct.tuning.report`)
"""

from __future__ import annotations

import dataclasses
import json
import math
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import TrialState
from smallct.progress import tqdm

from smallct.config.run import CVConfig
from smallct.config.schema import build, flat
from smallct.config.studies import TuneConfig
from smallct.data.cache import open_images
from smallct.data.source import BatchSource
from smallct.data.folds import check_fold_classes
from smallct.datasets.folder import Dataset, data_fingerprint, load_data
from smallct.engine.cv import check_task, folds_of, run_cv
from smallct.engine.run_folder import RunFolder, fold_name
from smallct.engine.tracking import Tracker
from smallct.engine.train import resolve_device, with_threads
from smallct.io.files import atomic_json
from smallct.models.weights import resolve_weights
from smallct.tuning.report import write_report
from smallct.tuning.running import (FINISHED, NotNeeded, QuietNotNeeded, counted_trials, not_needed, release_stale,
                                    shared_index_note, worker_label)
from smallct.tuning.space import cv_settings, default_space, describe_space, parse_space, suggest
from smallct.tuning.storage import create_or_load, default_storage, make_storage, masked, storage_kind

# Objective -> (direction, column of the per-epoch record the pruner follows); the keys are the choices of
# --metric (smallct.config.studies.Objective).
OBJECTIVES = {
    "roc_auc": ("maximize", "val_auc"),
    "accuracy": ("maximize", "val_acc"),
    "log_loss": ("minimize", "val_loss"),
    "weighted_log_loss": ("minimize", "val_loss"),  # per epoch: the unweighted BCE, a close stand-in
}
DEFAULT_OBJECTIVE = {"binary": "roc_auc", "multiclass": "roc_auc", "multilabel": "weighted_log_loss"}
FAILURES = (FloatingPointError, RuntimeError, MemoryError)  # NaN loss, CUDA out of memory, ...


def choose_metric(metric: str | None, task: str) -> str:
    metric = metric or DEFAULT_OBJECTIVE[task]
    if metric not in OBJECTIVES:
        raise ValueError(f"--metric {metric}: expected one of {', '.join(OBJECTIVES)}")
    if (metric == "weighted_log_loss") != (task == "multilabel"):
        allowed = "weighted_log_loss" if task == "multilabel" else "roc_auc, accuracy or log_loss"
        raise ValueError(f"--metric {metric}: a {task} task is tuned on {allowed}")
    return metric


def _sampler_seed(seed: int, n_trials: int, worker: int) -> int:
    # new draws after a resume (the sampler's state is not stored) and for each parallel worker
    return int(np.random.SeedSequence([seed, n_trials, worker]).generate_state(1)[0])


def _pruner(cfg: TuneConfig, steps: int):
    prune_after = cfg.prune_after if cfg.prune_after is not None else cfg.base.train.epochs // 2
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials, n_warmup_steps=prune_after)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, prune_after), max_resource=steps)
    if cfg.pruner == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"--pruner {cfg.pruner}: expected median, hyperband or none")


def check_inputs(cfg: TuneConfig, dataset: Dataset, progress: bool = True, log=print) -> BatchSource:
    """What a trial would find wrong, found before the study writes anything under ``--out``: the task, the
    weights, the device, the folds (smallct.cv's, as every trial makes them) and the images (decoded at the
    fixed size into the cache). Returns the images as a batch source, opened once for every trial (a trial's run
    neither re-reads the cache file nor stats the files again)."""
    base = cfg.base
    check_task(base, dataset)
    check_fold_classes(dataset, base.folds)  # a stray label: stops before any download or decoding
    source = resolve_weights(base.arch, base.weights, offline=base.offline)
    resolve_device(base.device)
    folds_of(base, dataset, progress, log)
    return open_images(dataset.files, source.image_size(base.data.img_size), base.data.resize, base.data.crop,
                       store=base.cache, workers=base.workers, progress=progress, log=log)


def _check_marker(out: Path, here: dict) -> Path:
    """``OUT/study.json`` names the study and storage of a study folder; another study's folder is refused."""
    marker = out / "study.json"
    if marker.is_file() and json.loads(marker.read_text()) != here:
        old = json.loads(marker.read_text())
        raise ValueError(f"{out}: holds study {old['study']} of {old['storage']}; use another --out for study "
                         f"{here['study']} of {here['storage']}")
    return marker


def _check_setup(study: optuna.Study, cfg: TuneConfig, dataset: Dataset, metric: str, where: str, log) -> None:
    """Record the fixed settings and data of a new study; refuse a study that holds trials of other ones."""
    base = cfg.base
    space = cfg.space if cfg.space is not None else default_space(base.train.epochs)
    setup = {k: v for k, v in cv_settings(base).items() if k not in space}
    setup.update(metric=metric, data=data_fingerprint(dataset), n_images=len(dataset),
                 folds=base.folds, repeats=base.repeats, seed=base.seed)
    old = study.user_attrs.get("setup")
    if old is None or _finished(study) == 0:  # new, or no trial finished yet: (re)start with these settings
        study.set_user_attr("setup", setup)
        study.set_user_attr("space", space)
        study.set_user_attr("data_source", dataset.source)
        return
    changed = [k for k in setup if k in old and old[k] != setup[k]]
    if changed:
        what = ", ".join(f"{k} {old[k]} -> {setup[k]}" for k in changed)
        raise ValueError(f"study {cfg.study} in {where} was run with other settings ({what}); "
                         "use the same settings, or another --study")
    if study.user_attrs.get("space") != json.loads(json.dumps(space)):
        log(f"note: the search space differs from the one study {cfg.study} started with")


def open_study(cfg: TuneConfig, dataset: Dataset, log=print) -> optuna.Study:
    """Create the study, or load it (same command again, ``--resume``, another worker) after checking that
    it holds trials of the same data and fixed settings."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # smallct.tune prints one line per trial instead
    out = Path(cfg.base.out)
    out.mkdir(parents=True, exist_ok=True)
    url = cfg.storage or default_storage(out)
    here = {"study": cfg.study, "storage": masked(url)}
    storage = make_storage(url, heartbeat_interval=cfg.heartbeat_interval, grace_period=cfg.grace_period)
    exists = cfg.study in optuna.get_all_study_names(storage)
    if cfg.resume and not exists:
        raise ValueError(f"--resume: {here['storage']} holds no study named {cfg.study} "
                         f"(it holds: {', '.join(optuna.get_all_study_names(storage)) or 'none'})")
    marker = _check_marker(out, here)
    metric = choose_metric(cfg.metric, dataset.task)
    direction = OBJECTIVES[metric][0]
    base = cfg.base
    steps = base.folds * base.repeats * base.train.epochs
    n_before = len(optuna.load_study(study_name=cfg.study, storage=storage).trials) if exists else 0
    sampler = optuna.samplers.TPESampler(n_startup_trials=cfg.startup_trials,
                                         seed=_sampler_seed(base.seed, n_before, cfg.worker))
    # workers on several machines may all start here on a fresh database: created once, retried on that race
    study = create_or_load(url, storage=storage, study_name=cfg.study, direction=direction, sampler=sampler,
                           pruner=_pruner(cfg, steps))
    if study.direction.name.lower() != direction:
        raise ValueError(f"study {cfg.study}: it is {study.direction.name.lower()}d, but --metric {metric} is "
                         f"{direction}d; use another --study")
    _check_setup(study, cfg, dataset, metric, here["storage"], log)
    if not marker.is_file():
        atomic_json(marker, here)
    note = shared_index_note(study.get_trials(deepcopy=False), cfg.worker)
    if note:
        log(note)
    return study


class EpochReporter:
    """``on_epoch`` callback of :func:`smallct.engine.cv.run_cv`: reports the running figure and prunes.

    The running figure at step ``(repeat * folds + fold) * epochs + epoch`` is the mean over the folds so
    far of each fold's latest per-epoch figure ``record[key]``.
    """

    def __init__(self, trial: optuna.Trial, key: str, folds: int, epochs: int):
        self.trial, self.key, self.folds, self.epochs = trial, key, folds, epochs
        self.latest: dict[tuple[int, int], float] = {}
        self.epochs_run = 0

    def __call__(self, repeat: int, fold: int, record: dict) -> None:
        self.epochs_run += 1
        value = record.get(self.key)
        if value is None or not math.isfinite(value):
            return
        self.latest[(repeat, fold)] = value
        step = (repeat * self.folds + fold) * self.epochs + record["epoch"]
        running = float(np.mean(list(self.latest.values())))
        self.trial.report(running, step)
        if self.trial.should_prune():
            self.trial.set_user_attr("pruned_at", f"fold {fold + 1} epoch {record['epoch']} (step {step})")
            raise optuna.TrialPruned(f"pruned at repeat {repeat + 1} fold {fold + 1} epoch {record['epoch']} "
                                     f"(step {step}): running {self.key} {running:.4f}")


def _preparation(cfg: CVConfig) -> tuple:
    """What the decoded images of a run depend on: the weights (their input size) and the preprocessing."""
    return cfg.arch, cfg.weights, cfg.data.img_size, cfg.data.resize, cfg.data.crop


def _record_folds(trial: optuna.Trial, run: RunFolder, metric: str) -> list[float]:
    """Each finished fold's figure as a user attribute ``<metric>_r<repeat>_f<fold>``."""
    values = []
    for fold in run.read_folds():
        value = fold["metrics"].get(metric)
        if value is not None:
            trial.set_user_attr(f"{metric}_{fold_name(fold['repeat'], fold['fold'])}", value)
            values.append(value)
    return values


def make_objective(cfg: TuneConfig, dataset: Dataset, space: dict, metric: str, parent: Tracker | None = None,
                   images: BatchSource | None = None):
    """The objective: one cross-validation with the trial's settings; returns the mean over folds. Each trial's run
    is tracked in its own run folder (TensorBoard) and as a nested run of ``parent``'s (MLflow). ``images``: the
    study's images at its settings (:func:`check_inputs`), read by every trial that prepares images that way."""
    out = Path(cfg.base.out)
    heartbeats = _heartbeats(cfg)

    def objective(trial: optuna.Trial) -> float:
        counted = counted_trials(trial.study.get_trials(deepcopy=False), before=trial.number, heartbeats=heartbeats,
                                 grace_period=cfg.grace_period)
        if counted >= cfg.trials:
            # other workers asked for their trials first: this one would pass --trials (workers started together)
            trial.set_user_attr("fail_reason", f"not needed: --trials {cfg.trials} already finished or running")
            raise NotNeeded(trial.user_attrs["fail_reason"])
        params = suggest(trial, space, cfg.base)
        run = RunFolder(out / "trials" / str(trial.number))
        shutil.rmtree(run.path, ignore_errors=True)  # a number is used once per study: leftovers are stale
        # the pruner reads the test fold's figure after every epoch
        run_cfg = dataclasses.replace(build(CVConfig, params, base=cfg.base, where=f"trial {trial.number}"),
                                      out=run.path, test_curves=True)
        trial.set_user_attr("settings", cv_settings(run_cfg))
        trial.set_user_attr("worker", worker_label(cfg.worker))
        # figures depend on them (run.json of the trial records them too)
        trial.set_user_attr("threads", torch.get_num_threads())
        trial.set_user_attr("device", resolve_device(run_cfg.device).type)
        reporter = EpochReporter(trial, OBJECTIVES[metric][1], run_cfg.folds, run_cfg.train.epochs)
        start = time.perf_counter()
        try:
            same = _preparation(run_cfg) == _preparation(cfg.base)
            result = run_cv(run_cfg, dataset=dataset, progress=False, log=lambda *a, **k: None,
                            on_epoch=reporter, estimate=False, parent=parent, images=images if same else None)
        except FAILURES as err:
            trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}")
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            raise
        finally:
            _record_folds(trial, run, metric)
            trial.set_user_attr("epochs_run", reporter.epochs_run)
            trial.set_user_attr("epochs_full", run_cfg.folds * run_cfg.repeats * run_cfg.train.epochs)
            trial.set_user_attr("seconds", time.perf_counter() - start)
            if not cfg.keep_checkpoints:
                shutil.rmtree(run.checkpoints_dir, ignore_errors=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        value = result.results["mean_std_over_folds"][metric]["mean"]
        if not math.isfinite(value):
            trial.set_user_attr("fail_reason", f"the cross-validated {metric} is {value}")
        return value

    return objective


def _heartbeats(cfg: TuneConfig) -> bool:
    """Whether the study's storage has heartbeats: a database one (:func:`smallct.tuning.storage.make_storage`)."""
    return storage_kind(cfg.storage or default_storage(cfg.base.out)) == "rdb"


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial, metric: str) -> str:
    """One printed line per finished trial: its state and figure, the best so far, epochs, minutes, settings."""
    last = trial.value if trial.value is not None else float("nan")
    if trial.state == TrialState.PRUNED:
        value = f"at {trial.user_attrs.get('pruned_at')}, running {OBJECTIVES[metric][1]} {last:.4f}"
    elif trial.state == TrialState.COMPLETE:
        value = f"{metric} {trial.value:.4f}"
    else:
        value = trial.user_attrs.get("fail_reason", "")
    best = ""
    if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        best = f"; best {study.best_value:.4f} (trial {study.best_trial.number})"
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    return (f"trial {trial.number} {trial.state.name.lower()}: {value}{best} "
            f"[{trial.user_attrs.get('epochs_run', 0)}/{trial.user_attrs.get('epochs_full', 0)} epochs, "
            f"{trial.user_attrs.get('seconds', 0) / 60:.1f} min] {params}")


@with_threads(lambda cfg: cfg.base.threads)
def run_study(cfg: TuneConfig, dataset: Dataset | None = None, progress: bool = True, log=print) -> optuna.Study:
    """Run (or continue) the study until it holds ``cfg.trials`` finished trials or ``cfg.timeout`` passes.

    Failed trials (NaN loss, out of memory) are recorded with a ``fail_reason`` and the study goes
    on; they do not count towards ``cfg.trials``, but one call makes at most ``cfg.trials`` minus the
    finished trials attempts (a killed worker's running trial is run again). Running trials of live workers count (:mod:`smallct.tuning.running`),
    so workers started together end with ``cfg.trials`` finished ones; a trial that starts when they are all
    finished or running fails at once as not needed (no line, no progress). Stale running trials are failed
    (heartbeats) or named and no longer counted first. Returns the study; with ``cfg.report`` the report files
    are written.
    """
    base = cfg.base
    dataset = dataset if dataset is not None else load_data(base.data, base.seed, log)
    images = check_inputs(cfg, dataset, progress, log)
    raw = cfg.space if cfg.space is not None else default_space(base.train.epochs)
    space = {k: v for k, v in parse_space(raw).items() if v is not None}  # typed like the cv settings
    metric = choose_metric(cfg.metric, dataset.task)
    # MLflow: the study is one run, each trial a nested one; TensorBoard: each trial's run folder has its own
    tracker = Tracker.open(None, base.mlflow, f"tune {cfg.study}", offline=base.offline)
    study = open_study(dataclasses.replace(cfg, space=space), dataset, log)
    heartbeats = _heartbeats(cfg)
    stale = release_stale(study, heartbeats, cfg.grace_period)  # before the count: a stale trial blocked it for good
    if stale:
        log(stale)
    # other workers' running trials count
    todo = cfg.trials - counted_trials(study.get_trials(deepcopy=False), heartbeats=heartbeats,
                                       grace_period=cfg.grace_period)
    log(f"smallct.tune: study {cfg.study} in {masked(cfg.storage or default_storage(base.out))}: "
        f"{len(study.trials)} trials so far, {max(todo, 0)} to run; objective: mean over {base.folds} folds "
        f"x {base.repeats} repeats of {metric} ({study.direction.name.lower()}), {cfg.pruner} pruner")
    log(describe_space(space))
    with tracker:
        tracker.start({**{k: v for k, v in flat(cfg).items() if k != "space"},
                       "storage": masked(cfg.storage or default_storage(base.out))})  # no password
        if todo > 0:
            bar = tqdm(total=todo, desc=f"study {cfg.study}", unit="trial", disable=not progress)
            hinted = []

            def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
                if not not_needed(trial):  # one that other workers made unnecessary is no news
                    bar.update()
                    tqdm.write(trial_line(study, trial, metric), file=sys.stdout)
                if trial.state == TrialState.COMPLETE:
                    tracker.scalars({"objective": trial.value}, step=trial.number)
                trials = study.get_trials(deepcopy=False)
                note = None if hinted else shared_index_note(trials, cfg.worker)
                if note:
                    hinted.append(note)
                    log(note)
                if counted_trials(trials, heartbeats=heartbeats, grace_period=cfg.grace_period) >= cfg.trials:
                    study.stop()  # finished and running (other workers') trials

            quiet = QuietNotNeeded()  # Optuna's warnings about a not-needed trial (module of _log_failed_trial)
            logging.getLogger("optuna.study._optimize").addFilter(quiet)
            try:
                # at most the trials not yet finished: other workers' running ones may still fail (a killed
                # worker), and then this one runs them; the callback and NotNeeded stop it at the target first
                attempts = cfg.trials - sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))
                study.optimize(make_objective(cfg, dataset, space, metric, tracker, images), n_trials=attempts,
                               timeout=cfg.timeout, catch=FAILURES, gc_after_trial=True, callbacks=[after_trial])
            finally:
                logging.getLogger("optuna.study._optimize").removeFilter(quiet)
            bar.close()
        if cfg.report:
            write_report(study, cfg, metric, log=log)
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        tracker.finish({"best_value": study.best_value} if complete else {}, files=base.out)
    return study
