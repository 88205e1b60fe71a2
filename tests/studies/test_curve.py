"""Learning curves: stratified draws inside each training part, paired across weights, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from smallct.curve import main
from smallct.studies.curve import check_sizes, draw_training_subset


def test_draw_is_stratified_inside_the_training_part_and_reproducible():
    labels = np.array([0, 1] * 50)
    train = np.arange(20, 100)
    sub = draw_training_subset(train, labels, 10, seed=3)
    assert len(sub) == 10 and set(sub) <= set(train) and np.bincount(labels[sub]).tolist() == [5, 5]
    assert (draw_training_subset(train, labels, 10, seed=3) == sub).all()
    assert (draw_training_subset(train, labels, 80, seed=3) == train).all()
    one_short = draw_training_subset(train, labels, 79, seed=3)  # one left out: nothing to stratify
    assert len(one_short) == 79 and set(one_short) < set(train)


def test_sizes_are_checked_against_the_training_parts():
    labels = np.array([0, 1] * 20)
    folds = np.tile(np.arange(5), 8)[None]
    assert check_sizes([4, 32], labels, folds) is None
    with pytest.raises(ValueError, match="--sizes 2,33: need 4 <= n <= 32"):
        check_sizes([2, 10, 33], labels, folds)
    uneven = folds.copy()
    uneven[0, 1] = 0  # fold 0 holds 9 images (training part 31), fold 1 holds 7 (training part 33)
    note = check_sizes([4, 32], labels, uneven)  # grouped folds are uneven: the largest part decides
    assert note is not None and "31-33 images" in note and "n = 32" in note


def test_cli_compares_weights_on_the_same_draws_and_learns(tmp_path, easy_set, capsys):
    import torchvision

    data = easy_set
    torch.manual_seed(5)
    weights_file = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights_file)
    out = tmp_path / "curve"
    code = main(["--data", str(data), "--arch", "resnet18", "--weights", f"none,{weights_file}", "--img-size", "32",
                 "--sizes", "4,32", "--out", str(out), "--no-progress"])
    assert code == 0
    summary = pd.read_csv(out / "curve.csv")
    assert len(summary) == 2 * 2 and (summary["count"] == 5).all() and set(summary["method"]) == {"probe"}
    folds = pd.read_csv(out / "curve_folds.csv")
    assert len(folds) == 2 * 2 * 5 and (folds.groupby(["weights", "n"])["n_test"].sum() == 40).all()
    probe = summary.set_index(["weights", "n"])["accuracy_mean"]
    assert probe[("none", 32)] > 0.9 and probe[(str(weights_file), 32)] > 0.9  # labels stay aligned
    by_weights = [g.sort_values(["n", "fold"])[["n", "fold", "n_test"]].to_numpy() for _, g in folds.groupby("weights")]
    assert (by_weights[0] == by_weights[1]).all()  # the same folds for both weight sources
    record = json.loads((out / "curve.json").read_text())
    assert record["weights"]["none"]["kind"] == "none" and "ci95" in record["notes"]
    assert (out / "curve.png").stat().st_size > 0


def test_cli_finetune_method_prints_its_duration_and_trains(tmp_path, easy_set, capsys):
    data = easy_set
    out = tmp_path / "curve"
    # 20 images, batch 32: one step per epoch, so 10 epochs are 10 steps
    code = main(["--data", str(data), "--arch", "resnet18", "--weights", "none", "--img-size", "32", "--folds", "2",
                 "--sizes", "20", "--method", "finetune", "--epochs", "10", "--finetune-img-size", "32",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    assert "estimated duration" in capsys.readouterr().out
    folds = pd.read_csv(out / "curve_folds.csv")
    assert len(folds) == 2 and set(folds["method"]) == {"finetune"} and (folds["n_train"] == 20).all()
    # an untrained head (random init) puts every image in one class: accuracy 0.5 on this balanced set, while
    # ranking (AUC) can be perfect even so; trained, at most 2 of each fold's 20 test images are wrong (seeds 0-2:
    # none; 1 or 3 epochs: 0.5)
    assert (folds["accuracy"] >= 0.9).all()


def test_cli_bad_sizes_is_one_error_line(tmp_path, easy_set, capsys):
    data = easy_set
    code = main(["--data", str(data), "--arch", "resnet18", "--weights", "none", "--img-size", "32",
                 "--sizes", "10,200", "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("smallct.curve: error: --sizes 200")
