"""Fine-tuning a whole network on a few images (few-shot episodes, learning-curve fits), and its cost.

Each fit builds ``arch`` from its weight source, trains it on the given images
(:func:`smallct.engine.train.fit`, settings :data:`smallct.config.studies.FINETUNE_DEFAULTS` unless told
otherwise) and predicts the others. :func:`seconds_per_image` times a few steps first, so the command can
say how long its fits will take.
"""

from __future__ import annotations

import numpy as np
import torch

from smallct.config.run import TrainConfig
from smallct.data.source import BatchSource, as_source
from smallct.engine.estimate import fit_seconds, time_training_step
from smallct.engine.train import fit, predict_proba
from smallct.models.factory import create_model


def finetune_predict(arch: str, source, images: BatchSource | torch.Tensor, labels: np.ndarray, support: np.ndarray,
                     query: np.ndarray, n_classes: int, cfg: TrainConfig, seed: int,
                     device: torch.device) -> np.ndarray:
    """Class probabilities (Nq, C) of ``arch`` initialised from ``source`` and trained on the support images."""
    torch.manual_seed(seed)
    model = create_model(arch, n_classes, source)
    images = as_source(images)
    fit(model, images.take(support), torch.as_tensor(labels[support]), cfg, source.mean, source.std, "binary"
        if n_classes == 2 else "multiclass", seed=seed, device=device, progress=False)
    return predict_proba(model, images.take(query), source.mean, source.std, "multiclass", cfg.tta, device=device,
                         amp=cfg.amp)


def seconds_per_image(arch: str, source, images: BatchSource | torch.Tensor, labels: np.ndarray, n_classes: int,
                      cfg: TrainConfig, device: torch.device) -> float:
    """Seconds per training image of one fine-tuning step, timed over a few steps (weights restored)."""
    model = create_model(arch, n_classes, source)
    batch = min(cfg.batch_size, len(images))
    return time_training_step(model, as_source(images), torch.as_tensor(labels[:batch]), cfg, source.mean,
                              source.std, "multiclass", device)


def finetune_fit_seconds(per_image: float, cfg: TrainConfig, n_train: int, n_eval: int) -> float:
    """Expected seconds of one fine-tuning fit on ``n_train`` images and its prediction of ``n_eval`` images
    (TTA doubles the prediction)."""
    return fit_seconds(per_image, cfg, n_train, n_eval, evaluations=1 + cfg.tta)
