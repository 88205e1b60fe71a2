"""Learning curves: stratified draws inside each training part, paired across weights, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from smallct.config.studies import CurveConfig
from smallct.curve import main
from smallct.data.folds import Folds, fold_assignment
from smallct.evaluation.intervals import Units, bootstrap_indices
from smallct.evaluation.metrics import classification_metrics
from smallct.studies.curve import check_sizes, draw_splits, draw_training_subset, summarize_curve
from smallct.studies.methods import linear_probe
from smallct.studies.summary import episode_figures


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


def _grouped_embeddings(seed: int = 0, n_groups: int = 40):
    """Embeddings of ``n_groups`` groups of 3 near-copies (one label per group), labels and groups."""
    rng = np.random.default_rng(seed)
    group_labels = np.repeat([0, 1], n_groups // 2)
    centres = rng.normal(size=(n_groups, 16))
    centres[group_labels == 1, :2] += 1.2  # overlapping classes: accuracy about 0.6-0.7 at n = 30
    groups = np.repeat(np.arange(n_groups), 3)
    return centres[groups] + 0.3 * rng.normal(size=(len(groups), 16)), group_labels[groups], groups


def _probe_fits(z, labels, groups, repeats):
    cfg = CurveConfig(sizes=[30], repeats=repeats, folds=5, seed=0)
    fits = []
    for n, r, k, sub, test in draw_splits(cfg, labels, Folds(fold_assignment(labels, 5, repeats, 0, groups))):
        P = linear_probe(z[sub], labels[sub], z[test], 2, C=0.1)
        fits.append({"weights": "imagenet", "method": "probe", "n": n, "repeat": r, "fold": k,
                     **episode_figures(labels[test], P), "_index": test, "_P": P})
    return fits


def _half(row, m="accuracy"):
    return (row[f"{m}_ci_high"] - row[f"{m}_ci_low"]) / 2


def test_interval_does_not_narrow_with_repeats_of_the_same_images():
    # 0.3.0 put a Student t over folds x repeats: 10 repeats of the same 120 images narrowed it to ~0.3x of one
    # repeat's (about 3.7x on Head CT). The interval is now each repeat's grouped bootstrap of its pooled
    # out-of-fold predictions (one cross-validation's, as smallct.cv's), bounds averaged. Mutants caught: a t over
    # fits, a bootstrap of images instead of groups, the bootstrap of the repeats' mean (0.68x here: their model
    # noise averages out while the images stay the same), separate draws per repeat
    z, labels, groups = _grouped_embeddings()
    units = Units(len(labels), groups, "near-duplicate groups")
    one = summarize_curve(_probe_fits(z, labels, groups, 1), labels, units, n_boot=500).iloc[0]
    fits = _probe_fits(z, labels, groups, 10)
    ten = summarize_curve(fits, labels, units, n_boot=500).iloc[0]
    assert _half(ten) >= 0.85 * _half(one)
    # the reference: per repeat, the grouped bootstrap of its pooled out-of-fold accuracy; bounds averaged
    P = np.zeros((10, len(labels), 2))
    for f in fits:
        P[f["repeat"], f["_index"]] = f["_P"]
    draws = list(bootstrap_indices(units, 500, seed=0))
    bounds = [np.quantile([classification_metrics(labels[idx], P[r, idx])["accuracy"] for idx in draws],
                          [0.025, 0.975]) for r in range(10)]
    reference = np.diff(np.mean(bounds, axis=0))[0] / 2
    assert 0.9 * reference <= _half(ten) <= 1.1 * reference
    assert ten["accuracy_pooled"] == pytest.approx(np.mean([(P[r].argmax(1) == labels).mean() for r in range(10)]))
    assert ten["accuracy_ci_low"] <= ten["accuracy_pooled"] <= ten["accuracy_ci_high"]
    assert (ten["ci_unit"], ten["n_units"]) == ("near-duplicate groups", 40) and "40 near-duplicate" in ten["ci_method"]
    # the folds x repeats spread stays: mean and standard deviation over the 50 fits
    assert ten["count"] == 50 and ten["accuracy_mean"] == pytest.approx(np.mean([f["accuracy"] for f in fits]))


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


def test_cli_interval_names_its_unit_and_does_not_narrow_with_repeats(tmp_path, easy_set, capsys):
    # every fifth label flipped: accuracy about 0.75, so the interval has room. 0.3.0's t over folds x repeats
    # went from +-0.113 (1 repeat) to +-0.051 (5 repeats) here
    labels = (easy_set / "labels.csv").read_text().splitlines()
    flipped = [f"{r.split(',')[0]},{1 - int(r.split(',')[1])}" if i % 5 == 0 else r for i, r in enumerate(labels[1:])]
    (easy_set / "labels.csv").write_text("\n".join([labels[0], *flipped]) + "\n")
    half = {}
    for repeats in (1, 5):
        out = tmp_path / f"r{repeats}"
        assert main(["--data", str(easy_set), "--arch", "resnet18", "--weights", "none", "--img-size", "32",
                     "--sizes", "10", "--repeats", str(repeats), "--out", str(out), "--no-progress"]) == 0
        row = pd.read_csv(out / "curve.csv").iloc[0]
        half[repeats] = _half(row)
    assert half[5] >= 0.65 * half[1]
    # the unit is said in the CSV, the JSON, the printed table and curve.png's axis
    assert row["ci_unit"] == "near-duplicate groups" and row["n_units"] < 40  # the easy set's linked discs
    assert row["ci_method"].startswith(f"percentile bootstrap over {row['n_units']} near-duplicate groups of 40")
    assert row["accuracy_ci_low"] <= row["accuracy_pooled"] <= row["accuracy_ci_high"]
    record = json.loads((out / "curve.json").read_text())
    assert record["intervals"]["unit"] == "near-duplicate groups" and record["intervals"]["n_units"] == row["n_units"]
    assert "repeats do not narrow it" in record["notes"]["ci95"]
    printed = capsys.readouterr().out
    assert "pooled [95% CI]" in printed and f"bootstrap over {row['n_units']} near-duplicate groups" in printed
    assert "pooled out-of-fold" in Image.open(out / "curve.png").text["Description"]
