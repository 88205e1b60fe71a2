"""Paired comparison of two run folders, written directly by the tests (run.json + oof.csv)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from smallct.analysis.compare import compare_plot, compare_runs
from smallct.compare import main
from smallct.evaluation.intervals import nadeau_bengio
from smallct.data.folds import fold_assignment
from tests.analysis import write_multiclass_run


def write_run(folder, labels, probs, assignment, arch="resnet18", seed=0, groups=None):
    """A minimal smallct.cv run folder: probs (repeats, N) of class 1, assignment (repeats, N), and the groups
    its folds kept whole (None: images on their own)."""
    folder.mkdir(parents=True)
    ids = [f"{i:03d}" for i in range(len(labels))]
    record = {"arch": arch, "task": "binary", "class_names": ["0", "1"], "weights": {"kind": "package"},
              "config": {"folds": int(assignment.max()) + 1, "repeats": len(assignment), "seed": seed},
              "folds": {"ids": ids, "assignment": assignment.tolist()}}
    if groups is not None:
        record["resampling"] = {"unit": "near-duplicate groups", "n_units": len(set(groups)),
                                "n_images": len(labels), "groups": [int(g) for g in groups]}
    (folder / "run.json").write_text(json.dumps(record))
    rows = [{"id": ids[i], "label": int(labels[i]), "prob": float(probs[r, i]), "pred": int(probs[r, i] >= 0.5),
             "fold": int(assignment[r, i]), "repeat": r}
            for r in range(len(assignment)) for i in range(len(labels))]
    pd.DataFrame(rows).to_csv(folder / "oof.csv", index=False)
    return folder


def _probs(labels, n_wrong, rng, repeats=1):
    """Probabilities that get ``n_wrong`` images wrong (the first ones), with some ranking noise."""
    p = np.where(labels == 1, 0.7, 0.3) + rng.uniform(-0.15, 0.15, (repeats, len(labels)))
    p[:, :n_wrong] = 1 - p[:, :n_wrong]
    return p


@pytest.fixture
def labels():
    return np.tile([0, 1], 100)


def test_clear_difference_is_detected(tmp_path, labels):
    rng = np.random.default_rng(0)
    folds = fold_assignment(labels, 5, 1, 0)
    a = write_run(tmp_path / "a", labels, _probs(labels, 60, rng), folds)
    b = write_run(tmp_path / "b", labels, _probs(labels, 4, rng), folds, arch="resnet152")
    res = compare_runs(a, b, n_boot=300)
    assert res["accuracy"]["a"] == pytest.approx(0.70)
    assert res["accuracy"]["b"] == pytest.approx(0.98)
    assert res["accuracy"]["difference"] == pytest.approx(0.28)
    lo, hi = res["accuracy"]["ci95"]
    assert 0.15 < lo < 0.28 < hi < 0.40
    assert res["roc_auc"]["ci95"][0] > 0
    assert res["nadeau_bengio"] is None
    # one fold draw: even a 28-point difference is weak evidence, and the sentence says how to get more
    assert res["sentence"].startswith("Weak evidence that b (resnet152, imagenet) is better than a (resnet18, "
                                      "imagenet) in accuracy") and "--repeats 5" in res["sentence"]
    assert len(res["per_fold"]) == 5
    assert res["ci_resampled"] == {"unit": "images", "n_units": 200, "n_images": 200}


def test_a_difference_is_clear_only_when_repeated_cv_agrees(tmp_path, labels):
    rng = np.random.default_rng(0)
    folds = fold_assignment(labels, 5, 3, 0)
    a = write_run(tmp_path / "a", labels, _probs(labels, 60, rng, 3), folds)
    b = write_run(tmp_path / "b", labels, _probs(labels, 4, rng, 3), folds, arch="resnet152")
    res = compare_runs(a, b, n_boot=300)
    assert res["nadeau_bengio"]["accuracy"]["ci95"][0] > 0
    assert res["sentence"].startswith("b (resnet152, imagenet) is better than a (resnet18, imagenet) in accuracy")


def test_the_paired_bootstrap_resamples_the_groups_the_folds_kept_whole(tmp_path):
    # 40 slices, each saved 5 times (200 images); A is right on 24 of them, B on 30: with images as units the
    # interval pretends to 200 independent images, with the groups it counts 40
    groups = np.repeat(np.arange(40), 5)
    labels = np.repeat(np.tile([0, 1], 20), 5)
    folds = fold_assignment(labels, 5, 1, 0, groups)
    wrong_a, wrong_b = np.isin(groups, np.arange(16)), np.isin(groups, np.arange(10))
    pa = np.where(wrong_a, 1 - labels, labels)[None] * 0.6 + 0.2
    pb = np.where(wrong_b, 1 - labels, labels)[None] * 0.6 + 0.2
    flat = compare_runs(write_run(tmp_path / "a", labels, pa, folds), write_run(tmp_path / "b", labels, pb, folds),
                        n_boot=400)
    grouped = compare_runs(write_run(tmp_path / "ga", labels, pa, folds, groups=groups),
                           write_run(tmp_path / "gb", labels, pb, folds, groups=groups), n_boot=400)
    assert flat["accuracy"]["difference"] == grouped["accuracy"]["difference"] == pytest.approx(0.15)
    width = {k: np.diff(r["accuracy"]["ci95"])[0] for k, r in (("flat", flat), ("grouped", grouped))}
    assert width["grouped"] > 1.8 * width["flat"]  # about sqrt(5) wider: 5 copies per unit
    assert grouped["ci_resampled"] == {"unit": "near-duplicate groups", "n_units": 40, "n_images": 200}
    assert "over 40 near-duplicate groups of 200 images" in grouped["method"]
    def interval_label(result):  # compare.png names the unit its interval resampled
        return compare_plot(result).axes[0].get_yticklabels()[1].get_text()

    assert "of near-duplicate groups" in interval_label(grouped) and "of images" in interval_label(flat)


def test_same_predictions_cannot_be_told_apart(tmp_path, labels):
    rng = np.random.default_rng(1)
    folds = fold_assignment(labels, 5, 1, 0)
    p = _probs(labels, 20, rng)
    q = p.copy()
    q[:, 20:22] = 1 - q[:, 20:22]  # B gets two more images wrong
    res = compare_runs(write_run(tmp_path / "a", labels, p, folds), write_run(tmp_path / "b", labels, q, folds),
                       n_boot=300)
    assert res["accuracy"]["difference"] == pytest.approx(-0.01)
    lo, hi = res["accuracy"]["ci95"]
    assert lo < 0 <= hi
    assert res["sentence"].startswith("The data cannot tell b (resnet18, imagenet) (B) and a (resnet18, imagenet) "
                                      "(A) apart")


def test_repeated_cv_adds_nadeau_bengio(tmp_path, labels):
    rng = np.random.default_rng(2)
    folds = fold_assignment(labels, 5, 3, 0)
    a = write_run(tmp_path / "a", labels, _probs(labels, 40, rng, 3), folds)
    b = write_run(tmp_path / "b", labels, _probs(labels, 10, rng, 3), folds)
    res = compare_runs(a, b, n_boot=200)
    nb = res["nadeau_bengio"]["accuracy"]
    assert nb["n_folds"] == 15 and nb["df"] == 14
    assert nb["mean_difference"] == pytest.approx(0.15)
    assert nb["correction"] == pytest.approx(40 / 160)
    assert nb["p_value"] < 0.01


def test_nadeau_bengio_matches_hand_computation():
    d = np.array([0.02, 0.05, -0.01, 0.04, 0.03, 0.00, 0.06, 0.01, 0.02, 0.03])
    res = nadeau_bengio(d, n_train=180, n_test=20)
    # by hand: mean 0.025; squared deviations sum to 0.00425, s^2 = 0.00425 / 9 = 4.7222e-4;
    # corrected variance of the mean (1/10 + 20/180) s^2 = 0.21111 x 4.7222e-4 = 9.9691e-5, se = 0.0099846;
    # t = 0.025 / 0.0099846 = 2.5039 on 9 df: two-sided p = 0.0337; t(0.975, 9) = 2.2622, half-width 0.022587
    assert res["mean_difference"] == pytest.approx(0.025)
    assert res["t"] == pytest.approx(2.5039, abs=1e-4) and res["df"] == 9
    assert res["p_value"] == pytest.approx(0.0337, abs=2e-4)
    assert res["ci95"] == pytest.approx([0.025 - 0.022587, 0.025 + 0.022587], abs=2e-5)
    assert res["correction"] == pytest.approx(1 / 9)
    # the uncorrected t-test would say t = 0.025 / sqrt(4.7222e-4 / 10) = 3.638, p = 0.0054


def test_different_folds_are_refused(tmp_path, labels, capsys):
    rng = np.random.default_rng(3)
    a = write_run(tmp_path / "a", labels, _probs(labels, 10, rng), fold_assignment(labels, 5, 1, 0))
    b = write_run(tmp_path / "b", labels, _probs(labels, 10, rng), fold_assignment(labels, 5, 1, 1), seed=1)
    assert main([str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("smallct.compare: error:") and "different fold assignments" in err and "seed 0 vs 1" in err
    assert len(err.splitlines()) == 1


def test_cli_writes_json_and_plot(tmp_path, labels, capsys):
    rng = np.random.default_rng(4)
    folds = fold_assignment(labels, 5, 1, 0)
    a = write_run(tmp_path / "a", labels, _probs(labels, 30, rng), folds)
    b = write_run(tmp_path / "b", labels, _probs(labels, 25, rng), folds)
    assert main([str(a), str(b), "--n-boot", "200"]) == 0
    out = tmp_path / "compare_a_vs_b"
    assert json.loads((out / "compare.json").read_text())["difference"] == "B - A"
    assert (out / "compare.png").stat().st_size > 5000
    assert "95% paired CI" in capsys.readouterr().out


def test_multiclass_auc_matches_sklearn(tmp_path):
    from sklearn.metrics import roc_auc_score

    y = np.tile([0, 1, 2], 20)
    folds = fold_assignment(y, 3, 1, 0)
    rng = np.random.default_rng(5)
    ids = [f"{i:03d}" for i in range(len(y))]
    runs = []
    for name, noise in (("a", 2.0), ("b", 1.0)):
        logits = np.eye(3)[y] * 2 + rng.normal(0, noise, (len(y), 3))
        P = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        folder = tmp_path / name
        write_multiclass_run(folder, ids, y, P, folds)
        runs.append((folder, P))
    res = compare_runs(runs[0][0], runs[1][0], n_boot=100)
    assert res["roc_auc"]["a"] == pytest.approx(roc_auc_score(y, runs[0][1], multi_class="ovr"))
    assert res["roc_auc"]["b"] == pytest.approx(roc_auc_score(y, runs[1][1], multi_class="ovr"))
    assert res["accuracy"]["b"] == pytest.approx((runs[1][1].argmax(1) == y).mean())


def test_compare_plot_returns_a_figure_whose_tick_labels_do_not_overlap(tmp_path, labels):
    from smallct.analysis.compare import compare_plot

    rng = np.random.default_rng(6)
    folds = fold_assignment(labels, 5, 2, 0)
    a = write_run(tmp_path / "a", labels, _probs(labels, 30, rng, repeats=2), folds)
    b = write_run(tmp_path / "b", labels, _probs(labels, 22, rng, repeats=2), folds, arch="resnet152")
    fig = compare_plot(compare_runs(a, b, n_boot=200))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:  # accuracy in points, AUC in hundredths: a few readable ticks each
        boxes = sorted((t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()),
                       key=lambda box: box.x0)
        assert 3 <= len(boxes) <= 7
        assert all(left.x1 < right.x0 for left, right in zip(boxes, boxes[1:]))
    assert "B = " in fig.get_suptitle() and "resnet152" in fig.get_suptitle()


def _with_scheme(run, scheme):
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**record, "folds_scheme": scheme}))
    return run


def test_runs_of_two_fold_schemes_are_refused_naming_the_scheme_unless_one_repeat(tmp_path, labels, capsys):
    rng = np.random.default_rng(4)
    now = fold_assignment(labels, 5, 2, 0)
    then = np.stack([now[0], fold_assignment(labels, 5, 1, 1)[0]])  # smallct 0.3's repeat 1 of seed 0: seed 1's draw
    a = write_run(tmp_path / "a", labels, _probs(labels, 10, rng, 2), then)  # no folds_scheme: smallct <= 0.3
    b = _with_scheme(write_run(tmp_path / "b", labels, _probs(labels, 10, rng, 2), now), 2)
    assert main([str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip()
    assert "a was made by fold scheme 1, smallct <= 0.3, b by fold scheme 2" in err and len(err.splitlines()) == 1
    assert "--seed" not in err  # the same flags would draw the same folds again
    # one repeat: repeat 0 is the same draw under both schemes, so the runs pair
    a1 = write_run(tmp_path / "a1", labels, _probs(labels, 10, rng), now[:1])
    b1 = _with_scheme(write_run(tmp_path / "b1", labels, _probs(labels, 10, rng), now[:1]), 2)
    assert compare_runs(a1, b1, n_boot=100)["n_images"] == len(labels)
