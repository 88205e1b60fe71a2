"""Hyper-parameter tuning with Optuna: ``python -m smallct.tune``.

Each trial is one cross-validation (:func:`smallct.cv.run_cv`) with settings drawn from the search
space; the objective is the cross-validated figure, the mean over folds of ``--metric`` (ROC AUC for
binary and multi-class tasks, the RSNA weighted log loss for multi-label ones). The objective is
computed on the same folds a later ``smallct.cv --params best_params.json`` reports, so that figure
is optimistic (the standard, documented one). :mod:`smallct.nested` makes a choice among settings files
honest only for candidates fixed without these images: a study's best_params.json has seen every fold.

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
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import torch
import yaml
from optuna.trial import TrialState
from tqdm.auto import tqdm

from smallct import cv
from smallct.config import CVConfig, DataConfig, TrainConfig, to_dict
from smallct.labels import Dataset

# Objective metric -> (direction, column of the per-epoch record the pruner follows).
METRICS = {
    "roc_auc": ("maximize", "val_auc"),
    "accuracy": ("maximize", "val_acc"),
    "log_loss": ("minimize", "val_loss"),
    "weighted_log_loss": ("minimize", "val_loss"),  # per epoch: the unweighted BCE, a close stand-in
}
DEFAULT_METRIC = {"binary": "roc_auc", "multiclass": "roc_auc", "multilabel": "weighted_log_loss"}

# A setting searched only when another one has one of these values.
CONDITIONS = {
    "momentum": ("optimizer", ("sgd",)),
    "step_size": ("schedule", ("step",)),
    "gamma": ("schedule", ("step",)),
    "warmup_epochs": ("schedule", ("cosine", "onecycle")),
}

# cv settings that describe the data, the machine or the run folder: never searched, never in best_params.json.
NOT_SETTINGS = ("data", "labels", "id_col", "label_col", "out", "params", "no_progress", "device", "workers",
                "test_curves")
# settings that define the objective itself: fixed for a whole study.
NOT_SEARCHABLE = NOT_SETTINGS + ("folds", "repeats", "seed", "task")
FAILURES = (FloatingPointError, RuntimeError, MemoryError)  # NaN loss, CUDA out of memory, ...


def default_space(epochs: int) -> dict:
    """The search space: a scalar fixes a setting, a list is a choice, a dict a range (``log``: log-uniform).

    Keys are ``smallct.cv`` flag names with ``_`` for ``-``; settings not listed keep their cv value.
    """
    return {
        "optimizer": "sgd",  # fixed; [sgd, adamw] makes it a choice (momentum is searched for sgd only)
        "lr": {"low": 1e-4, "high": 0.1, "log": True},
        "momentum": {"low": 0.8, "high": 0.99},
        "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
        "schedule": ["step", "cosine"],
        "step_size": {"low": 1, "high": max(1, epochs - 1)},  # StepLR: epochs between decays
        "gamma": {"low": 0.05, "high": 0.5},  # StepLR: decay factor
    }


@dataclass
class TuneConfig:
    """A whole study: the fixed cross-validation settings, the search space and the study's plumbing."""

    base: CVConfig = field(default_factory=lambda: CVConfig(out=Path("runs/tune")))  # ``base.out``: study folder
    space: dict | None = None  # None: default_space(base.train.epochs)
    trials: int = 20  # finished (complete or pruned) trials the study should hold
    timeout: float | None = None  # seconds after which this worker starts no new trial
    storage: str | None = None  # None: sqlite:///OUT/optuna.db
    study: str = "smallct"
    resume: bool = False  # the study must exist already
    metric: str | None = None  # None: DEFAULT_METRIC of the task
    pruner: str = "median"  # median | hyperband | none
    prune_after: int | None = None  # steps (epochs, counted over folds) before pruning starts; None: epochs // 2
    startup_trials: int = 5  # random trials before TPE, and finished trials before the pruner acts
    worker: int = 0  # this worker's index (varies the sampler seed between parallel workers)
    keep_checkpoints: bool = False
    report: bool = True  # write best_params.json, tables and plots at the end
    top: int = 10


# --- search space -----------------------------------------------------------------------------------


def _cv_actions() -> dict[str, argparse.Action]:
    return {a.dest: a for a in cv.build_parser()._actions if a.dest != "help"}


def _coerce(key: str, action: argparse.Action, value):
    """A space value as the cv flag ``key`` would parse it (YAML reads ``1e-4`` as text)."""
    try:
        if isinstance(action, argparse.BooleanOptionalAction):
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text not in ("true", "false", "yes", "no", "on", "off", "1", "0"):
                raise ValueError
            return text in ("true", "yes", "on", "1")
        if action.type is int:
            number = float(value)
            if number != int(number):
                raise ValueError
            value = int(number)
        elif action.type is float:
            value = float(value)
        elif value is not None:
            value = str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}: cannot read {value!r} as a value of --{key.replace('_', '-')}") from None
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{key}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def parse_space(raw: dict, where: str = "search space") -> dict:
    """Validate a search space and type its values like the cv flags; ``None`` entries are kept (they unset)."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping of setting names to a value, a list or a range")
    actions = _cv_actions()
    space = {}
    for key, spec in raw.items():
        if key not in actions or key in NOT_SEARCHABLE:
            allowed = ", ".join(k for k in actions if k not in NOT_SEARCHABLE)
            raise ValueError(f"{where}: {key!r} cannot be searched (searchable cv settings: {allowed})")
        action = actions[key]
        if spec is None:
            space[key] = None
        elif isinstance(spec, (list, tuple)):
            if not spec:
                raise ValueError(f"{where}: {key}: an empty list of choices")
            space[key] = [_coerce(key, action, v) for v in spec]
        elif isinstance(spec, dict):
            unknown = set(spec) - {"low", "high", "log", "step"}
            if unknown or not {"low", "high"} <= set(spec):
                raise ValueError(f"{where}: {key}: a range is {{low, high, log (optional), step (optional)}}, "
                                 f"got {sorted(spec)}")
            if action.type not in (int, float):
                raise ValueError(f"{where}: {key}: a range needs a numeric setting; give a list of choices")
            low, high = _coerce(key, action, spec["low"]), _coerce(key, action, spec["high"])
            log = bool(spec.get("log", False))
            if low > high or (log and low <= 0):
                raise ValueError(f"{where}: {key}: expected 0 < low <= high for a log range, low <= high otherwise; "
                                 f"got low {low}, high {high}")
            entry = {"low": low, "high": high, "log": log}
            if spec.get("step") is not None:
                if log:
                    raise ValueError(f"{where}: {key}: a range cannot have both log and step")
                entry["step"] = _coerce(key, action, spec["step"])
            space[key] = entry
        else:
            space[key] = _coerce(key, action, spec)
    return space


def parse_search_option(text: str, defaults: dict) -> tuple[str, object]:
    """``--search KEY=SPEC``: ``LOW:HIGH[:log|:linear]`` a range, ``A,B,C`` a choice, ``V`` a fixed value.

    A range keeps the log scale of the default space's entry unless ``:log``/``:linear`` says otherwise.
    """
    key, sep, spec = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key or not spec:
        raise ValueError(f"--search {text}: expected KEY=LOW:HIGH, KEY=A,B or KEY=VALUE (e.g. lr=1e-4:1e-2)")
    if ":" in spec:
        parts = spec.split(":")
        scale = parts.pop() if parts[-1] in ("log", "linear") else None
        if len(parts) != 2:
            raise ValueError(f"--search {text}: a range is LOW:HIGH, optionally followed by :log or :linear")
        old = defaults.get(key)
        log = (scale == "log") if scale else bool(isinstance(old, dict) and old.get("log"))
        return key, {"low": parts[0], "high": parts[1], "log": log}
    if "," in spec:
        return key, [v.strip() for v in spec.split(",")]
    return key, spec


def load_space_file(path: Path) -> dict:
    """A YAML or JSON search-space file (same form as :func:`default_space`)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read the search-space file ({err})") from None
    return parse_space(raw or {}, where=str(path))


def describe_space(space: dict) -> str:
    """One line: the searched ranges and choices, then the fixed values."""
    searched, fixed = [], []
    for key, spec in space.items():
        if isinstance(spec, dict):
            searched.append(f"{key} {spec['low']:g}..{spec['high']:g}" + (" (log)" if spec["log"] else ""))
        elif isinstance(spec, list):
            searched.append(f"{key} in {{{', '.join(map(str, spec))}}}")
        else:
            fixed.append(f"{key}={spec}")
    conditional = [f"{k} only when {p} is {'/'.join(v)}" for k, (p, v) in CONDITIONS.items() if k in space]
    return ("searching " + "; ".join(searched) + (f"; fixed {', '.join(fixed)}" if fixed else "")
            + (f" ({'; '.join(conditional)})" if conditional else ""))


def suggest(trial: optuna.Trial, space: dict, base: CVConfig) -> dict:
    """Draw one trial's settings: ``{cv setting: value}`` for every entry whose condition holds."""
    chosen: dict = {}
    for key in sorted(space, key=lambda k: k in CONDITIONS):  # parents (optimizer, schedule) first
        spec = space[key]
        parent = CONDITIONS.get(key)
        if parent and chosen.get(parent[0], setting(base, parent[0])) not in parent[1]:
            continue
        if isinstance(spec, list):
            chosen[key] = trial.suggest_categorical(key, spec)
        elif isinstance(spec, dict) and isinstance(spec["low"], int):
            chosen[key] = trial.suggest_int(key, spec["low"], spec["high"], log=spec["log"],
                                            step=spec.get("step", 1))
        elif isinstance(spec, dict):
            chosen[key] = trial.suggest_float(key, spec["low"], spec["high"], log=spec["log"],
                                              step=spec.get("step"))
        else:
            chosen[key] = spec
    return chosen


# --- settings of a CVConfig by cv flag name ---------------------------------------------------------

_FIELDS = {"train": {f.name for f in dataclasses.fields(TrainConfig)},
           "data": {f.name for f in dataclasses.fields(DataConfig)}}


def setting(cfg: CVConfig, key: str):
    """The value of cv setting ``key`` (``lr``, ``img_size``, ``arch``, ...) in ``cfg``."""
    for part in ("train", "data"):
        if key in _FIELDS[part]:
            return getattr(getattr(cfg, part), key)
    return getattr(cfg, key)


def with_settings(cfg: CVConfig, settings: dict) -> CVConfig:
    """A copy of ``cfg`` with cv settings (flag names) replaced."""
    parts: dict[str, dict] = {"train": {}, "data": {}, "top": {}}
    for key, value in settings.items():
        part = next((p for p in ("train", "data") if key in _FIELDS[p]), "top")
        parts[part][key] = value
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **parts["train"]),
                               data=dataclasses.replace(cfg.data, **parts["data"]), **parts["top"])


def cv_settings(cfg: CVConfig) -> dict:
    """Every cv setting of ``cfg`` that ``smallct.cv --params`` accepts (no data paths, machine or folder)."""
    flat = {**to_dict(cfg), **to_dict(cfg.train), **to_dict(cfg.data)}
    return {k: flat[k] for k in _cv_actions() if k in flat and k not in NOT_SETTINGS}


# --- storage and study ------------------------------------------------------------------------------


def _atomic_csv(path: Path, table: pd.DataFrame) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)


def default_storage(out: Path) -> str:
    return f"sqlite:///{(Path(out) / 'optuna.db').resolve()}"


def storage_kind(url: str) -> str:
    """``journal`` (a file), ``redis`` (a journal in Redis) or ``rdb`` (a database URL); ``ValueError`` otherwise."""
    if url.startswith("redis://"):
        return "redis"
    if url.startswith("journal:") or ("://" not in url and url.endswith((".journal", ".log"))):
        return "journal"
    if "://" not in url:
        raise ValueError(f"--storage {url}: expected a database URL (sqlite:///PATH, postgresql://...) or "
                         "journal:PATH")
    return "rdb"


def make_storage(url: str):
    """An Optuna storage from ``url``: any SQLAlchemy URL (sqlite, postgresql, mysql), ``journal:PATH``
    (or a path ending in ``.journal``/``.log``) for a journal file, or ``redis://...`` for a journal in Redis.

    RDB storages get heartbeats: a trial of a killed worker is marked failed after 3 minutes and
    re-queued once (its settings run again).
    """
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend, JournalRedisBackend

    kind = storage_kind(url)
    if kind == "redis":
        return JournalStorage(JournalRedisBackend(url))
    if kind == "journal":
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=60, grace_period=180,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))


def masked(url: str) -> str:
    """The storage URL without its password (it is written to best_params.json and logs)."""
    if "://" not in url or "@" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown without its credentials part
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def data_fingerprint(dataset: Dataset) -> str:
    """Ids, labels and classes: equal on every machine that holds the same data, wherever it lies."""
    h = hashlib.sha1("|".join(dataset.ids).encode())
    h.update(np.ascontiguousarray(dataset.labels).tobytes())
    h.update("|".join(dataset.class_names).encode())
    return h.hexdigest()[:16]


def choose_metric(metric: str | None, task: str) -> str:
    metric = metric or DEFAULT_METRIC[task]
    if metric not in METRICS:
        raise ValueError(f"--metric {metric}: expected one of {', '.join(METRICS)}")
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


def open_study(cfg: TuneConfig, dataset: Dataset, log=print) -> optuna.Study:
    """Create the study, or load it (same command again, ``--resume``, another worker) after checking that
    it holds trials of the same data and fixed settings."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # smallct.tune prints one line per trial instead
    out = Path(cfg.base.out)
    out.mkdir(parents=True, exist_ok=True)
    url = cfg.storage or default_storage(out)
    here = {"study": cfg.study, "storage": masked(url)}
    storage = make_storage(url)
    exists = cfg.study in optuna.get_all_study_names(storage)
    if cfg.resume and not exists:
        raise ValueError(f"--resume: {here['storage']} holds no study named {cfg.study} "
                         f"(it holds: {', '.join(optuna.get_all_study_names(storage)) or 'none'})")
    marker = out / "study.json"
    if marker.is_file() and json.loads(marker.read_text()) != here:
        old = json.loads(marker.read_text())
        raise ValueError(f"{out}: holds study {old['study']} of {old['storage']}; use another --out for study "
                         f"{cfg.study} of {here['storage']}")
    metric = choose_metric(cfg.metric, dataset.task)
    direction = METRICS[metric][0]
    base = cfg.base
    steps = base.folds * base.repeats * base.train.epochs
    n_before = len(optuna.load_study(study_name=cfg.study, storage=storage).trials) if exists else 0
    sampler = optuna.samplers.TPESampler(n_startup_trials=cfg.startup_trials,
                                         seed=_sampler_seed(base.seed, n_before, cfg.worker))
    study = optuna.create_study(storage=storage, study_name=cfg.study, direction=direction, sampler=sampler,
                                pruner=_pruner(cfg, steps), load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ValueError(f"study {cfg.study}: it is {study.direction.name.lower()}d, but --metric {metric} is "
                         f"{direction}d; use another --study")
    space = cfg.space if cfg.space is not None else default_space(base.train.epochs)
    setup = {k: v for k, v in cv_settings(base).items() if k not in space}
    setup.update(metric=metric, data=data_fingerprint(dataset), n_images=len(dataset),
                 folds=base.folds, repeats=base.repeats, seed=base.seed)
    old = study.user_attrs.get("setup")
    if old is None:
        study.set_user_attr("setup", setup)
        study.set_user_attr("space", space)
        study.set_user_attr("data_source", dataset.source)
    else:
        changed = [k for k in setup if k in old and old[k] != setup[k]]
        if changed:
            what = ", ".join(f"{k} {old[k]} -> {setup[k]}" for k in changed)
            raise ValueError(f"study {cfg.study} in {here['storage']} was run with other settings ({what}); "
                             "use the same settings, or another --study")
        if study.user_attrs.get("space") != json.loads(json.dumps(space)):
            log(f"note: the search space differs from the one study {cfg.study} started with")
    if not marker.is_file():
        cv.atomic_json(marker, here)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if running and cfg.worker == 0:
        log(f"note: {len(running)} trials are running (other workers, or killed ones): give each worker its own "
            "--worker index so that their sampler seeds differ")
    return study


# --- the objective ----------------------------------------------------------------------------------


class EpochReporter:
    """``on_epoch`` callback of :func:`smallct.cv.run_cv`: reports the running figure and prunes.

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


def _record_folds(trial: optuna.Trial, run: Path, metric: str) -> list[float]:
    """Each finished fold's figure as a user attribute ``<metric>_r<repeat>_f<fold>``."""
    values = []
    for path in sorted((run / "folds").glob("r*_f*.json")):
        value = json.loads(path.read_text())["metrics"].get(metric)
        if value is not None:
            trial.set_user_attr(f"{metric}_{path.stem}", value)
            values.append(value)
    return values


def make_objective(cfg: TuneConfig, dataset: Dataset, space: dict, metric: str):
    """The objective: one cross-validation with the trial's settings; returns the mean over folds."""
    out = Path(cfg.base.out)

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space, cfg.base)
        run = out / "trials" / str(trial.number)
        shutil.rmtree(run, ignore_errors=True)  # a number is used once per study: leftovers are stale
        # the pruner reads the test fold's figure after every epoch
        run_cfg = dataclasses.replace(with_settings(cfg.base, params), out=run, test_curves=True)
        trial.set_user_attr("settings", cv_settings(run_cfg))
        trial.set_user_attr("worker", f"{socket.gethostname()}/{os.getpid()} (worker {cfg.worker})")
        reporter = EpochReporter(trial, METRICS[metric][1], run_cfg.folds, run_cfg.train.epochs)
        start = time.perf_counter()
        try:
            result = cv.run_cv(run_cfg, dataset=dataset, progress=False, log=lambda *a, **k: None,
                               on_epoch=reporter, estimate=False)
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
                shutil.rmtree(run / "checkpoints", ignore_errors=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        value = result.results["mean_std_over_folds"][metric]["mean"]
        if not math.isfinite(value):
            trial.set_user_attr("fail_reason", f"the cross-validated {metric} is {value}")
        return value

    return objective


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def run_study(cfg: TuneConfig, dataset: Dataset | None = None, progress: bool = True, log=print) -> optuna.Study:
    """Run (or continue) the study until it holds ``cfg.trials`` finished trials or ``cfg.timeout`` passes.

    Failed trials (NaN loss, out of memory) are recorded with a ``fail_reason`` and the study goes
    on; they do not count towards ``cfg.trials``, but one call makes at most ``cfg.trials`` minus the
    finished trials attempts. Returns the study; with ``cfg.report`` the report files are written.
    """
    base = cfg.base
    dataset = dataset if dataset is not None else cv.load_data(base, log)
    if base.task is not None and base.task != dataset.task:
        raise ValueError(f"--task {base.task}: the data ({dataset.source}) is a {dataset.task} task")
    raw = cfg.space if cfg.space is not None else default_space(base.train.epochs)
    space = {k: v for k, v in parse_space(raw).items() if v is not None}  # typed like the cv flags
    metric = choose_metric(cfg.metric, dataset.task)
    study = open_study(dataclasses.replace(cfg, space=space), dataset, log)
    todo = cfg.trials - _finished(study)
    log(f"smallct.tune: study {cfg.study} in {masked(cfg.storage or default_storage(base.out))}: "
        f"{len(study.trials)} trials so far, {max(todo, 0)} to run; objective: mean over {base.folds} folds "
        f"x {base.repeats} repeats of {metric} ({study.direction.name.lower()}), {cfg.pruner} pruner")
    log(describe_space(space))
    if todo > 0:
        bar = tqdm(total=todo, desc=f"study {cfg.study}", unit="trial", disable=not progress)

        def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            bar.update()
            last = trial.value if trial.value is not None else float("nan")
            if trial.state == TrialState.PRUNED:
                value = f"at {trial.user_attrs.get('pruned_at')}, running {METRICS[metric][1]} {last:.4f}"
            elif trial.state == TrialState.COMPLETE:
                value = f"{metric} {trial.value:.4f}"
            else:
                value = trial.user_attrs.get("fail_reason", "")
            best = ""
            if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
                best = f"; best {study.best_value:.4f} (trial {study.best_trial.number})"
            params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
            tqdm.write(f"trial {trial.number} {trial.state.name.lower()}: {value}{best} "
                       f"[{trial.user_attrs.get('epochs_run', 0)}/{trial.user_attrs.get('epochs_full', 0)} epochs, "
                       f"{trial.user_attrs.get('seconds', 0) / 60:.1f} min] {params}", file=sys.stdout)

        study.optimize(make_objective(cfg, dataset, space, metric), n_trials=todo, timeout=cfg.timeout,
                       catch=FAILURES, gc_after_trial=True,
                       callbacks=[optuna.study.MaxTrialsCallback(cfg.trials, (TrialState.COMPLETE, TrialState.PRUNED)),
                                  after_trial])
        bar.close()
    if cfg.report:
        write_report(study, cfg, metric, log=log)
    return study


# --- the report -------------------------------------------------------------------------------------


def summarize(study: optuna.Study) -> dict:
    """Counts, best value, trials per hour (one worker's trial durations) and the share of epochs pruning saved."""
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    run = sum(t.user_attrs.get("epochs_run", 0) for t in finished)
    full = sum(t.user_attrs.get("epochs_full", 0) for t in finished)
    seconds = sum(t.duration.total_seconds() for t in finished if t.duration is not None)
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    out = {"trials": len(trials), **{s.name.lower(): sum(t.state == s for t in trials) for s in TrialState},
           "epochs_trained": run, "epochs_without_pruning": full,
           "share_of_epochs_saved_by_pruning": 1 - run / full if full else 0.0,
           "trials_per_hour": 3600 * len(finished) / seconds if seconds else None,  # per worker
           "complete_trial_minutes": (float(np.mean([t.duration.total_seconds() for t in complete])) / 60
                                      if complete else None)}
    if complete:
        out.update(best_value=study.best_value, best_trial=study.best_trial.number, best_params=study.best_params)
    return out


def best_params_record(study: optuna.Study, cfg: TuneConfig, metric: str) -> dict:
    """``best_params.json``: the best trial's cv settings, with metadata keys (``_note``, ...) cv records."""
    best = study.best_trial
    storage = masked(cfg.storage or default_storage(cfg.base.out))
    note = (f"settings tuned by Optuna study {cfg.study} (trial {best.number}, {metric} "
            f"{best.value:.4f}) on the same data and folds, so a cross-validated figure with them is "
            "optimistic; this study saw every image, so smallct.nested over this file does not make it honest "
            "either (that would need the study inside each training part)")
    return {"_note": note, "_study": cfg.study, "_storage": storage, "_value": best.value, "_metric": metric,
            "_trial": best.number, "_searched": sorted(best.params), "_data": study.user_attrs.get("data_source"),
            **best.user_attrs.get("settings", best.params)}


def top_trials(study: optuna.Study, k: int = 10) -> pd.DataFrame:
    """The ``k`` best complete trials: number, value, minutes, epochs, searched settings."""
    rows = [{"trial": t.number, "value": t.value, "minutes": t.duration.total_seconds() / 60 if t.duration else None,
             "epochs": t.user_attrs.get("epochs_run"), **t.params}
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values("value", ascending=study.direction.name == "MINIMIZE").head(k)
    return table.reset_index(drop=True)


def write_plots(study: optuna.Study, out: Path, log=print) -> list[Path]:
    """Optimisation history, parameter importances, slices and intermediate values as PNG files."""

    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    plots = {"optimization_history": ovm.plot_optimization_history, "param_importances": ovm.plot_param_importances,
             "slice": ovm.plot_slice, "intermediate_values": ovm.plot_intermediate_values}
    written = []
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)
                ax = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. importances of fewer than 2 trials
            log(f"plot {name} skipped: {err}")
            continue
        fig = np.asarray(ax).ravel()[0].figure
        fig.set_size_inches(max(fig.get_size_inches()[0], 6), max(fig.get_size_inches()[1], 4))
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def write_report(study: optuna.Study, cfg: TuneConfig, metric: str, log=print) -> dict:
    """best_params.json, top_trials.csv, trials.csv, summary.json and the plots under ``cfg.base.out``."""
    out = Path(cfg.base.out)
    summary = summarize(study)
    cv.atomic_json(out / "summary.json", summary)
    _atomic_csv(out / "trials.csv", study.trials_dataframe())
    failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))]
    for t in failed:
        log(f"trial {t.number} failed: {t.user_attrs.get('fail_reason', 'no reason recorded (worker killed?)')}")
    if summary["complete"] == 0:
        log(f"no complete trial yet in study {cfg.study}: no best_params.json")
        return summary
    cv.atomic_json(out / "best_params.json", best_params_record(study, cfg, metric))
    table = top_trials(study, cfg.top)
    _atomic_csv(out / "top_trials.csv", table)
    write_plots(study, out, log)
    log(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    log(f"{summary['complete']} complete, {summary['pruned']} pruned, {summary['fail']} failed; pruning saved "
        f"{summary['share_of_epochs_saved_by_pruning']:.0%} of the epochs; "
        f"{summary['trials_per_hour']:.1f} trials/h per worker")
    log(f"best {metric} {study.best_value:.4f} (trial {study.best_trial.number}); apply it with: python -m smallct.cv "
        f"--data DIR --params {out / 'best_params.json'}   (an optimistic figure: tuned on these folds)")
    return summary


# --- command line -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``smallct.cv`` (data, model, training, validation) plus a ``tuning`` group."""
    p = argparse.ArgumentParser(
        prog="python -m smallct.tune", parents=[cv.build_parser()], conflict_handler="resolve",
        description="Tune learning rate, momentum, weight decay and learning-rate decay with Optuna; each trial is "
                    "a cross-validation, pruned early when it falls behind. Settings given as flags are fixed.")
    p.add_argument("--out", type=Path, default=Path("runs/tune"),
                   help="study folder: default storage, trial runs, best_params.json, plots (default runs/tune)")
    t = p.add_argument_group("tuning")
    t.add_argument("--trials", type=int, default=20,
                   help="finished (complete or pruned) trials the study should hold; the same command again "
                        "continues up to this number (default 20)")
    t.add_argument("--timeout", type=float, help="seconds after which this worker starts no new trial")
    t.add_argument("--storage", help="Optuna storage: sqlite:///PATH (default OUT/optuna.db), postgresql://..., "
                                     "mysql://..., journal:PATH (several processes on one host), redis://...")
    t.add_argument("--study", default="smallct", help="study name in the storage (default smallct)")
    t.add_argument("--resume", action="store_true", help="continue an existing study (error when it is missing)")
    t.add_argument("--metric", choices=list(METRICS),
                   help="objective, the mean over folds: default roc_auc, weighted_log_loss for multi-label")
    t.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median",
                   help="stop trials that fall behind at the same epoch (default median)")
    t.add_argument("--prune-after", type=int,
                   help="epochs (counted over folds) before any pruning (default: half of --epochs)")
    t.add_argument("--startup-trials", type=int, default=5,
                   help="random trials before TPE sampling, and finished trials before pruning (default 5)")
    t.add_argument("--space", type=Path, help="YAML/JSON search space: lr: {low: 1e-4, high: 1e-2, log: true}, "
                                              "schedule: [step, cosine], optimizer: sgd (fixed), momentum: null")
    t.add_argument("--search", action="append", default=[], metavar="KEY=SPEC",
                   help="narrow or fix one setting: lr=1e-4:1e-2, schedule=step,cosine, momentum=0.9 (repeatable)")
    t.add_argument("--jobs", default="1",
                   help="worker processes on this machine, one per GPU with 'auto' (default 1)")
    t.add_argument("--worker", type=int, default=0, help="this worker's index (give each worker its own)")
    t.add_argument("--keep-checkpoints", action="store_true", help="keep every trial's fold checkpoints")
    t.add_argument("--no-report", action="store_true", help="no best_params.json, tables or plots at the end")
    t.add_argument("--top", type=int, default=10, help="rows of the top-trials table (default 10)")
    return p


def given_flags(argv: list[str]) -> set[str]:
    """Destinations of the flags written on the command line (they fix a setting)."""
    probe = build_parser()
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_known_args(argv)[0]))


def config_from_args(args: argparse.Namespace, given: set[str]) -> TuneConfig:
    """The study's configuration: cv settings from the flags, the space from defaults, ``--space`` and ``--search``;
    a setting given as a cv flag is fixed (it leaves the space)."""
    base = cv.config_from_args(args)
    space = parse_space(default_space(base.train.epochs))
    asked = load_space_file(args.space) if args.space else {}
    for text in args.search:
        key, spec = parse_search_option(text, space)
        asked.update(parse_space({key: spec}, where=f"--search {text}"))
    clash = sorted(set(asked) & given)
    if clash:
        raise ValueError(f"{', '.join(clash)}: both fixed by a flag and searched (--space/--search); keep one")
    space.update(asked)
    space = {k: v for k, v in space.items() if k not in given}
    if args.storage is not None:
        storage_kind(args.storage)  # a bad URL stops here, before any data is read
    if args.trials < 0 or (args.timeout is not None and args.timeout <= 0):
        raise ValueError(f"--trials {args.trials} --timeout {args.timeout}: expected trials >= 0 and timeout > 0")
    return TuneConfig(base=base, space=space, trials=args.trials, timeout=args.timeout, storage=args.storage,
                      study=args.study, resume=args.resume, metric=args.metric, pruner=args.pruner,
                      prune_after=args.prune_after, startup_trials=args.startup_trials, worker=args.worker,
                      keep_checkpoints=args.keep_checkpoints, report=not args.no_report, top=args.top)


def run_workers(cfg: TuneConfig, argv: list[str], jobs: int, log=print) -> int:
    """``jobs`` worker processes on one study: one per GPU (``CUDA_VISIBLE_DEVICES``), or sharing the CPU cores."""
    if (cfg.storage or default_storage(cfg.base.out)).startswith("sqlite"):
        log("note: several workers on SQLite may meet 'database is locked'; journal:PATH or PostgreSQL is safer")
    dataset = cv.load_data(cfg.base, log)
    open_study(cfg, dataset, log)  # create it once, before the workers race to
    gpus = torch.cuda.device_count() if cfg.base.device in ("auto", "cuda") else 0
    procs = []
    for i in range(jobs):
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        else:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
        cmd = [sys.executable, "-m", "smallct.tune", *argv, "--jobs", "1", "--worker", str(cfg.worker + i),
               "--no-report", "--no-progress"]
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    study = optuna.load_study(study_name=cfg.study, storage=make_storage(cfg.storage or default_storage(cfg.base.out)))
    if cfg.report:
        write_report(study, cfg, choose_metric(cfg.metric, dataset.task), log=log)
    return max(codes)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = None
    try:
        args = cv.apply_params_file(parser, argv)
        cfg = config_from_args(args, given_flags(argv))
        if args.jobs != "auto" and not (args.jobs.isdigit() and int(args.jobs) > 0):
            raise ValueError(f"--jobs {args.jobs}: expected a number of workers or auto")
        jobs = (torch.cuda.device_count() or 1) if args.jobs == "auto" else int(args.jobs)
        if jobs > 1:
            return run_workers(cfg, argv, jobs)
        run_study(cfg, progress=not args.no_progress)
    except KeyboardInterrupt:
        out = args.out if args is not None else "the study folder"
        print(f"\ninterrupted: finished trials are kept in the storage ({out}); run the same command again to "
              "continue", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as err:
        print(f"smallct.tune: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
