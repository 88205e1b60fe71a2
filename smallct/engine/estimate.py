"""How long training will take, said before it starts.

Every command that trains (cv, nested, tune, fewshot's fine-tuning, curve) times a few training steps of
its model on its device (:func:`time_training_step`) and prints the expected wall time
of the fits ahead (resnet152 trains at about 2 images/s on a 2-core CPU, so a run can take hours).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from smallct.config.run import CVConfig, TrainConfig
from smallct.data.source import BatchSource, as_source
from smallct.data.transforms import normalize
from smallct.engine.train import autocast, loss_function

# Images of the warm-up step and of the timed step of :func:`time_training_step` on a CPU; and the seconds within
# which it times the training batch too (it is then cheap, and says more).
TIMING_BATCH_CPU = 4
FULL_BATCH_SECONDS = 5.0
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


def timing_batch(cfg: TrainConfig, n: int, device: torch.device) -> int:
    """Images per timed step: a small batch on a CPU (:data:`TIMING_BATCH_CPU`), where a full batch of a large
    model takes many seconds; the training batch on a GPU, where it takes milliseconds."""
    return min(cfg.batch_size, n, TIMING_BATCH_CPU if device.type == "cpu" else n)


def time_training_step(model: nn.Module, x: BatchSource | torch.Tensor, y: torch.Tensor, cfg: TrainConfig, mean, std,
                       task: str, device: torch.device, steps: int = 1) -> float:
    """Seconds per training image, timed over ``steps`` forward/backward steps after one warm-up step, on
    :func:`timing_batch` images (resnet152 at 224 px on a CPU: two steps of 4 images, seconds rather than a
    minute). When a warm-up and a timed step of the training batch would take under :data:`FULL_BATCH_SECONDS`
    (small images, a small model), they are taken too and give the time: there a step's fixed costs weigh, and a
    small batch would say several times too much (resnet18 at 32 px: 52 ms an image in batches of 4, 9 in 32).

    The model's weights are restored afterwards, so the estimate does not change the run.
    """
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.to(device, memory_format=torch.channels_last).train()  # as in fit
    loss_fn = loss_function(task, 0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    def per_image(bs: int) -> float:
        xb = normalize(as_source(x).head(bs).to(device), mean, std).contiguous(memory_format=torch.channels_last)
        yb = y[:bs].to(device)
        times = []
        for _ in range(steps + 1):  # the first: a warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with autocast(device, cfg.amp):
                loss = loss_fn(model(xb).float(), yb.float() if task == "multilabel" else yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return float(np.median(times[1:])) / bs

    small, full = timing_batch(cfg, len(x), device), min(cfg.batch_size, len(x))
    seconds = per_image(small)
    if full > small and (steps + 1) * seconds * full <= FULL_BATCH_SECONDS:
        seconds = per_image(full)
    model.load_state_dict(state)
    return seconds
