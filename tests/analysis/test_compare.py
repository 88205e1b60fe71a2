"""Paired comparison of two run folders, written directly by the tests (run.json + oof.csv)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from smallct.analysis.compare import compare_runs
from smallct.compare import main
from smallct.evaluation.intervals import nadeau_bengio
from smallct.data.folds import fold_assignment


def write_run(folder, labels, probs, assignment, arch="resnet18", seed=0):
    """A minimal smallct.cv run folder: probs (repeats, N) of class 1, assignment (repeats, N)."""
    folder.mkdir(parents=True)
    ids = [f"{i:03d}" for i in range(len(labels))]
    record = {"arch": arch, "task": "binary", "class_names": ["0", "1"], "weights": {"kind": "package"},
              "config": {"folds": int(assignment.max()) + 1, "repeats": len(assignment), "seed": seed},
              "folds": {"ids": ids, "assignment": assignment.tolist()}}
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
    assert res["sentence"].startswith("b (resnet152, imagenet) is better than a (resnet18, imagenet) in accuracy")
    assert len(res["per_fold"]) == 5


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
    se = np.sqrt((1 / 10 + 20 / 180) * d.var(ddof=1))
    assert res["t"] == pytest.approx(d.mean() / se)
    naive_t = d.mean() / np.sqrt(d.var(ddof=1) / 10)
    assert res["t"] < naive_t  # the correction widens the interval


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
        folder.mkdir()
        (folder / "run.json").write_text(json.dumps({
            "arch": "resnet18", "task": "multiclass", "class_names": ["p", "q", "r"], "weights": {"kind": "none"},
            "config": {}, "folds": {"ids": ids, "assignment": folds.tolist()}}))
        pd.DataFrame({"id": ids, "label": y, **{f"prob_{c}": P[:, j] for j, c in enumerate("pqr")},
                      "pred": P.argmax(1), "fold": folds[0], "repeat": 0}).to_csv(folder / "oof.csv", index=False)
        runs.append((folder, P))
    res = compare_runs(runs[0][0], runs[1][0], n_boot=100)
    assert res["roc_auc"]["a"] == pytest.approx(roc_auc_score(y, runs[0][1], multi_class="ovr"))
    assert res["roc_auc"]["b"] == pytest.approx(roc_auc_score(y, runs[1][1], multi_class="ovr"))
    assert res["accuracy"]["b"] == pytest.approx((runs[1][1].argmax(1) == y).mean())
