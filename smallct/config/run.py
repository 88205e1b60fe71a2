"""Typed settings of a cross-validation run: the images (:class:`DataConfig`), one fit
(:class:`TrainConfig`) and the whole run (:class:`CVConfig`).

Each field is declared once, with its default and the help text of its command-line flag
(:func:`option`); the flags of every command, their choices and the settings files are made from
these fields (:mod:`smallct.config.schema`). Every field is saved in ``run.json`` so that a run can
be rebuilt, resumed and applied to new images.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from smallct.config.schema import validate

Task = Literal["binary", "multiclass", "multilabel"]
Resize = Literal["pad", "squash"]
Optimizer = Literal["sgd", "adam", "adamw", "radam"]
Schedule = Literal["step", "cosine", "onecycle", "constant", "flat_cos"]
Augment = Literal["none", "flip", "affine"]
Store = Literal["memory", "disk", "auto"]
ContextChannels = Literal["window", "all"]

# Pearson correlation of 64 px grey thumbnails at which two images count as near-duplicates and are kept in
# one fold (smallct.data.similar). On the Head CT set it links 49 pairs.
GROUP_SIMILAR = 0.92
# --threads: figures depend on torch's thread count (the order of its sums), so it is recorded and kept on resume
THREADS_HELP = ("torch threads (default: torch's own, one per core); the same device and thread count give the "
                "same figures; on a busy shared CPU 1 is faster")
# --device: what smallct.engine.train.resolve_device accepts
DEVICE = {"pattern": r"auto|cpu|cuda(:\d+)?", "allowed": "auto, cpu, cuda or cuda:N"}
# --tensorboard / --mlflow (smallct.engine.tracking): where a run's curves, settings, figures and files also go
TENSORBOARD_HELP = ("write TensorBoard event files into OUT/tensorboard (per-epoch curves per fold, settings and "
                    "final figures in the HParams view, the PNG figures): tensorboard --logdir runs")
OFFLINE_HELP = "never download weights: use the caches only (also SMALLCT_OFFLINE=1 or HF_HUB_OFFLINE=1)"
MLFLOW_HELP = ("also log the run to this MLflow tracking URI (sqlite:///mlflow.db, http://HOST:5000): settings, "
               "per-epoch figures (one nested run per fold or trial), final figures and the run's files; needs "
               "pip install smallct[mlflow]")


def option(default: Any = None, help: str = "", *, factory=None, **flag) -> Any:
    """A config field: its default, the help text of its flag and the flag's own facts.

    ``flag`` may hold ``flag`` (the flag's name(s) when not ``--field-name``), ``metavar``,
    ``zero_is_none`` (0 means None, ``zero`` says what that is), ``cli=False`` (no flag), ``file=False`` (not
    accepted in a settings file), and what a value may be: bounds ``ge``, ``gt``, ``le``, ``lt`` of a number, or a
    ``pattern`` of a text (``allowed`` says it in words), ``secret=True`` (a URI whose password :func:`to_dict`
    masks: it is written to run.json and uploaded as an artifact). Every config checks its fields when it is built
    (:func:`smallct.config.schema.validate`), so a notebook meets the same errors as the command line.
    """
    metadata = {"help": help, **flag}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class DataConfig:
    """Where the images and labels are, and how images become tensors."""

    data: Path | None = option(None, "image folder (with labels.csv, or one sub-folder per class); without it, a "
                                     "generated synthetic head-CT phantom set (no download)", file=False)
    labels: Path | None = option(None, "labels CSV (default DATA/labels.csv)")
    id_col: str | None = option(None, "id column of the labels CSV (default: 'id' or the first column)")
    label_col: str | None = option(None, "label column of the labels CSV (default: the other column)")
    class_names: list[str] | None = option(
        None, "names of the classes in the order of their labels: 0/1 labels become A,B (default: the digits; the "
              "Kaggle Head CT set, recognised by its manifest: normal,hemorrhage); text labels and class folders "
              "must be exactly these names", metavar="A,B")
    positive_class: str | None = option(
        None, "of two classes, the one prob, sensitivity and the ROC curve are for (default: label 1 of 0/1 labels; "
              "needed when both are text, e.g. class folders)", metavar="NAME")
    img_size: int | None = option(None, "square input size in px (default: the weights' own input size)", ge=1)
    resize: Resize = option("pad", "pad: keep the aspect ratio, pad with black; squash: stretch")
    crop: bool = option(True, "crop the black border around the head first")
    phantom_n: int = option(200, "images in the synthetic phantom set used without --data", ge=2)
    group_similar: float | None = option(
        GROUP_SIMILAR, "keep images whose 64 px thumbnails correlate >= CORR in one fold (near-duplicates, "
                       "neighbouring slices of one patient; 0 turns it off)", metavar="CORR", zero_is_none=True,
        zero="off", gt=0, le=1)

    def __post_init__(self):
        validate(self)


@dataclass
class TrainConfig:
    """One fit of one model: optimiser, schedule, augmentation."""

    epochs: int = option(20, "training epochs", ge=1)
    batch_size: int = option(32, "images per training step", ge=1)
    optimizer: Optimizer = option("adamw", "optimiser")
    lr: float = option(1e-3, "learning rate (of the head; the backbone's is lr x --backbone-lr-mult)", gt=0)
    momentum: float = option(0.9, "SGD momentum (Nesterov; 0: plain SGD)", ge=0, lt=1)
    weight_decay: float = option(0.05, "weight decay (0: none)", ge=0)
    schedule: Schedule = option("cosine", "learning-rate schedule")
    step_size: int = option(7, "StepLR: epochs between decays", ge=1)
    gamma: float = option(0.1, "StepLR: decay factor", gt=0, le=1)
    warmup_epochs: int = option(1, "cosine: epochs of linear warm-up (0: none)", ge=0)
    flat_share: float = option(0.75, "flat_cos (fastai's fit_flat_cos): share of the steps at the full learning "
                                     "rate before the cosine to 0", ge=0, lt=1)
    freeze_epochs: int = option(0, "train only the head for this many epochs, then all layers", ge=0)
    backbone_lr_mult: float = option(1.0, "backbone learning rate = lr x this (discriminative learning rates; 0 "
                                          "keeps the backbone's weights as loaded)", ge=0)
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy loss", ge=0, lt=1)
    augment: Augment = option("affine", "batched augmentation: flips, or flips + rotation, scale and shift")
    # The ingredients of the public RSNA projects (smallct.data.augmentations): all off by default
    vflip: float = option(0.0, "probability of an upside-down flip per image (0: none)", ge=0, le=1)
    brightness: float = option(0.0, "brightness: add up to +-this x 255 per image (0: none)", ge=0, le=1)
    contrast: float = option(0.0, "contrast: scale each image's spread about its mean by 1 +- up to this (0: none)",
                             ge=0, le=1)
    gauss_noise: float = option(0.0, "std of Gaussian noise added to every value, in 0..255 units (0: none)",
                                ge=0, le=255)
    salt_pepper: float = option(0.0, "share of pixels set to 0 or 255 (salt-and-pepper noise; 0: none)", ge=0,
                                le=1)
    erase: float = option(0.0, "probability per image of one erased (black) rectangle, random erasing / cutout "
                               "(0: none)", ge=0, le=1)
    mixup: float = option(0.0, "mixup: Beta(alpha, alpha) of the mixing weight, mixing targets alike (0: off)",
                          ge=0)
    cutmix: float = option(0.0, "cutmix: Beta(alpha, alpha) of the kept area; with --mixup too, one of the two per "
                                "batch (0: off)", ge=0)
    ema: float = option(0.0, "decay of an exponential moving average of the weights, which is evaluated and saved "
                             "(e.g. 0.999; 0: off)", ge=0, lt=1)
    tta: bool = option(True, "average with the left-right mirror at evaluation")
    amp: bool = option(True, "mixed precision on CUDA (ignored on CPU)")
    compile: bool = option(False, "torch.compile the model for training on CUDA (faster epochs after a compile of "
                                  "about a minute; ignored on CPU)")
    sync_bn: bool = option(False, "under torchrun on CUDA: BatchNorm statistics over every rank's batch (SyncBatchNorm; "
                                  "CUDA only, plain BatchNorm on a CPU)")
    reverse_neighbours: bool = option(True, "with --context: reverse the neighbour order of each training input with "
                                            "probability 1/2 (a series read either way)")

    def __post_init__(self):
        validate(self)


@dataclass
class CVConfig:
    """A whole cross-validation run."""

    arch: str = option("resnet18", "resnet18..resnet152, any torchvision or timm model name")
    weights: str = option("imagenet", "imagenet, none (random initialisation), a PATH to a state dict, or named "
                                      "weights: torchvision's (IMAGENET1K_V2), timm's (resnet50.a1_in1k), "
                                      "hf-hub:ORG/NAME, a tag registered with register_weights, or a lab's file: "
                                      "URL#sha256=HEX (optionally &mean=R,G,B&std=R,G,B&input_size=PX) or a "
                                      "weights.yaml naming url, sha256, mean, std, input_size; downloaded into the "
                                      "torch hub or Hugging Face cache on first use")
    offline: bool = option(False, OFFLINE_HELP, file=False)
    task: Task | None = option(None, "default: from the data (multilabel for a prepared RSNA folder)")
    folds: int = option(5, "cross-validation folds", ge=2)
    repeats: int = option(1, "repeats of the cross-validation (each its own fold draw; repeat 0: that of --seed)", ge=1)
    seed: int = option(0, "seed of the folds, the initialisation and the augmentation", ge=0)
    device: str = option("auto", "auto, cpu or cuda", **DEVICE)
    threads: int | None = option(None, THREADS_HELP, ge=1, file=False)
    out: Path = option(Path("runs/cv"), "run folder; the same --out resumes", file=False)
    workers: int = option(0, "decoding processes (0: every core)", ge=0)
    cache: Store = option("auto", "where training reads the decoded images: memory, disk (the memory-mapped cache; "
                                  "sets larger than memory) or auto (memory up to 512 MiB, counting torchrun's "
                                  "processes on the machine); changes no figure")
    params_source: str | None = option(None, "where tuned settings came from (recorded in results.json)",
                                       cli=False, file=False)
    params_chosen_on: str | None = option(None, "the images the --params settings were chosen or compared on: "
                                                "their data fingerprint, the file's _chosen_on (None: not recorded)",
                                          cli=False, file=False)
    test_curves: bool = option(True, "evaluate the test fold after every epoch for curves.png (--no-test-curves "
                                     "saves that time, about 10%; nothing is chosen on it)")
    context: int = option(0, "2.5D input: each slice with the K slices on each side of it in its series, as channels "
                             "(a folder prepared by smallct.prepare rsna; 0: each slice alone)", ge=0, metavar="K")
    context_channels: ContextChannels = option(
        "window", "with --context: window (each of the 2K+1 slices in --context-window; K=1: three channels) or all "
                  "(every prepared window of every slice, 3 x (2K+1) channels)")
    context_window: str = option("brain", "with --context-channels window: which of the prepared windows",
                                 metavar="NAME")
    smooth: int = option(1, "series smoothing: also report the out-of-fold figures after a centred rolling mean of "
                            "each label over N slices of a series (odd; never across a gap; 1: none)", ge=1,
                         metavar="N")
    fold_parallel: bool = option(False, "under torchrun: train different folds at the same time, one per process (one "
                                        "per GPU), each as a single process would; without it the processes train "
                                        "each fold together (DistributedDataParallel)", file=False)
    tensorboard: bool = option(True, TENSORBOARD_HELP, file=False)
    mlflow: str | None = option(None, MLFLOW_HELP, metavar="URI", file=False, secret=True)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        validate(self)
        if self.smooth % 2 == 0:
            raise ValueError(f"--smooth {self.smooth}: expected an odd number of slices (1: none, 3: a slice and its "
                             "two neighbours)")


# The cross-validation settings, in the groups and order of their flags (cv, nested and tune show them so, and
# best_params.json lists them so).
CV_GROUPS = {
    "data": ["data", "labels", "id_col", "label_col", "class_names", "positive_class", "img_size", "resize", "crop",
             "group_similar", "phantom_n", "task", "context", "context_channels", "context_window"],
    "model": ["arch", "weights", "offline", "freeze_epochs", "backbone_lr_mult"],
    "training": ["epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule", "step_size",
                 "gamma", "warmup_epochs", "flat_share", "label_smoothing", "augment", "vflip", "brightness",
                 "contrast", "gauss_noise", "salt_pepper", "erase", "mixup", "cutmix", "ema", "tta", "amp",
                 "compile", "sync_bn", "reverse_neighbours"],
    "validation and run": ["folds", "repeats", "seed", "device", "threads", "workers", "cache", "out",
                           "test_curves", "smooth", "fold_parallel"],
    "tracking": ["tensorboard", "mlflow"],
}


def _credentials(uri: str) -> tuple[str, str, str, str] | None:
    """``(scheme, user:password, host:port, the rest)`` of ``scheme://user:password@host:port/rest``; ``None``
    without credentials (an ``@`` in the path or query only)."""
    if "://" not in uri or "@" not in uri:
        return None
    scheme, rest = uri.split("://", 1)
    end = min([i for i in map(rest.find, "/?#") if i >= 0], default=len(rest))  # the authority: user:pw@host:port
    credentials, at, host = rest[:end].rpartition("@")
    return (scheme, credentials, host, rest[end:]) if at else None


def uri_password(uri: str) -> str:
    """The password of ``uri``'s ``user:password@`` part (``""`` when there is none)."""
    parts = _credentials(uri)
    return parts[1].partition(":")[2] if parts else ""


def hide_password(uri: str | None) -> str | None:
    """``uri`` with the password of its ``user:password@`` part as ``***`` (as SQLAlchemy shows a URL)."""
    parts = _credentials(uri) if uri else None
    if parts is None:
        return uri
    scheme, credentials, host, tail = parts
    user, colon, _ = credentials.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}{tail}"


def to_dict(cfg: Any) -> dict:
    """A JSON-ready dict of a (nested) config dataclass; a ``secret`` field (the MLflow URI) without its password."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, Path):
            value = str(value)
        elif f.metadata.get("secret"):
            value = hide_password(value)
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


def with_defaults(cls: type, values: dict) -> dict:
    """:func:`to_dict` output ``values`` with the fields it lacks set to their defaults (nested configs alike):
    a ``run.json`` written before a setting existed holds what that setting's default now does."""
    defaults = cls()
    out = dict(values)
    for name, default in to_dict(defaults).items():
        if name not in out:
            out[name] = default
        elif dataclasses.is_dataclass(getattr(defaults, name)) and isinstance(out[name], dict):
            out[name] = with_defaults(type(getattr(defaults, name)), out[name])
    return out
