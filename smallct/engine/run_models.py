"""A run read back for use: its record, its fold models and its images, for prediction, Grad-CAM, export,
comparison, tuning and notebooks.

:func:`load_run` reads a run folder (:class:`smallct.engine.run_folder.RunFolder`, which names and reads its
files) into a :class:`Run`: a model's architecture, image size, windows, normalisation and TTA come from the run,
and :meth:`Run.dataset` reads the run's labelled images again. :func:`load_fold_model` rebuilds one fold model
from its checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from smallct.config.run import CVConfig, from_dict
from smallct.data.cache import open_images
from smallct.data.context import Context
from smallct.data.source import BatchSource
from smallct.datasets.folder import Dataset, load_data, same_ids
from smallct.engine.run_folder import Checkpoint, RunFolder
from smallct.models.registry import builder
from smallct.models.stem import widen_stem


@dataclass
class Run:
    """A run folder read back: ``run.json`` (``record``) and the fold checkpoints written so far."""

    path: Path
    record: dict
    checkpoints: list[Checkpoint]

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.path)

    arch = property(lambda self: self.record["arch"])
    task = property(lambda self: self.record["task"])
    class_names = property(lambda self: list(self.record["class_names"]))

    @property
    def positive_class(self) -> str | None:
        """The class ``prob`` is for: ``class_names[1]`` of a binary run (also where run.json is older), else None."""
        return self.record.get("positive_class", self.class_names[1] if self.task == "binary" else None)

    @property
    def input(self) -> dict:
        """How an image becomes the model input: img_size (px), resize, crop, mean, std, windows."""
        return self.record["input"]

    @property
    def amp(self) -> bool:
        return bool(self.record["config"]["train"].get("amp", True))

    @property
    def tta(self) -> bool:
        """Whether the test folds were evaluated with left-right TTA: what its fold models predict with by default."""
        return bool(self.record.get("tta", self.record.get("config", {}).get("train", {}).get("tta", False)))

    @property
    def smooth(self) -> int:
        """The slices its reported out-of-fold figures were smoothed over (results.json's ``smoothed``; 1: none), which
        predict repeats; before the run has finished, its ``--smooth``."""
        if not self.folder.results_json.is_file():
            return self.config.smooth
        return int(self.results().get("smoothed", {}).get("slices", 1))

    @property
    def context(self) -> Context | None:
        """The 2.5D input of its fold models (``--context``), or None: each slice alone."""
        return Context.from_record(self.input.get("context"))

    def images(self, dataset: Dataset, progress: bool = True, log=print) -> tuple[BatchSource, BatchSource]:
        """The run's own images from its cache: ``(slices, inputs)``, the per-slice images (N, 3, S, S) and what
        its fold models read (the same source, or each slice with its neighbours)."""
        spec = self.input
        slices = open_images(dataset.files, int(spec["img_size"]), spec["resize"], spec["crop"], progress=progress,
                             log=log)
        context = self.context
        return slices, slices if context is None else context.source(slices, dataset.neighbours, str(self.path))

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
        return self.folder.read_oof()

    def results(self) -> dict:
        """``results.json``: per-fold, mean and pooled figures."""
        return self.folder.read_results()

    def dataset(self, log=print) -> Dataset:
        """The run's own labelled images, read again as the run read them (regenerated for a phantom run).

        Classes and ids are run.json's, in its order (smallct 0.1.0 recorded ``0`` for ``000.png``). ``ValueError``
        when the images differ from those of the run (the data changed)."""
        cfg, recorded = self.config, [str(i) for i in self.record["folds"]["ids"]]
        data = cfg.data if self.task == "multilabel" else replace(cfg.data, class_names=self.class_names,
                                                                   positive_class=self.positive_class)
        dataset = load_data(data, cfg.seed, log=log)
        if not same_ids(recorded, dataset.ids):
            raise ValueError(f"{self.path}: the images of {dataset.source} are not those of the run ({len(dataset)} "
                             f"now, {len(recorded)} in run.json); the data folder changed since the run")
        return replace(dataset, ids=recorded)


def load_run(run_dir: str | Path) -> Run:
    """Read a run folder: ``run.json`` and the list of fold checkpoints.

    Returns
    -------
    Run
        Checkpoints sorted by (repeat, fold); the list is empty while no fold has finished.

    Raises
    ------
    ValueError
        Naming the folder when it is not a run folder (no readable ``run.json``).
    """
    folder = RunFolder(Path(run_dir))
    record = folder.read_record()
    missing = [k for k in ("arch", "task", "num_outputs", "class_names", "input", "config") if k not in record]
    if missing:
        raise ValueError(f"{folder.run_json}: no {', '.join(missing)}; not written by this smallct.cv")
    return Run(folder.path, record, folder.checkpoints())


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
    model = widen_stem(builder(info["arch"])(info["num_outputs"]), int(info.get("channels", 3)))
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit {info['arch']} ({str(err).splitlines()[0]})") from None
    return model.to(device).eval(), info
