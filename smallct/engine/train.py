"""One fit loop, and prediction, on uint8 images read from a batch source.

The images come from a :class:`smallct.data.source.BatchSource` (a tensor in memory for small sets, the
memory-mapped cache for large ones; a fold's images are :meth:`~smallct.data.source.BatchSource.take` of the
set's); each step reads its batch by index, augments it in one batched call and normalises it. No Dataset, no
DataLoader, no image decoding in the loop.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from typing import Callable

import numpy as np
import torch
from torch import nn
from smallct.progress import tqdm

from smallct.config.run import TrainConfig
from smallct.data.augmentations import PER_IMAGE, Mix, augment_batch, mix_batch
from smallct.data.context import reverse_neighbours
from smallct.data.source import BatchSource, as_source
from smallct.data.transforms import augment, normalize
from smallct.engine.ranks import Ranks
from smallct.evaluation.metrics import classification_metrics
from smallct.models.factory import parameter_groups, set_backbone_trainable

# An epoch expected to take longer (its first step's seconds x its steps) gets a bar of its batches under the bar
# of epochs in :func:`fit`, so that a slow model shows that it moves.
BATCH_BAR_SECONDS = 30.0


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU. Asking for ``cuda`` without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available on this machine (use --device cpu or auto)")
    return torch.device(device)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """torch's intra-op thread count set to ``n`` inside the block (None: left as it is), restored after.

    The figures of a run depend on it (the order in which torch adds up), so runs record it
    (``run.json``) and a run resumes only at the thread count it started with.
    """
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def with_threads(threads_of: Callable = lambda cfg: cfg.threads):
    """Decorate a command's library function ``f(cfg, ...)``: it runs at ``threads_of(cfg)`` torch threads
    (:func:`torch_threads`), the ``--threads`` of cv, nested, tune, fewshot and curve."""
    def decorate(run):
        @functools.wraps(run)
        def run_with_threads(cfg, *args, **kwargs):
            with torch_threads(threads_of(cfg)):
                return run(cfg, *args, **kwargs)
        return run_with_threads
    return decorate


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg.lr, cfg.backbone_lr_mult)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "radam":  # Rectified Adam, with AdamW's decoupled weight decay
        return torch.optim.RAdam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, decoupled_weight_decay=True)
    raise ValueError(f"optimizer {cfg.optimizer!r}: expected sgd, adam, adamw or radam")


def lr_factor(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total`` optimiser steps.

    step: StepLR (``gamma`` every ``step_size`` epochs); cosine: linear warm-up over
    ``warmup_epochs`` then cosine to 0; onecycle: from lr/25 up to lr over the first 30% then
    cosine down to lr/1e4; flat_cos (fastai's ``fit_flat_cos``): lr for the first ``flat_share`` of the
    steps, then cosine to 0; constant.
    """
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.gamma ** ((step // steps_per_epoch) // max(cfg.step_size, 1))
    if cfg.schedule == "cosine":
        warm = min(cfg.warmup_epochs * steps_per_epoch, total // 2)
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(total - warm, 1)))
    if cfg.schedule == "onecycle":
        up = max(int(0.3 * total), 1)
        if step < up:
            return 1 / 25 + (1 - 1 / 25) * 0.5 * (1 - math.cos(math.pi * step / up))
        return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * (step - up) / max(total - up, 1)))
    if cfg.schedule == "flat_cos":
        flat = int(cfg.flat_share * total)
        if step < flat:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - flat) / max(total - flat, 1)))
    raise ValueError(f"schedule {cfg.schedule!r}: expected step, cosine, onecycle, constant or flat_cos")


def loss_function(task: str, label_smoothing: float, label_weights=None) -> nn.Module:
    """BCE for multi-label, else cross-entropy: of class indices, or of (B, C) class probabilities (mixed targets;
    label smoothing applies to both).

    ``label_weights`` (multi-label): one weight per label, scaled to a mean of 1 so that the loss is each image's
    weighted average over its labels, averaged over images: the RSNA metric's form
    (:func:`smallct.datasets.rsna.label_weights`).
    """
    if task == "multilabel":
        if label_weights is None:
            return nn.BCEWithLogitsLoss()
        w = torch.as_tensor(label_weights, dtype=torch.float32)
        return nn.BCEWithLogitsLoss(weight=w / w.mean())
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


def soft_targets(y: torch.Tensor, task: str, num_outputs: int) -> torch.Tensor:
    """Float targets (B, C) that mixup and cutmix can mix: one-hot class indices, or the 0/1 labels of multi-label."""
    return y.float() if task == "multilabel" else nn.functional.one_hot(y, num_outputs).float()


def _mixed_step(logits: torch.Tensor, yb: torch.Tensor, mix: Mix, task: str, loss_fn: nn.Module):
    """Loss on the mixed targets, and the labels the training accuracy counts: each image's main class (multi-label:
    each label where its mixed target is at least 1/2)."""
    targets = mix.targets(soft_targets(yb, task, logits.shape[1]))
    hard = (targets >= 0.5).float() if task == "multilabel" else targets.argmax(1)
    return loss_fn(logits.float(), targets), hard


def ema_decay(decay: float, step: int) -> float:
    """The decay of EMA update ``step`` (0 for the first): ``min(decay, (1 + step) / (10 + step))``, so that the
    average forgets its random or pretrained start quickly (the warm-up of TensorFlow's ExponentialMovingAverage)."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model`` for every parameter; buffers (BatchNorm running statistics and
    counts) copied from ``model``."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def slow_epoch(step_seconds: float, steps_per_epoch: int, threshold: float | None = None) -> bool:
    """Whether an epoch of ``steps_per_epoch`` steps of ``step_seconds`` each is expected to take over ``threshold``
    seconds (default :data:`BATCH_BAR_SECONDS`, read at the call): :func:`fit` then shows a bar of its batches."""
    limit = BATCH_BAR_SECONDS if threshold is None else threshold
    return steps_per_epoch > 1 and step_seconds * steps_per_epoch > limit


def backbone_frozen(cfg: TrainConfig, epoch: int) -> bool:
    """Whether the backbone is kept as it is in ``epoch`` (0-based): head-only epochs, or a backbone rate of 0."""
    return epoch < cfg.freeze_epochs or cfg.backbone_lr_mult == 0


def _probs(logits: torch.Tensor, task: str) -> torch.Tensor:
    return torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=1)


def autocast(device: torch.device, enabled: bool):
    """bfloat16 (else float16) autocast on CUDA when ``enabled`` (``--amp``); float32 on a CPU."""
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def predict_proba(model: nn.Module, x: BatchSource | torch.Tensor, mean, std, task: str = "binary",
                  tta: bool = False, batch_size: int = 64, device: torch.device | None = None,
                  amp: bool = True) -> np.ndarray:
    """Class probabilities (N, C) (sigmoid per label for multi-label) of uint8 images (N, 3, H, W): a batch source
    or a tensor.

    With ``tta`` the probabilities of the image and its left-right mirror are averaged.
    """
    device = device or next(model.parameters()).device
    model.eval()
    out = []
    for xb in as_source(x).in_batches(batch_size, device):
        xb = normalize(xb.to(device, non_blocking=True), mean, std)
        with autocast(device, amp):
            p = _probs(model(xb).float(), task)
            if tta:
                p = (p + _probs(model(xb.flip(-1)).float(), task)) / 2
        out.append(p.float().cpu())
    return torch.cat(out).numpy()


def fit(model: nn.Module, x: BatchSource | torch.Tensor, y: torch.Tensor, cfg: TrainConfig, mean, std,
        task: str = "binary", seed: int = 0, device: torch.device | None = None,
        val: tuple[BatchSource | torch.Tensor, torch.Tensor] | None = None,
        on_epoch: Callable[[dict], None] | None = None, desc: str = "train", progress: bool = True,
        label_weights=None, ranks: Ranks = Ranks()) -> list[dict]:
    """Train ``model`` in place on uint8 images ``x`` (N, 3, H, W) and labels ``y``.

    ``x`` is a batch source, usually a set's source and the training rows (``source.take(train)``), or a tensor;
    each step reads its batch from it by index (a disk source reads ahead). ``y`` is (N,) int64 class indices, or
    (N, L) 0/1 for multi-label. ``val`` images are only
    evaluated (loss and accuracy per epoch, for the training-curves plot); nothing is chosen on
    them: the returned model is the one after the last epoch (with ``cfg.ema``, the average). ``on_epoch``
    receives each epoch's record (a tuner reports it to its pruner and may raise to stop). ``label_weights``: the
    multi-label loss's weight per label (RSNA: ``any`` x2, :func:`smallct.datasets.rsna.label_weights`). Returns
    one record per epoch.

    With ``cfg.ema`` the per-epoch evaluation uses the moving average of the weights, and ``model`` ends up holding
    it. A frozen backbone (:func:`backbone_frozen`) keeps its BatchNorm running statistics. A 2.5D source
    (:mod:`smallct.data.context`) has its neighbour order reversed at random (``cfg.reverse_neighbours``). When the
    first step says an epoch will take long (:func:`slow_epoch`), each epoch also shows a bar of its batches.

    ``ranks``: the processes that train this model together (torchrun; :class:`smallct.engine.ranks.Ranks`): each
    takes its shard of every global batch of ``cfg.batch_size`` x world images (the learning-rate schedule counts
    global steps), gradients are averaged by DistributedDataParallel, and every figure comes from all ranks' images.
    """
    device = device or torch.device("cpu")
    model.to(device)
    forward = model
    model.to(memory_format=torch.channels_last)  # NHWC: faster on CUDA, and on CPU too (Lite0 about 1.4x)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels once
        if cfg.compile:
            forward = torch.compile(model)  # shares the parameters; ``model`` (and its state_dict) stay plain
    x, y = as_source(x), y.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)  # the order: the same on every rank
    draws = ranks.augment_generator(seed, generator)  # augmentation and mixup: this rank's own
    n = len(x)
    bs = ranks.per_rank_batch(cfg.batch_size, n)
    steps_per_epoch = ranks.steps_per_epoch(n, bs)  # never a last batch of 1 (BatchNorm)
    total = steps_per_epoch * cfg.epochs
    optimizer = make_optimizer(model, cfg)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    loss_fn = loss_function(task, cfg.label_smoothing, label_weights).to(device)
    ema = copy.deepcopy(model).requires_grad_(False) if cfg.ema > 0 else None
    ingredients = {k: getattr(cfg, k) for k in PER_IMAGE}
    reverse = cfg.reverse_neighbours and x.slice_channels > 0
    history = []
    step = 0
    bar = tqdm(range(cfg.epochs), desc=desc, unit="epoch", disable=not progress, leave=False)
    slow = None  # whether an epoch is slow (a bar of its batches), decided by the time of step ``timed``:
    timed = int(forward is not model)  # the first, or a compiled model's second (its first step compiles)
    for epoch in bar:
        start = time.perf_counter()
        model.train()  # then the freeze: a frozen backbone's BatchNorm layers stay in eval mode
        set_backbone_trainable(model, not backbone_frozen(cfg, epoch))
        if ranks.distributed and (epoch == 0 or backbone_frozen(cfg, epoch - 1) != backbone_frozen(cfg, epoch)):
            forward = ranks.wrap(model, device)  # DDP reduces the parameters that train now
            if device.type == "cuda" and cfg.compile:
                forward = torch.compile(forward)  # DDP's own graph breaks at its buckets (DDPOptimizer)
        if slow is False and epoch > 0 and backbone_frozen(cfg, epoch - 1) and not backbone_frozen(cfg, epoch):
            slow, timed = None, 0  # head-only steps were timed: a step of the whole network decides again
        order = torch.randperm(n, generator=generator, device=device)
        steps = ranks.shard(order, bs, steps_per_epoch)  # this rank's rows of each step, and its loss's weight
        host = order.cpu()  # the source reads by host indices: one copy an epoch (none on a CPU), no sync a step
        # read ahead; closed with the epoch, or when a step fails
        images = x.batches([idx for idx, _ in ranks.shard(host, bs, steps_per_epoch)], device)
        # sums stay on the device: no host-device synchronisation inside the epoch
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        batches = _batch_bar(desc, epoch, cfg.epochs, steps_per_epoch, 0) if slow else None
        try:  # the batches read ahead are dropped with the epoch, or when a step fails
            for b in range(steps_per_epoch):
                step_start = time.perf_counter()
                idx, share = steps[b]
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * lr_factor(cfg, step, total, steps_per_epoch)
                xb = next(images).float()
                if reverse:  # a 2.5D input's slices read either way along the series
                    xb = reverse_neighbours(xb, x.slice_channels, draws)
                xb = augment(xb, cfg.augment, draws)
                xb = augment_batch(xb, draws, **ingredients)
                xb, mix = mix_batch(xb, cfg.mixup, cfg.cutmix, draws)
                xb = normalize(xb, mean, std)
                xb = xb.contiguous(memory_format=torch.channels_last)
                yb = y[idx]
                with autocast(device, cfg.amp):
                    logits = forward(xb)
                    if mix is None:
                        loss, counted = loss_fn(logits.float(), yb.float() if task == "multilabel" else yb), yb
                    else:
                        loss, counted = _mixed_step(logits, yb, mix, task, loss_fn)
                optimizer.zero_grad(set_to_none=True)
                (loss if share == 1 else loss * share).backward()  # share: an uneven last global batch
                optimizer.step()
                if ema is not None:
                    update_ema(ema, model, ema_decay(cfg.ema, step))
                step += 1
                total_loss += loss.detach() * len(idx)
                correct += _correct(logits.detach(), counted, task)
                seen += len(idx)
                if slow is None and b == timed:
                    slow = progress and slow_epoch(time.perf_counter() - step_start, steps_per_epoch)
                    batches = _batch_bar(desc, epoch, cfg.epochs, steps_per_epoch, b + 1) if slow else None
                elif batches is not None:
                    batches.update()
            if batches is not None:
                batches.close()
        finally:
            images.close()
        # every rank's images: sums of sums, never an average of the ranks' figures
        total_loss, correct, seen = ranks.total(torch.stack([total_loss, correct, correct.new_tensor(seen)])).tolist()
        if not math.isfinite(total_loss):  # a NaN or inf in any step carries into the sum
            raise FloatingPointError(f"loss is {total_loss / seen} at epoch {epoch + 1}: lower the learning rate")
        record = {"epoch": epoch + 1, "train_loss": total_loss / seen, "train_acc": correct / seen,
                  "lr": optimizer.param_groups[-1]["lr"]}
        ranks.broadcast_state(model if ema is None else ema)  # BatchNorm statistics drift apart: rank 0's
        if val is not None:
            record.update(_evaluate(model if ema is None else ema, val[0], val[1], mean, std, task, loss_fn, device,
                                    cfg.amp, ranks))
        record["seconds"] = time.perf_counter() - start
        history.append(record)
        bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k in ("train_loss", "val_loss", "val_acc")})
        if on_epoch is not None:
            on_epoch(record)
    if ema is not None:  # what is evaluated, predicted and saved from here on
        model.load_state_dict(ema.state_dict())
    return history


def _batch_bar(desc: str, epoch: int, epochs: int, steps: int, done: int) -> tqdm:
    """The bar of one slow epoch's batches, under the bar of epochs; ``done`` steps already taken."""
    return tqdm(total=steps, initial=done, desc=f"{desc} epoch {epoch + 1}/{epochs}", unit="batch", leave=False)


def _correct(logits: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """Correct predictions in a batch, as a 0-d tensor on the logits' device (fraction of labels for multi-label)."""
    if task == "multilabel":
        return ((logits > 0).float() == y.float()).float().mean(dim=1).sum()
    return (logits.argmax(1) == y).sum().float()


def _n_correct(logits: torch.Tensor, y: torch.Tensor, task: str) -> float:
    return _correct(logits, y, task).item()


@torch.no_grad()
def _evaluate(model, x, y, mean, std, task, loss_fn, device, amp, ranks: Ranks = Ranks()) -> dict:
    """Loss, accuracy and (single-label) ROC AUC of ``model`` on the images ``x``, from the logits of all the images
    (with several ranks: each rank's part, gathered)."""
    model.eval()
    logits = []
    x = as_source(x)
    for xb in (x.take(ranks.part(len(x))) if ranks.distributed else x).in_batches(64, device):
        with autocast(device, amp):
            logits.append(model(normalize(xb.to(device), mean, std)).float())
    logits = ranks.gather(torch.cat(logits)).to(device)
    if not torch.isfinite(logits).all():  # a diverged model: say so, rather than fail on NaN in a metric
        raise FloatingPointError("the model's outputs are NaN or infinite after this epoch: lower the learning rate")
    y = y.to(device)
    loss = loss_fn(logits, y.float() if task == "multilabel" else y).item()
    out = {"val_loss": loss, "val_acc": _n_correct(logits, y, task) / len(y)}
    if task != "multilabel":  # ROC AUC per epoch: the figure a tuner's pruner follows (smallct.tune)
        probs = torch.softmax(logits, dim=1).cpu().numpy()
        out["val_auc"] = classification_metrics(y.cpu().numpy(), probs)["roc_auc"]
    return out
