"""Typed configs: to_dict is JSON-ready, from_dict rebuilds them (Paths and nesting), unknown keys are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smallct.config.run import CVConfig, DataConfig, from_dict, to_dict, TrainConfig


def _custom() -> CVConfig:
    """Every section away from its defaults, with Path fields set."""
    data = DataConfig(data=Path("/data/head_ct"), labels=Path("/data/head_ct/other.csv"), id_col="id",
                      label_col="hemorrhage", img_size=64, resize="squash", crop=False, phantom_n=20,
                      group_similar=None)
    train = TrainConfig(epochs=3, batch_size=8, optimizer="sgd", lr=0.0123, schedule="step", freeze_epochs=1,
                        backbone_lr_mult=0.1, augment="flip", tta=False, amp=False)
    return CVConfig(arch="tf_efficientnet_lite0", weights="/w/lite0.pth", task="binary", folds=3, repeats=2,
                    seed=7, device="cpu", out=Path("runs/x"), workers=1, params_source="best.json",
                    data=data, train=train)


def test_cv_config_round_trips_through_json():
    cfg = _custom()
    d = to_dict(cfg)
    assert d["out"] == "runs/x" and d["data"]["data"] == "/data/head_ct" and d["data"]["labels"].endswith("other.csv")
    assert d["train"]["lr"] == 0.0123 and d["data"]["group_similar"] is None
    back = from_dict(CVConfig, json.loads(json.dumps(d)))
    assert back == cfg
    assert isinstance(back.out, Path) and isinstance(back.data.data, Path) and isinstance(back.data.labels, Path)
    assert isinstance(back.data, DataConfig) and isinstance(back.train, TrainConfig)


@pytest.mark.parametrize("cfg", [DataConfig(), DataConfig(data=Path("d"), img_size=32), TrainConfig(),
                                 TrainConfig(epochs=2, label_smoothing=0.1), CVConfig()])
def test_each_config_round_trips_on_its_own(cfg):
    d = json.loads(json.dumps(to_dict(cfg)))
    assert from_dict(type(cfg), d) == cfg
    assert set(d) == set(type(cfg).__dataclass_fields__)


def test_missing_keys_take_the_defaults():
    cfg = from_dict(CVConfig, {"arch": "resnet34", "train": {"epochs": 2}})
    assert cfg.arch == "resnet34" and cfg.train.epochs == 2
    assert cfg.train.lr == TrainConfig().lr and cfg.data == DataConfig() and cfg.out == Path("runs/cv")


def test_unknown_keys_are_an_error_naming_them_and_the_section():
    with pytest.raises(ValueError, match="unknown CVConfig settings: learning_rate, zzz"):
        from_dict(CVConfig, {"learning_rate": 0.1, "zzz": 1, "arch": "resnet18"})
    with pytest.raises(ValueError, match="unknown TrainConfig settings: learning_rate"):
        from_dict(CVConfig, {"train": {"learning_rate": 0.1}})
    with pytest.raises(ValueError, match="unknown DataConfig settings: folder"):
        from_dict(DataConfig, {"folder": "x"})


def test_defaults_are_not_shared_between_instances():
    a, b = CVConfig(), CVConfig()
    a.train.epochs = 99
    a.data.img_size = 16
    assert b.train.epochs == TrainConfig().epochs and b.data.img_size is None
