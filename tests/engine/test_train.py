"""Tests of smallct.engine.train: the fit loop's on-device sums, the NaN guard, and the CUDA-only speed settings."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from smallct.data.transforms import normalize
from smallct.config.run import TrainConfig
from smallct.models.factory import create_model
from smallct.engine.train import fit
from smallct.models.weights import resolve_weights

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _tiny(n: int = 12, size: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 2
    torch.manual_seed(seed)
    model = create_model("resnet18", 2, resolve_weights("resnet18", "none"))
    return model, x, y


def test_fit_epoch_record_equals_loss_and_accuracy_of_the_batch():
    # one batch of every image, an lr too small to move a float32 weight (lr must be > 0) and no augmentation:
    # the epoch's loss and accuracy are those of one train-mode forward pass over the set (BatchNorm batch
    # statistics do not depend on order)
    model, x, y = _tiny()
    cfg = TrainConfig(epochs=1, batch_size=len(x), lr=1e-30, weight_decay=0.0, schedule="constant", augment="none")
    record, = fit(model, x, y, cfg, MEAN, STD, progress=False)
    model.train()
    with torch.no_grad():
        logits = model(normalize(x, MEAN, STD))
    assert record["train_loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert record["train_acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert isinstance(record["train_loss"], float) and isinstance(record["train_acc"], float)


def test_fit_raises_on_a_nan_loss():
    model, x, y = _tiny()
    with torch.no_grad():
        model.fc.bias.fill_(float("nan"))
    cfg = TrainConfig(epochs=1, batch_size=6, augment="none")
    with pytest.raises(FloatingPointError, match="epoch 1"):
        fit(model, x, y, cfg, MEAN, STD, progress=False)


def test_compile_and_cudnn_settings_leave_a_cpu_fit_unchanged():
    benchmark = torch.backends.cudnn.benchmark
    histories, states = [], []
    for compile_ in (False, True):
        model, x, y = _tiny(n=8, seed=1)
        cfg = TrainConfig(epochs=1, batch_size=4, compile=compile_)
        hist = fit(model, x, y, cfg, MEAN, STD, seed=3, device=torch.device("cpu"), progress=False)
        histories.append([(h["train_loss"], h["train_acc"]) for h in hist])
        states.append(model.state_dict())
        assert type(model).__name__ == "ResNet"  # never replaced by a compiled wrapper
    assert histories[0] == histories[1]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert all(math.isfinite(loss) for loss, _ in histories[0])
    assert torch.backends.cudnn.benchmark == benchmark


def test_cv_parser_compile_flag():
    from smallct.cli.commands.cv import config_from_argv

    assert config_from_argv([]).train.compile is False
    assert config_from_argv(["--compile"]).train.compile is True

