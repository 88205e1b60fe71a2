"""Typed settings of the commands built on cross-validation: nested CV (:class:`NestedConfig`), tuning
(:class:`TuneConfig`), few-shot episodes (:class:`FewShotConfig`) and learning curves
(:class:`CurveConfig`). Fields are declared as in :mod:`smallct.config.run`: default and flag help once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from smallct.config.run import (DEVICE, MLFLOW_HELP, OFFLINE_HELP, TENSORBOARD_HELP, THREADS_HELP, CVConfig,
                                DataConfig, TrainConfig, option, to_dict)
from smallct.config.schema import validate

# Figures a nested CV can choose a candidate by (smallct.engine.nested says which way is better).
Select = Literal["accuracy", "balanced_accuracy", "roc_auc", "mean_auc", "log_loss", "weighted_log_loss"]
# Objectives of a study (smallct.tuning.study.OBJECTIVES says their direction and per-epoch figure).
Objective = Literal["roc_auc", "accuracy", "log_loss", "weighted_log_loss"]
Pruner = Literal["median", "hyperband", "none"]
# Embeddings of a frozen backbone (smallct.models.embeddings) and their transform before few-shot methods.
Pooling = Literal["avg", "max", "avgmax", "multiscale"]
Normalization = Literal["none", "l2", "center-l2", "standardize"]
# Per-slice inputs of the sequence model over a series (smallct.sequence; smallct.engine.stacking).
SequenceFeatures = Literal["logits", "embeddings", "both"]

# Fine-tuning on a handful of images (smallct.fewshot, smallct.curve): few epochs, AdamW, cosine.
FINETUNE_DEFAULTS = TrainConfig(epochs=10, batch_size=32, optimizer="adamw", lr=1e-3, weight_decay=0.05,
                                schedule="cosine", warmup_epochs=1, augment="affine", tta=True)


def check_heartbeat(heartbeat_interval: int, grace_period: int) -> None:
    """``ValueError`` unless a trial silent for ``grace_period`` seconds has missed heartbeats (every
    ``heartbeat_interval`` seconds): a grace period that does not exceed the interval fails live trials.
    :class:`TuneConfig` and :func:`smallct.tuning.storage.make_storage` both ask here."""
    if grace_period <= heartbeat_interval:
        raise ValueError(f"--grace-period {grace_period}: must exceed --heartbeat-interval {heartbeat_interval} "
                         "(seconds), or live trials would be failed")


def _finetune_defaults() -> TrainConfig:
    return TrainConfig(**to_dict(FINETUNE_DEFAULTS))


@dataclass
class NestedConfig:
    """A nested cross-validation over named candidate settings."""

    # name -> settings; folds, repeats, seed, out and test_curves are nested's own
    candidates: dict[str, CVConfig] = option(factory=dict, cli=False, file=False)
    inner_folds: int = option(3, "inner cross-validation folds on each outer training part", ge=2)
    select: Select = option("accuracy", "inner pooled figure that chooses the candidate")
    threshold: Literal["inner", "fixed"] = option(
        "inner", "binary tasks: inner chooses the decision threshold on the winner's inner out-of-fold predictions; "
                 "fixed keeps 0.5 (both are reported at 0.5 too)")
    refit: bool = option(True, "train the winner on the whole outer training part; --no-refit averages its inner "
                               "fold models instead (a cross-fitted ensemble: no further fit, no checkpoints)")
    folds: int = option(5, "outer cross-validation folds", ge=2)
    repeats: int = option(1, "repeats of the outer cross-validation", ge=1)
    seed: int = option(0, "seed of the outer and inner folds", ge=0)
    out: Path = option(Path("runs/nested"), "run folder; the same --out resumes", file=False)

    def __post_init__(self):
        validate(self)


@dataclass
class TuneConfig:
    """A whole study: the fixed cross-validation settings, the search space and the study's plumbing."""

    base: CVConfig = field(default_factory=lambda: CVConfig(out=Path("runs/tune")))  # ``base.out``: study folder
    space: dict | None = option(None, cli=False, file=False)  # None: smallct.tuning.space.default_space
    trials: int = option(20, "finished (complete or pruned) trials the study should hold; the same command again "
                             "continues up to this number", ge=1)
    timeout: float | None = option(None, "seconds after which this worker starts no new trial", gt=0)
    storage: str | None = option(None, "Optuna storage: sqlite:///PATH (default OUT/optuna.db), postgresql://..., "
                                       "mysql://..., journal:PATH (several processes on one host), redis://...")
    study: str = option("smallct", "study name in the storage")
    heartbeat_interval: int = option(60, "database storages: seconds between the heartbeats of a running trial",
                                     ge=1)
    grace_period: int = option(180, "database storages: seconds without a heartbeat after which a running trial "
                                    "(of a killed worker) is marked failed and its settings run once more; more "
                                    "than --heartbeat-interval", ge=2)
    resume: bool = option(False, "continue an existing study (error when it is missing)", flag="--resume")
    metric: Objective | None = option(None, "objective, the mean over folds (default roc_auc; weighted_log_loss for "
                                            "multi-label tasks)")
    pruner: Pruner = option("median", "stop trials that fall behind at the same epoch")
    prune_after: int | None = option(None, "epochs (counted over folds) before any pruning (default: half of "
                                           "--epochs; 0: from the first)", ge=0)
    startup_trials: int = option(5, "random trials before TPE sampling, and finished trials before pruning", ge=0)
    worker: int = option(0, "this worker's index (give each worker its own: it varies the sampler seed)", ge=0)
    keep_checkpoints: bool = option(False, "keep every trial's fold checkpoints", flag="--keep-checkpoints")
    report: bool = option(True, "write best_params.json, tables and plots at the end")
    top: int = option(10, "rows of the top-trials table", ge=1)

    def __post_init__(self):
        validate(self)
        check_heartbeat(self.heartbeat_interval, self.grace_period)


@dataclass
class FewShotConfig:
    """A few-shot study: which embeddings, which methods, how many shots and episodes."""

    data: DataConfig = field(default_factory=DataConfig)
    arch: str = option("tf_efficientnet_lite0", "backbone; any torchvision or timm name")
    weights: str = option("imagenet", "imagenet, none (random initialisation) or a PATH")
    offline: bool = option(False, OFFLINE_HELP, file=False)
    shots: list[int] = option(factory=lambda: [1, 5, 10, 20], help="labelled images per class, e.g. 1,5,10,20",
                              ge=1)
    episodes: int = option(100, "episodes per k for proto, linear, knn, labelprop", ge=1)
    finetune_episodes: int = option(20, "episodes per k for finetune", ge=1)
    methods: list[str] = option(factory=lambda: ["proto", "linear", "knn", "labelprop"],
                                help="comma-separated: proto, linear, knn, labelprop (transductive: uses the "
                                     "unlabelled query images), finetune", flag=("--method", "--methods"))
    pool: Pooling = option("max", "embedding pooling: avg = the model's penultimate features; max = the max-pooled "
                                  "last feature map; avgmax = both; multiscale = both, at every stage (timm); max "
                                  "beat avg on Head CT selection episodes (seed 1)")
    flip: bool = option(False, "average each embedding with its left-right mirror's (no consistent gain on Head CT)")
    normalize: Normalization = option(
        "standardize", "embedding transform before the methods; standardize and center-l2 take the mean (and spread) "
                       "from each episode's support images (labelprop: support and query, no labels); l2 uses no "
                       "other image")
    C: float = option(0.1, "linear probe: inverse L2 penalty (fixed, never chosen on query labels)", gt=0)
    knn_k: int = option(5, "knn: neighbours (at most the shots per class)", ge=1)
    finetune: TrainConfig = field(default_factory=_finetune_defaults)
    finetune_img_size: int | None = option(160, "input size for fine-tuning (0: the embedding size)",
                                           zero_is_none=True, zero="the embedding size", ge=1)
    seed: int = option(0, "draws of the episodes (and random initialisation)", ge=0)
    device: str = option("auto", "auto, cpu or cuda", **DEVICE)
    threads: int | None = option(None, THREADS_HELP, ge=1, file=False)
    out: Path = option(Path("runs/fewshot"), "output folder", file=False)

    def __post_init__(self):
        validate(self)


@dataclass
class CurveConfig:
    """A learning curve: sizes, weight sources, methods, and the cross-validation around them."""

    data: DataConfig = field(default_factory=DataConfig)
    arch: str = option("tf_efficientnet_lite0", "backbone; any torchvision or timm name")
    weights: list[str] = option(factory=lambda: ["imagenet", "none"],
                                help="comma-separated weight sources to compare: imagenet, none, PATH")
    offline: bool = option(False, OFFLINE_HELP, file=False)
    sizes: list[int] = option(factory=lambda: [10, 20, 40, 80, 160], help="training images per fold, e.g. "
                                                                          "10,20,40,80,160", ge=1)
    methods: list[str] = option(factory=lambda: ["probe"], flag=("--method", "--methods"),
                                help="probe (linear probe on frozen embeddings, seconds) and/or finetune (one network "
                                     "per n, fold, repeat and weights: about 10-30 s per fit of Lite0 at 160 px on a "
                                     "2-core CPU)")
    folds: int = option(5, "cross-validation folds (smallct.cv's, near-duplicates grouped)", ge=2)
    repeats: int = option(1, "repeated CV (other fold draws)", ge=1)
    pool: Pooling = option(FewShotConfig.pool, "embedding pooling (as smallct.fewshot): avg, max, avgmax, multiscale")
    flip: bool = option(FewShotConfig.flip, "average each embedding with its left-right mirror's")
    normalize: Normalization = option(FewShotConfig.normalize, "embedding transform before the probe")
    C: float = option(FewShotConfig.C, "linear probe: inverse L2 penalty (fixed)", gt=0)
    finetune: TrainConfig = field(default_factory=_finetune_defaults)
    finetune_img_size: int | None = option(160, "input size for fine-tuning (0: the embedding size)",
                                           zero_is_none=True, zero="the embedding size", ge=1)
    seed: int = option(0, "seed of the folds and the draws", ge=0)
    device: str = option("auto", "auto, cpu or cuda", **DEVICE)
    threads: int | None = option(None, THREADS_HELP, ge=1, file=False)
    out: Path = option(Path("runs/curve"), "output folder", file=False)
    tensorboard: bool = option(True, TENSORBOARD_HELP.replace("per-epoch curves per fold, ", ""), file=False)
    mlflow: str | None = option(None, MLFLOW_HELP, metavar="URI", file=False, secret=True)

    def __post_init__(self):
        validate(self)


@dataclass
class SequenceConfig:
    """A sequence model over each series of a finished multi-label RSNA run (``smallct.sequence``,
    :func:`smallct.engine.sequence.run_sequence`)."""

    run: Path | None = option(None, "a finished smallct.cv run folder (multi-label RSNA)", cli=False, file=False)
    out: Path | None = option(None, "the sequence folder (default RUN/sequence); the same folder resumes", file=False)
    strict: bool = option(False, "describe the training series with inner models trained without the test fold "
                                 "(honest; (folds - 1) x folds more CNN fits per repeat) instead of the run's fold "
                                 "models (stacking)")
    features: SequenceFeatures = option("logits", "per-slice inputs: the fold models' six logits, their pooled "
                                                  "embeddings, or both")
    epochs: int = option(60, "training epochs (fixed: nothing is chosen on a test fold)", ge=1)
    hidden: int = option(64, "GRU width per direction (the 1st place of RSNA 2019: 96)", ge=1)
    lr: float = option(3e-3, "Adam learning rate", gt=0)
    batch_chains: int = option(8, "series per training step", ge=1)
    drop: float = option(0.1, "share of slices dropped at random in training", ge=0, lt=1)
    seed: int = option(0, "seed of the sequence models (with repeat and fold) and of the bootstrap", ge=0)
    n_boot: int = option(1000, "bootstrap resamples of patients for the intervals", ge=100)
    device: str = option("auto", "device of the fold models (embeddings, --strict): auto, cpu or cuda; the GRU runs "
                                 "on the CPU", **DEVICE)
    mode: str | None = option(None, "library only: in_fold (deliberately leaky, for tests) overrides --strict",
                              cli=False, file=False)

    def __post_init__(self):
        validate(self)

    @property
    def how(self) -> str:
        """Where the features come from: ``stacking``, ``strict`` or ``in_fold``."""
        return self.mode or ("strict" if self.strict else "stacking")
