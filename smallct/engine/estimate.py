"""How long training will take, said before it starts.

Every command that trains (cv, nested, tune, fewshot's fine-tuning, curve) times a few training steps of
its model on its device (:func:`smallct.engine.train.time_training_step`) and prints the expected wall time
of the fits ahead (resnet152 trains at about 2 images/s on a 2-core CPU, so a run can take hours).
"""

from __future__ import annotations

import torch

from smallct.config.run import CVConfig, TrainConfig
from smallct.engine.train import time_training_step

# Architectures that are slow on a CPU (resnet152 trains at about 2 images/s on a 2-core machine).
LARGE_ON_CPU = ("resnet101", "resnet152", "resnet50", "resnext", "wide_resnet", "vit_", "convnext", "efficientnet_b")


def fmt_duration(seconds: float) -> str:
    """A duration for people: ``42 s``, ``12 min``, ``3.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def fit_seconds(per_image: float, train: TrainConfig, n_train: float, n_eval: float, evaluations: float) -> float:
    """Seconds of one fit of ``train.epochs`` epochs on ``n_train`` images and ``evaluations`` forward passes over
    ``n_eval`` images (a forward pass costs about a third of a training step)."""
    return per_image * (train.epochs * n_train + evaluations * n_eval / 3)


def estimate_seconds(model, images, labels, cfg: CVConfig, source, task, device, n_train, n_test,
                     n_fits) -> tuple[float, float]:
    """Expected wall time (s) of ``n_fits`` cross-validation fits and the training rate (images/s), from a few
    timed steps of ``model`` (its weights are restored) on the first of ``images`` (a batch source or a tensor)."""
    y = torch.as_tensor(labels[: cfg.train.batch_size])
    per_image = time_training_step(model, images, y, cfg.train, source.mean, source.std, task, device)
    # the test fold is evaluated after every epoch for the curves, and once at the end, with TTA
    evaluations = (cfg.train.epochs if cfg.test_curves else 0) + 1 + cfg.train.tta
    return fit_seconds(per_image, cfg.train, n_train, n_test, evaluations) * n_fits, 1.0 / per_image


def slow_on_cpu(arch: str, device, seconds: float, rate: float) -> str | None:
    """A hint when ``arch`` will be slow on this CPU (over half an hour, or a large architecture), else None."""
    if device.type == "cpu" and (seconds > 1800 or arch.startswith(LARGE_ON_CPU)):
        smaller = " or ".join(f"--arch {a}" for a in ("resnet18", "tf_efficientnet_lite0") if a != arch)
        return (f"note: {arch} is slow on a CPU ({rate:.1f} images/s here); for a quick answer use a smaller "
                f"architecture ({smaller}), a smaller --img-size, or a GPU.")
    return None
