"""Tests of smallct.engine.train: the fit loop's on-device sums, the NaN guard, the CUDA-only speed settings, the
RSNA projects' ingredients (RAdam, flat_cos, mixup / cutmix targets, EMA) and a frozen backbone's BatchNorm."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from torch import nn

from smallct.data.transforms import normalize
from smallct.config.run import CVConfig, DataConfig, TrainConfig
from smallct.models.factory import create_model
from smallct.engine import train
from smallct.engine import estimate
from smallct.engine.estimate import TIMING_BATCH_CPU, estimate_seconds, fit_seconds, time_training_step, timing_batch
from smallct.engine.train import ema_decay, fit, lr_factor, make_optimizer, slow_epoch, update_ema
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


def test_multilabel_loss_is_the_metric_form_of_the_label_weights():
    # one full batch, an lr too small to move a weight: the epoch loss is each image's weighted average of its
    # six label losses (any x2), averaged over images: the RSNA metric on logits (a mutant without the weights,
    # or without their scaling to a mean of 1, gives another number)
    from smallct.datasets.rsna import WEIGHTS
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (8, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = (torch.rand(8, 6, generator=g) < 0.3).long()
    torch.manual_seed(0)
    model = create_model("resnet18", 6, resolve_weights("resnet18", "none"))
    cfg = TrainConfig(epochs=1, batch_size=len(x), lr=1e-30, weight_decay=0.0, schedule="constant", augment="none")
    record, = fit(model, x, y, cfg, MEAN, STD, task="multilabel", progress=False, label_weights=WEIGHTS)
    model.train()
    with torch.no_grad():
        per = F.binary_cross_entropy_with_logits(model(normalize(x, MEAN, STD)), y.float(), reduction="none")
    w = torch.tensor(WEIGHTS)
    expected = ((per * w).sum(1) / w.sum()).mean().item()
    assert record["train_loss"] == pytest.approx(expected, rel=1e-5)
    assert abs(per.mean().item() - expected) > 1e-4  # the unweighted loss differs


def test_fit_reverses_the_neighbours_of_a_2_5d_input_only():
    # the same seed, with and without --reverse-neighbours: a context source trains on other inputs (a mutant that
    # never reverses gives equal losses); a plain source is untouched by the flag (no extra draw either)
    import numpy as np
    from smallct.data.context import Context
    from smallct.data.neighbours import Neighbours
    from smallct.data.source import MemorySource

    g = torch.Generator().manual_seed(2)
    x = MemorySource(torch.randint(0, 256, (12, 3, 32, 32), generator=g, dtype=torch.uint8))
    rows = np.arange(12)
    ctx = Context(1).source(x, Neighbours(np.maximum(rows - 1, 0), np.minimum(rows + 1, 11)))
    y = torch.arange(12) % 2

    def loss(images, reverse):
        torch.manual_seed(0)
        model = create_model("resnet18", 2, resolve_weights("resnet18", "none"))
        cfg = TrainConfig(epochs=2, batch_size=6, augment="none", reverse_neighbours=reverse)
        return [r["train_loss"] for r in fit(model, images, y, cfg, MEAN, STD, progress=False)]

    assert loss(ctx, True) != loss(ctx, False)
    assert loss(x, True) == loss(x, False)


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



def _bn_stats(model) -> torch.Tensor:
    return model.layer1[0].bn1.running_mean.clone()  # a BatchNorm layer of the backbone


def test_a_frozen_backbone_keeps_its_batchnorm_statistics_and_then_learns():
    model, x, y = _tiny(n=8)
    before, conv = _bn_stats(model), model.conv1.weight.detach().clone()
    cfg = TrainConfig(epochs=1, batch_size=4, freeze_epochs=1, augment="none")
    fit(model, x, y, cfg, MEAN, STD, progress=False)
    assert torch.equal(_bn_stats(model), before) and torch.equal(model.conv1.weight, conv)
    assert model.layer1[0].bn1.num_batches_tracked.item() == 0
    cfg = TrainConfig(epochs=2, batch_size=4, freeze_epochs=1, augment="none")  # epoch 2 trains everything
    fit(model, x, y, cfg, MEAN, STD, progress=False)
    assert not torch.equal(_bn_stats(model), before) and not torch.equal(model.conv1.weight, conv)
    assert model.layer1[0].bn1.training  # unfrozen: train mode again
    model, x, y = _tiny(n=8)
    before = _bn_stats(model)
    fit(model, x, y, TrainConfig(epochs=1, batch_size=4, backbone_lr_mult=0.0, augment="none"), MEAN, STD,
        progress=False)
    assert torch.equal(_bn_stats(model), before)  # a backbone rate of 0 keeps it as loaded, statistics too


def test_radam_has_decoupled_weight_decay_and_trains():
    model, x, y = _tiny(n=8)
    optimizer = make_optimizer(model, TrainConfig(optimizer="radam", weight_decay=0.1))
    assert isinstance(optimizer, torch.optim.RAdam) and optimizer.defaults["decoupled_weight_decay"]
    history = fit(model, x, y, TrainConfig(epochs=2, batch_size=4, optimizer="radam", lr=1e-3), MEAN, STD,
                  progress=False)
    assert all(math.isfinite(h["train_loss"]) for h in history)


def test_flat_cos_is_flat_for_its_share_of_the_steps_then_a_cosine_to_zero():
    cfg = TrainConfig(schedule="flat_cos", flat_share=0.75)
    factors = [lr_factor(cfg, step, 100, 10) for step in range(100)]
    assert factors[:75] == [1.0] * 75
    assert all(a > b for a, b in zip(factors[75:], factors[76:]))  # strictly down after the flat part
    assert factors[-1] < 0.005 and factors[75 + 12] == pytest.approx(0.5, abs=0.07)  # half way: about 1/2
    assert lr_factor(TrainConfig(schedule="flat_cos", flat_share=0.0), 0, 100, 10) == 1.0


def test_ema_follows_its_formula_and_is_what_fit_returns():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    start = [p.detach().clone() for p in ema.parameters()]
    model[1].running_mean.fill_(0.3)
    update_ema(ema, model, 0.9)
    for e, s0, p in zip(ema.parameters(), start, model.parameters()):
        torch.testing.assert_close(e, 0.9 * s0 + 0.1 * p)
    assert torch.equal(ema[1].running_mean, model[1].running_mean)  # buffers copied
    assert [ema_decay(0.999, t) for t in (0, 1, 10_000)] == [0.1, 2 / 11, 0.999]

    # in fit: the weights it leaves are the average of every step's, not the last step's
    raws, runs = [], {}
    for decay in (0.0, 0.9):
        model, x, y = _tiny(n=8)
        init = {k: v.clone() for k, v in model.state_dict().items()}
        cfg = TrainConfig(epochs=2, batch_size=4, ema=decay, augment="none", schedule="constant", lr=1e-2)
        runs[decay] = fit(model, x, y, cfg, MEAN, STD, progress=False, val=(x, y))
        raws.append(model.state_dict())
    plain, averaged = raws
    moved = [k for k in plain if plain[k].is_floating_point() and not torch.equal(plain[k], averaged[k])]
    assert "fc.weight" in moved and "conv1.weight" in moved  # the EMA weights differ from the raw ones
    assert all(torch.equal(plain[k], averaged[k]) for k in plain if "running" in k)  # BatchNorm buffers: the raw
    assert [h["train_loss"] for h in runs[0.0]] == [h["train_loss"] for h in runs[0.9]]  # the same training
    assert runs[0.0][-1]["val_loss"] != runs[0.9][-1]["val_loss"]  # evaluated on the average
    assert not torch.equal(init["fc.weight"], averaged["fc.weight"])


@pytest.mark.parametrize("task, labels", [("binary", 2), ("multilabel", 3)])
def test_mixup_and_cutmix_train_on_mixed_targets(task, labels):
    model, x, _ = _tiny(n=8)
    model = create_model("resnet18", labels, resolve_weights("resnet18", "none"))
    y = torch.arange(8) % 2 if task == "binary" else (torch.rand(8, labels, generator=torch.Generator()) > 0.5).long()
    cfg = TrainConfig(epochs=1, batch_size=4, mixup=0.4, cutmix=1.0, label_smoothing=0.1)
    record, = fit(model, x, y, cfg, MEAN, STD, task=task, progress=False, val=(x, y))
    assert math.isfinite(record["train_loss"]) and 0 <= record["train_acc"] <= 1


EVERY_INGREDIENT = dict(optimizer="radam", schedule="flat_cos", flat_share=0.5, vflip=0.5, brightness=0.2,
                        contrast=0.2, gauss_noise=5.0, salt_pepper=0.01, erase=0.5, mixup=0.4, cutmix=1.0, ema=0.99,
                        label_smoothing=0.1)


def test_a_cv_run_with_every_ingredient_on_trains_and_records_them_in_run_json(phantom_dir, tmp_path):
    import json

    from smallct.engine.cv import run_cv

    train = TrainConfig(epochs=2, batch_size=8, tta=False, **EVERY_INGREDIENT)
    cfg = CVConfig(arch="resnet18", weights="none", folds=2, out=tmp_path / "run", workers=1, device="cpu",
                   data=DataConfig(data=phantom_dir, img_size=32), train=train)
    result = run_cv(cfg, progress=False, log=lambda *a: None)
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["config"]["train"]
    assert {k: recorded[k] for k in EVERY_INGREDIENT} == EVERY_INGREDIENT
    assert result.oof["prob"].between(0, 1).all() and len(result.history) == 4


def _images_per_forward(model) -> list[int]:
    """The batch sizes ``model`` is called with from now on."""
    seen = []
    model.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
    return seen


def test_the_duration_estimate_times_one_small_batch_after_one_warm_up_step(monkeypatch):
    # 0.3.0 timed three training batches (32 images each; resnet152 at 224 px: a minute before the first line): a
    # mutant timing the training batch, or more than one step after the warm-up, calls the model with more images.
    # A budget of 0 s for the training batch makes this tiny model as slow as resnet152 is on a CPU.
    monkeypatch.setattr(estimate, "FULL_BATCH_SECONDS", 0.0)
    model, x, y = _tiny(n=32)
    seen = _images_per_forward(model)
    cfg = CVConfig(train=TrainConfig(epochs=3, batch_size=32, tta=True))
    source = resolve_weights("resnet18", "none")
    seconds, rate = estimate_seconds(model, x, y.numpy(), cfg, source, "binary", torch.device("cpu"), n_train=24,
                                     n_test=8, n_fits=2)
    assert seen == [TIMING_BATCH_CPU, TIMING_BATCH_CPU] == [4, 4]  # one warm-up step, one timed step
    assert rate > 0 and seconds == pytest.approx(2 * fit_seconds(1 / rate, cfg.train, 24, 8, 3 + 1 + 1))
    seen.clear()
    assert time_training_step(model, x, y, TrainConfig(batch_size=2), MEAN, STD, "binary", torch.device("cpu")) > 0
    assert seen == [2, 2]  # never more than the training batch


def test_a_fast_model_is_timed_on_its_training_batch_too(monkeypatch):
    # where a warm-up and a timed training batch fit in the budget, they are taken (small images: a step's fixed
    # costs weigh, and 4 images would say several times too much); a mutant that never does sees [4, 4]
    monkeypatch.setattr(estimate, "FULL_BATCH_SECONDS", 1e9)
    model, x, y = _tiny(n=32)
    seen = _images_per_forward(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert time_training_step(model, x, y, TrainConfig(batch_size=16), MEAN, STD, "binary", torch.device("cpu")) > 0
    assert seen == [4, 4, 16, 16]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # the weights restored


def test_the_timed_batch_is_small_on_a_cpu_and_the_training_batch_on_a_gpu():
    cfg = TrainConfig(batch_size=32)
    assert timing_batch(cfg, 100, torch.device("cpu")) == 4 and timing_batch(cfg, 3, torch.device("cpu")) == 3
    assert timing_batch(cfg, 100, torch.device("cuda")) == 32 and timing_batch(cfg, 20, torch.device("cuda")) == 20


def test_an_epoch_is_slow_when_its_steps_together_take_longer_than_the_threshold():
    assert slow_epoch(2.0, 20, threshold=30) and not slow_epoch(1.0, 20, threshold=30)  # 40 s, 20 s an epoch
    assert not slow_epoch(100.0, 1, threshold=30)  # one step: a bar of one batch tells nothing
    assert slow_epoch(1.0, 31) and not slow_epoch(1.0, 29)  # the default threshold: 30 s


@pytest.mark.parametrize("freeze_epochs, decisions", [(0, 1), (1, 2)])
def test_the_first_step_of_the_whole_network_decides_again_after_head_only_epochs(freeze_epochs, decisions,
                                                                                   monkeypatch):
    # a head-only step is far quicker than a step of the whole network: timed alone, it would hide the bar of
    # every slow epoch after the freeze (mutant caught: one decision for the whole fit)
    timed = []
    monkeypatch.setattr(train, "slow_epoch", lambda seconds, steps, threshold=None: timed.append(seconds) or False)
    model, x, y = _tiny(n=12)
    fit(model, x, y, TrainConfig(epochs=3, batch_size=4, freeze_epochs=freeze_epochs, augment="none"), MEAN, STD,
        desc="fold 1/2")
    assert len(timed) == decisions


@pytest.mark.parametrize("threshold", [0.0, 1e9])
def test_a_slow_epoch_shows_a_bar_of_its_batches_under_the_bar_of_epochs(threshold, monkeypatch, capsys):
    # the threshold injected: 0 s makes every epoch slow, 1e9 s none; a mutant that never (or always) shows the
    # bar fails one of the two
    monkeypatch.setattr(train, "BATCH_BAR_SECONDS", threshold)
    model, x, y = _tiny(n=12)
    cfg = TrainConfig(epochs=2, batch_size=4, augment="none")
    fit(model, x, y, cfg, MEAN, STD, desc="fold 1/2")
    lines = capsys.readouterr().err.splitlines()  # no terminal: each bar writes whole lines
    batch_lines = [line for line in lines if "batch" in line]
    assert any(line.startswith("fold 1/2:") and "epoch" in line for line in lines)  # the bar of epochs, always
    if threshold == 0:
        for epoch in (1, 2):  # each epoch's bar, to its last of 3 batches
            assert any(line.startswith(f"fold 1/2 epoch {epoch}/2:") and "3/3" in line for line in batch_lines)
    else:
        assert batch_lines == []
