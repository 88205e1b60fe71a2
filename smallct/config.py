"""Typed configuration of a smallct run.

The CLI builds these from argparse; notebooks build them directly. Every field is saved
in ``run.json`` so that a run can be rebuilt, resumed and applied to new images.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Task = Literal["binary", "multiclass", "multilabel"]


@dataclass
class DataConfig:
    """Where the images and labels are, and how images become tensors."""

    data: Path | None = None  # None: the synthetic phantom set (embedded default)
    labels: Path | None = None  # CSV; default DATA/labels.csv or class-per-folder
    id_col: str | None = None
    label_col: str | None = None
    img_size: int | None = None  # None: the weight source's input size
    resize: Literal["pad", "squash"] = "pad"  # pad: keep aspect ratio, pad with black
    crop: bool = True  # crop the black border around the head before resizing
    phantom_n: int = 200  # images in the embedded synthetic set
    group_similar: float | None = 0.92  # keep near-duplicates in one fold (thumbnail correlation); None: off


@dataclass
class TrainConfig:
    """One fit of one model: optimiser, schedule, augmentation."""

    epochs: int = 20
    batch_size: int = 32
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.05
    schedule: Literal["step", "cosine", "onecycle", "constant"] = "cosine"
    step_size: int = 7
    gamma: float = 0.1
    warmup_epochs: int = 1
    freeze_epochs: int = 0  # train the head only for this many epochs, then all layers
    backbone_lr_mult: float = 1.0  # discriminative learning rate: backbone lr = lr * this
    label_smoothing: float = 0.0
    augment: Literal["none", "flip", "affine"] = "affine"  # affine: flips + rotation/scale/shift
    tta: bool = True  # horizontal-flip test-time augmentation at evaluation
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the training forward pass on CUDA (ignored on CPU)


@dataclass
class CVConfig:
    """A whole cross-validation run."""

    arch: str = "resnet18"
    weights: str = "imagenet"  # imagenet | none | PATH to a state dict
    task: Task | None = None  # None: from the data (binary/multiclass by class count, multilabel when prepared so)
    folds: int = 5
    repeats: int = 1
    seed: int = 0
    device: str = "auto"
    out: Path = Path("runs/cv")
    workers: int = 0  # decoding processes; 0 = every core
    params_source: str | None = None  # where tuned settings came from (recorded in results.json)
    test_curves: bool = True  # evaluate the test fold after every epoch (curves.png; a tuner's pruner reads it)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def to_dict(cfg: Any) -> dict:
    """A JSON-ready dict of a (nested) config dataclass."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, Path):
            value = str(value)
        out[f.name] = value
    return out


def from_dict(cls: type, values: dict) -> Any:
    """Rebuild a config dataclass from :func:`to_dict` output (unknown keys are an error)."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings: {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            value = from_dict(type(default), value)
        elif name in ("data", "labels", "out") and value is not None and cls is not TrainConfig:
            value = Path(value)
        kwargs[name] = value
    return cls(**kwargs)
