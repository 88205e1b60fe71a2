"""The run folder: one object names every file of it, and is the only writer and reader.

A cross-validation run (``smallct.cv``, ``smallct.nested``, each trial of ``smallct.tune``) writes

``run.json``      everything needed to rebuild and apply a fold model (written first)
``nested.json``   a nested run's candidates and choice rules (written before run.json)
``folds/``        one ``r{repeat}_f{fold}.json`` per finished fold (probabilities, history, metrics):
                  resume skips these; written last, so its presence means the fold is done
``checkpoints/``  one ``r{repeat}_f{fold}.pt`` per fold: ``{"model": state_dict, ...run facts}``
``oof.csv``       out-of-fold predictions: id, label(s), prob(s), pred, fold, repeat
``history.csv``   per-epoch train and test-fold loss/accuracy, with ``curves.png``
``results.json``  per-fold metrics, mean and std over folds, pooled out-of-fold metrics with 95% CI;
``roc.png``, ``confusion.png``, ``tensorboard/`` (:mod:`smallct.engine.tracking`)
``inner/r{repeat}_f{fold}/{candidate}/``  a nested run's inner runs (run folders themselves)
``sequence.json``, ``features/``, ``per_label_auc.png``  a sequence folder's (:mod:`smallct.engine.sequence`)

:class:`RunFolder` holds these names (as MONAI's ``FolderLayout``); nothing else builds a path into a run folder
or parses one. Reading a run back for use (its fold models, its images again) is
:mod:`smallct.engine.run_models`'s job.
"""

from __future__ import annotations

import json
import platform
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
import torchvision
from torch import nn

import smallct
from smallct.config.run import CVConfig, to_dict, with_defaults
from smallct.data.folds import Folds, scheme_note
from smallct.datasets.folder import Dataset, same_ids
from smallct.datasets.rsna import label_weights
from smallct.evaluation.intervals import Units
from smallct.io.files import atomic_csv, atomic_json
from smallct.models.weights import WeightSource

_FOLD_NAME = re.compile(r"r(\d+)_f(\d+)")
# Settings that make two runs different runs: a folder holding one refuses to resume with the other.
SETTINGS_THAT_CHANGE_RESULTS = ("arch", "weights", "task", "folds", "repeats", "seed", "data", "train")
# Facts of the machine that change the figures of the same settings (run.json's "device" and "threads"): a run
# resumes only on the same kind of device at the same torch thread count.
MACHINE_THAT_CHANGES_RESULTS = ("device", "threads", "world_size")


def fold_name(repeat: int, fold: int) -> str:
    """The name of fold ``fold`` of repeat ``repeat``: ``r0_f2``."""
    return f"r{repeat}_f{fold}"


def parse_fold_name(name: str) -> tuple[int, int] | None:
    """``(repeat, fold)`` of a fold name (``r0_f2``), or None for any other name."""
    match = _FOLD_NAME.fullmatch(name)
    return (int(match[1]), int(match[2])) if match else None


@dataclass(frozen=True)
class Checkpoint:
    """One fold model of a run: ``checkpoints/r{repeat}_f{fold}.pt``."""

    repeat: int
    fold: int
    path: Path

    @property
    def name(self) -> str:
        return fold_name(self.repeat, self.fold)


@dataclass(frozen=True)
class RunFolder:
    """The files of one run folder, by name; reading and writing them."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    run_json = property(lambda self: self.path / "run.json")
    nested_json = property(lambda self: self.path / "nested.json")
    results_json = property(lambda self: self.path / "results.json")
    oof_csv = property(lambda self: self.path / "oof.csv")
    history_csv = property(lambda self: self.path / "history.csv")
    folds_dir = property(lambda self: self.path / "folds")
    checkpoints_dir = property(lambda self: self.path / "checkpoints")
    inner_dir = property(lambda self: self.path / "inner")
    inner_log = property(lambda self: self.path / "inner" / "log.txt")
    curves_png = property(lambda self: self.path / "curves.png")
    roc_png = property(lambda self: self.path / "roc.png")
    confusion_png = property(lambda self: self.path / "confusion.png")
    tensorboard_dir = property(lambda self: self.path / "tensorboard")
    # a sequence folder (smallct.sequence): its settings, the fold models' features kept, its figures
    sequence_json = property(lambda self: self.path / "sequence.json")
    features_dir = property(lambda self: self.path / "features")
    per_label_png = property(lambda self: self.path / "per_label_auc.png")

    def fold_file(self, repeat: int, fold: int) -> Path:
        return self.folds_dir / f"{fold_name(repeat, fold)}.json"

    def checkpoint_file(self, repeat: int, fold: int) -> Path:
        return self.checkpoints_dir / f"{fold_name(repeat, fold)}.pt"

    def inner_run(self, repeat: int, fold: int, candidate: str) -> RunFolder:
        """The folder of a nested run's inner cross-validation of ``candidate`` on outer fold (repeat, fold)."""
        return RunFolder(self.inner_dir / fold_name(repeat, fold) / candidate)

    # --- reading ---------------------------------------------------------------------------------------

    def has_record(self) -> bool:
        return self.run_json.is_file()

    def is_nested(self) -> bool:
        return self.nested_json.is_file()

    def read_record(self) -> dict:
        """``run.json``; ``ValueError`` naming the folder when there is none or it cannot be read."""
        if not self.has_record():
            raise ValueError(f"{self.path}: not a smallct.cv run folder (no run.json)")
        try:
            return json.loads(self.run_json.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{self.run_json}: cannot read ({err})") from None

    def read_nested(self) -> dict | None:
        return json.loads(self.nested_json.read_text()) if self.is_nested() else None

    def is_done(self, repeat: int, fold: int) -> bool:
        return self.fold_file(repeat, fold).is_file()

    def count_done(self) -> int:
        """How many folds are finished (fold files written)."""
        return len(self._fold_files())

    def _fold_files(self) -> list[Path]:
        return sorted(p for p in self.folds_dir.glob("r*_f*.json") if parse_fold_name(p.stem))

    def read_fold(self, repeat: int, fold: int) -> dict:
        """The file of fold (repeat, fold); ``ValueError`` naming it when the fold has not finished."""
        path = self.fold_file(repeat, fold)
        if not path.is_file():
            raise ValueError(f"{path}: no such fold file; the run has not finished (run the same command again to "
                             "complete it)")
        return json.loads(path.read_text())

    def read_folds(self) -> list[dict]:
        """Every finished fold's file, in the order of their names."""
        return [json.loads(p.read_text()) for p in self._fold_files()]

    def checkpoints(self) -> list[Checkpoint]:
        """The fold checkpoints written so far, sorted by (repeat, fold)."""
        found = []
        for file in self.checkpoints_dir.glob("r*_f*.pt"):
            parsed = parse_fold_name(file.stem) if file.suffix == ".pt" else None
            if parsed:
                found.append(Checkpoint(*parsed, file))
        return sorted(found, key=lambda c: (c.repeat, c.fold))

    def read_results(self) -> dict:
        if not self.results_json.is_file():
            raise ValueError(f"{self.results_json}: no results (is the run finished? run the same command again "
                             "with the same --out to complete it)")
        return json.loads(self.results_json.read_text())

    def read_oof(self) -> pd.DataFrame:
        """``oof.csv``: id, label(s), prob(s), pred, fold, repeat (ids read as text)."""
        if not self.oof_csv.is_file():
            raise ValueError(f"{self.oof_csv}: no out-of-fold predictions (is the run finished? run smallct.cv "
                             "again with the same --out to complete it)")
        return pd.read_csv(self.oof_csv, dtype={"id": str})

    def recorded_folds(self, ids: list[str]) -> np.ndarray:
        """The fold assignment (repeats, N) recorded in ``run.json``, checked against the image ``ids``."""
        record = self.read_record()["folds"]
        if not same_ids(record["ids"], [str(i) for i in ids]):
            raise ValueError(f"{self.path}: the run was made on other images than --data")
        return np.asarray(record["assignment"], dtype=np.int64)

    def resampling_units(self, record: dict | None = None) -> Units:
        """What the intervals of this run resample: the groups its folds keep whole, as ``run.json`` records
        them (a run written before groups were recorded: its images, as it then did)."""
        record = record if record is not None else self.read_record()
        n = len(record["folds"]["ids"])
        saved = record.get("resampling")
        if not saved or saved.get("groups") is None:
            return Units(n)
        return Units(n, np.asarray(saved["groups"]), saved["unit"])

    def read_oof_matrix(self, record: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Labels (N,) and out-of-fold class probabilities (repeats, N, C) of a finished binary or multi-class
        run, in the order of ``run.json``'s ids; ``ValueError`` when the run is unfinished."""
        record = record if record is not None else self.read_record()
        if not self.oof_csv.is_file():
            raise ValueError(f"{self.path}: no oof.csv; the run has not finished (run the same smallct.cv command "
                             "to resume)")
        ids = [str(i) for i in record["folds"]["ids"]]
        repeats, n = np.asarray(record["folds"]["assignment"]).shape
        classes = record["class_names"]
        oof = self.read_oof()
        prob_cols = ["prob"] if "prob" in oof else [f"prob_{c}" for c in classes]
        missing = [c for c in ["id", "label", "fold", "repeat", *prob_cols] if c not in oof]
        if missing:
            raise ValueError(f"{self.oof_csv}: missing columns {', '.join(missing)}")
        if len(oof) != repeats * n:
            raise ValueError(f"{self.path}: oof.csv has {len(oof)} rows, expected {repeats * n} ({repeats} repeats x "
                             f"{n} images); finish the run first (run the same smallct.cv command to resume)")
        position = {i: k for k, i in enumerate(ids)}
        unknown = set(oof["id"]) - set(position)
        if unknown:
            raise ValueError(f"{self.oof_csv}: ids not in run.json, e.g. {sorted(unknown)[0]}")
        P = np.full((repeats, n, len(classes)), np.nan)
        labels = np.full(n, -1, dtype=np.int64)
        for r, g in oof.groupby("repeat"):
            index = g["id"].map(position).to_numpy()
            probs = g[prob_cols].to_numpy(float)
            P[int(r), index] = np.column_stack([1 - probs[:, 0], probs[:, 0]]) if prob_cols == ["prob"] else probs
            labels[index] = g["label"].to_numpy()
        if np.isnan(P).any():
            raise ValueError(f"{self.path}: oof.csv does not hold every image in every repeat")
        return labels, P

    # --- writing ---------------------------------------------------------------------------------------

    def has_finished_folds(self) -> bool:
        """Whether any fold has finished here, or in a nested run's inner runs: results a restart would lose."""
        return self.count_done() > 0 or any(p for p in self.inner_dir.glob("*/*/folds/r*_f*.json")
                                            if parse_fold_name(p.stem))

    def check_resume(self, record: dict, differences: tuple[str, ...] | list[str] = ()) -> bool:
        """True: the folder holds the same run (resume it); False: a new run, or another none of whose folds finished
        (start again); ``ValueError``: another with finished folds. One rule, for smallct.nested's ``differences``."""
        if not self.has_record():
            return False
        old = self.read_record()
        was, now = (with_defaults(CVConfig, r["config"]) for r in (old, record))  # absent: a later setting's default
        changed = [*differences, *(k for k in SETTINGS_THAT_CHANGE_RESULTS if was.get(k) != now.get(k))]
        if old["folds"] != record["folds"]:
            changed.append(scheme_note(old, record, ("the run there", "this run")) or "fold assignment (data)")
        # the 2.5D input (--context, --context-channels, --context-window) is a top-level setting, not data/train's
        if (old.get("input") or {}).get("context") != (record.get("input") or {}).get("context"):
            changed.append("the 2.5D input (--context, --context-channels, --context-window)")
        if old.get("label_weights") != record.get("label_weights"):  # absent: trained before smallct 0.6 weighted
            changed.append(f"the loss's label weights ({old.get('label_weights')} there, "
                           f"{record.get('label_weights')} now)")
        # absent world_size: a run.json of smallct <= 0.6 (or a record made outside torchrun): one process a fold
        old, record = ({"world_size": 1, **r} for r in (old, record))
        changed += [_machine_change(k, old[k], record.get(k))
                    for k in MACHINE_THAT_CHANGES_RESULTS if k in old and old[k] != record.get(k)]
        if changed and not self.has_finished_folds():
            return False
        if changed:
            raise ValueError(f"{self.path}: holds a run with other settings ({', '.join(changed)}); "
                             "use another --out, or delete the folder to start again")
        return True

    def start(self, record: dict, resuming: bool, nested: dict | None = None) -> None:
        """Create the folder; a new run writes ``nested.json`` (a nested run) and then ``run.json``."""
        self.folds_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoints_dir.mkdir(exist_ok=True)
        if not resuming:  # nested.json first: a run.json without it is a plain cv run
            for stale in self.checkpoints():  # of an earlier start whose folds never finished
                stale.path.unlink()
            if nested is not None:
                atomic_json(self.nested_json, nested)
            atomic_json(self.run_json, record)

    def write_fold(self, repeat: int, fold: int, content: dict) -> None:
        atomic_json(self.fold_file(repeat, fold), content)

    def save_checkpoint(self, repeat: int, fold: int, model: nn.Module, facts: dict) -> None:
        torch.save({"model": {k: v.cpu() for k, v in model.state_dict().items()}, **facts},
                   self.checkpoint_file(repeat, fold))

    def write_tables(self, oof: pd.DataFrame, history: pd.DataFrame) -> None:
        atomic_csv(self.oof_csv, oof)
        atomic_csv(self.history_csv, history)

    def write_results(self, results: dict) -> None:
        atomic_json(self.results_json, results)


def _machine_change(key: str, there, now) -> str:
    """How the run there was made differently, and how to resume it."""
    if key == "world_size" and there == 1:  # processes that trained each fold together (torchrun, DDP)
        return (f"one process trained each fold there, {now} now: resume without torchrun, or under torchrun with "
                "--fold-parallel")
    if key == "world_size":
        return (f"{there} processes trained each fold there (torchrun), {now} now: resume with torchrun and {there} "
                "processes in all (--nnodes x --nproc-per-node)")
    return f"{key} {there} there, {now} now: resume with --{key} {there}"


def versions() -> dict:
    """The versions that made a run: smallct, torch, torchvision, timm, Python."""
    return {"smallct": smallct.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "timm": timm.__version__}


def run_record(cfg: CVConfig, dataset: Dataset, source: WeightSource, img_size: int, folds: Folds, *,
               device: torch.device, context=None, ranks=None, processes: int = 1) -> dict:
    """The content of ``run.json``: enough to rebuild and apply every fold model, and the groups its folds
    keep whole (``resampling``: what the intervals of its figures resample). ``device`` and ``threads`` (torch's
    thread count now) are recorded because the same settings give other figures with others. ``context``: the
    2.5D input (:class:`smallct.data.context.Context`; its channel count and order), or None for single slices.
    ``ranks``: the processes that train each fold together (:class:`smallct.engine.ranks.Ranks`; None: one), whose
    number (``world_size``) changes the figures as the thread count does; ``processes``: all of the job's."""
    weights = label_weights(dataset.class_names) if dataset.task == "multilabel" else None
    return {
        "config": to_dict(cfg),
        "arch": cfg.arch,
        "task": dataset.task,
        "num_outputs": len(dataset.class_names),
        "class_names": dataset.class_names,
        "positive_class": dataset.positive_class,  # class_names[1] of two classes: what prob is for; else None
        "weights": source.to_dict(),
        "input": {"img_size": img_size, "resize": cfg.data.resize, "crop": cfg.data.crop,
                  "mean": list(source.mean), "std": list(source.std),
                  "channels": dataset.meta.get("channels", "RGB uint8 from smallct.io.images.preprocess"),
                  "windows": dataset.meta.get("windows"),
                  # side (px) of the PNGs smallct.prepare made from DICOM: predict repeats it for .dcm input
                  "prepared_size": dataset.meta.get("size"),
                  "context": None if context is None else context.record()},
        "tta": cfg.train.tta,
        # the multi-label loss's weight per label (RSNA: any x2, smallct 0.6); None: unweighted
        "label_weights": None if weights is None else list(weights),
        "seed": cfg.seed,
        "data": {"source": dataset.source, "n_images": len(dataset), "synthetic": cfg.data.data is None},
        "folds": {"ids": dataset.ids, "assignment": folds.assignment.tolist()}, "folds_scheme": folds.scheme,
        "versions": versions(),
        "device": device.type,
        "threads": torch.get_num_threads(),
        # torchrun: processes per fold (DDP; batch_size images a step on each), and of the whole job
        "world_size": 1 if ranks is None else ranks.world,
        "global_batch": cfg.train.batch_size * (1 if ranks is None else ranks.world),
        "processes": processes, "fold_parallel": cfg.fold_parallel,
        "similar_images": folds.similar_record(dataset.ids),
        "resampling": folds.resampling_record(),
    }

