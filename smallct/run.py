"""A cross-validation run folder read back: :func:`load_run` and :func:`load_fold_model`.

The folder is written by :mod:`smallct.cv` (its docstring is the contract). Everything that applies
a run (prediction, Grad-CAM, export, tuning, comparison, notebooks) reads it through here, so that
the architecture, the image size, the windows and the normalisation of a model always come from the
run and are never typed again.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from smallct.config import CVConfig, from_dict
from smallct.labels import Dataset
from smallct.models import builder

_CHECKPOINT = re.compile(r"r(\d+)_f(\d+)\.pt")


@dataclass(frozen=True)
class Checkpoint:
    """One fold model of a run: ``checkpoints/r{repeat}_f{fold}.pt``."""

    repeat: int
    fold: int
    path: Path

    @property
    def name(self) -> str:
        return f"r{self.repeat}_f{self.fold}"


@dataclass
class Run:
    """A run folder: ``run.json`` (``record``) and the fold checkpoints written so far."""

    path: Path
    record: dict
    checkpoints: list[Checkpoint]

    @property
    def arch(self) -> str:
        return self.record["arch"]

    @property
    def task(self) -> str:
        return self.record["task"]

    @property
    def class_names(self) -> list[str]:
        return list(self.record["class_names"])

    @property
    def input(self) -> dict:
        """How an image becomes the model input: img_size (px), resize, crop, mean, std, windows."""
        return self.record["input"]

    @property
    def amp(self) -> bool:
        return bool(self.record["config"]["train"].get("amp", True))

    @property
    def config(self) -> CVConfig:
        return from_dict(CVConfig, self.record["config"])

    def checkpoint(self, name: str) -> Checkpoint:
        """The checkpoint called ``name`` (``r0_f2``); ``ValueError`` listing the ones there are."""
        for ckpt in self.checkpoints:
            if ckpt.name == name:
                return ckpt
        raise ValueError(f"{self.path}: no fold model {name!r} (there are: "
                         f"{', '.join(c.name for c in self.checkpoints) or 'none'})")

    def oof(self) -> pd.DataFrame:
        """``oof.csv``: id, label(s), prob(s), pred, fold, repeat (ids read as text)."""
        path = self.path / "oof.csv"
        if not path.is_file():
            raise ValueError(f"{path}: no out-of-fold predictions (is the run finished? run smallct.cv again "
                             "with the same --out to complete it)")
        return pd.read_csv(path, dtype={"id": str})

    def dataset(self, log=print) -> Dataset:
        """The run's own labelled images, read again as the run read them (regenerated for a phantom run).

        ``ValueError`` when the ids differ from those recorded in ``run.json`` (the data changed).
        """
        from smallct.cv import load_data  # cv sits above this module; import late

        dataset = load_data(self.config, log=log)
        if list(dataset.ids) != list(self.record["folds"]["ids"]):
            raise ValueError(f"{self.path}: the images of {dataset.source} are not those of the run "
                             f"({len(dataset)} now, {len(self.record['folds']['ids'])} in run.json); "
                             "the data folder changed since the run")
        return dataset


def load_run(run_dir: str | Path) -> Run:
    """Read a run folder of :mod:`smallct.cv`: ``run.json`` and the list of fold checkpoints.

    Returns
    -------
    Run
        Checkpoints sorted by (repeat, fold); the list is empty while no fold has finished.

    Raises
    ------
    ValueError
        Naming the folder when it is not a run folder (no readable ``run.json``).
    """
    path = Path(run_dir)
    record_path = path / "run.json"
    if not record_path.is_file():
        raise ValueError(f"{path}: not a smallct.cv run folder (no run.json)")
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{record_path}: cannot read ({err})") from None
    missing = [k for k in ("arch", "task", "num_outputs", "class_names", "input", "config") if k not in record]
    if missing:
        raise ValueError(f"{record_path}: no {', '.join(missing)}; not written by this smallct.cv")
    found = []
    for file in (path / "checkpoints").glob("r*_f*.pt"):
        match = _CHECKPOINT.fullmatch(file.name)
        if match:
            found.append(Checkpoint(int(match[1]), int(match[2]), file))
    return Run(path, record, sorted(found, key=lambda c: (c.repeat, c.fold)))


def load_fold_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild one fold model from its checkpoint, in eval mode on ``device``.

    The architecture and the number of outputs come from the checkpoint; the state dict is loaded
    strictly (every tensor must fit). Returns ``(model, info)``, ``info`` being the checkpoint's
    other entries (arch, num_outputs, task, class_names, repeat, fold, img_size, mean, std).
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise ValueError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or not {"model", "arch", "num_outputs"} <= set(ckpt):
        raise ValueError(f"{path}: not a smallct fold checkpoint (expected model, arch and num_outputs)")
    info = {k: v for k, v in ckpt.items() if k != "model"}
    model = builder(info["arch"])(info["num_outputs"])
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit {info['arch']} ({str(err).splitlines()[0]})") from None
    return model.to(device).eval(), info
