"""Multi-label learning end to end: synthetic RSNA DICOM -> prepare rsna -> cross-validation."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from smallct import cv, prepare
from smallct.datasets.rsna import LABELS
from smallct.evaluation.multilabel import multilabel_metrics, weighted_log_loss
from smallct.data.folds import _strata, fold_assignment
from smallct.datasets.synthetic_dicom import write_synthetic_rsna


def test_multilabel_metrics_by_hand():
    #             any epi ipa ivh sah sdh
    y = np.array([[1, 0, 1, 0, 0, 1],
                  [0, 0, 0, 0, 0, 0],
                  [1, 0, 0, 0, 0, 1],
                  [0, 0, 0, 0, 0, 0]])
    p = np.array([[0.9, 0.1, 0.4, 0.2, 0.2, 0.7],
                  [0.3, 0.2, 0.1, 0.1, 0.1, 0.6],
                  [0.6, 0.1, 0.2, 0.1, 0.3, 0.4],
                  [0.2, 0.1, 0.3, 0.1, 0.1, 0.2]])
    m = multilabel_metrics(y, p)
    assert list(m)[:3] == ["weighted_log_loss", "mean_auc", "accuracy"]
    assert set(m) == {"weighted_log_loss", "mean_auc", "accuracy", *(f"auc_{n}" for n in LABELS),
                      *(f"f1_{n}" for n in LABELS)}
    assert all(isinstance(v, float) for v in m.values())
    assert m["weighted_log_loss"] == weighted_log_loss(y, p)
    assert m["auc_any"] == 1.0 and m["auc_intraparenchymal"] == 1.0 and m["auc_subdural"] == 0.75
    assert math.isnan(m["auc_epidural"]) and math.isnan(m["auc_subarachnoid"])  # one class only
    assert m["mean_auc"] == pytest.approx((1 + 1 + 0.75) / 3)  # over the defined AUCs only
    # at 0.5, wrong: ipa row 0 (0.4), sdh rows 1 (0.6) and 2 (0.4): 3 of 24 cells
    assert m["accuracy"] == pytest.approx(21 / 24)
    assert m["f1_any"] == 1.0 and m["f1_subdural"] == 0.5 and math.isnan(m["f1_epidural"])


def test_strata_refine_any_and_folds_keep_patients_whole():
    rng = np.random.default_rng(0)
    y = np.zeros((240, 6), int)
    y[:80, 0] = 1
    y[:40, 5] = 1                 # any + subdural: a common combination
    y[40:70, 4] = 1               # any + subarachnoid
    y[70:73, 1] = 1               # any + epidural: rare, merged into the commonest any=1 combination
    y[73:80, 2] = 1
    y[0:2, 3] = 1                 # any + subdural + intraventricular: rare
    strata = _strata(y, folds=5)
    for s in np.unique(strata):
        assert len(set(y[strata == s, 0])) == 1  # every stratum within one value of any
        assert (strata == s).sum() >= 5
    assert len(np.unique(strata)) == 4  # none, any+sdh (+ the rare ones), any+sah, any+ipa
    # with patients, a combination counts by the patients that carry it: 4 patients cannot fill 5 folds
    few = np.repeat(np.arange(60), 4)  # any+sdh on 10 patients, any+sah on 8, any+ipa on 2
    by_patient = _strata(y, folds=5, groups=few)
    assert len(np.unique(by_patient)) == 3
    assert len(set(by_patient[:40])) == 1 and len(set(by_patient[40:70])) == 1
    assert by_patient[73] == by_patient[0] and by_patient[200] != by_patient[0]
    one = _strata(y, folds=5, groups=np.zeros(240))  # a single patient: only any is left
    assert len(set(one[:80])) == 1 and len(set(one[80:])) == 1 and one[0] != one[80]
    groups = rng.permutation(np.repeat(np.arange(60), 4))
    folds = fold_assignment(y, folds=5, repeats=2, seed=0, groups=groups)
    assert folds.shape == (2, 240) and (folds >= 0).all()
    for r in range(2):
        per_patient = pd.Series(folds[r]).groupby(groups).nunique()
        assert (per_patient == 1).all()  # no patient in two folds
    assert not np.array_equal(folds[0], folds[1])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    synthetic = write_synthetic_rsna(root / "dicom", n_patients=6, slices_per_series=5, seed=0)
    assert prepare.main(["rsna", "--dicom", str(synthetic["root"]), "--labels", str(synthetic["labels"]),
                         "--out", str(root / "prepared"), "--size", "32", "--workers", "2", "--no-progress"]) == 0
    assert cv.main(["--data", str(root / "prepared"), "--task", "multilabel", "--arch", "resnet18",
                    "--weights", "none", "--img-size", "32", "--epochs", "2", "--batch-size", "8",
                    "--folds", "3", "--workers", "1", "--out", str(root / "run"), "--no-progress"]) == 0
    return {"root": root, "synthetic": synthetic, "out": root / "run"}


def test_end_to_end_files_and_metric(run):
    out = run["out"]
    for name in ("run.json", "oof.csv", "history.csv", "results.json", "curves.png"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["r0_f0.pt", "r0_f1.pt", "r0_f2.pt"]
    record = json.loads((out / "run.json").read_text())
    assert record["task"] == "multilabel" and record["class_names"] == list(LABELS)
    assert record["num_outputs"] == 6 and record["input"]["windows"] == ["brain", "subdural", "bone"]
    checkpoint = torch.load(out / "checkpoints" / "r0_f0.pt", weights_only=False)
    assert checkpoint["task"] == "multilabel" and checkpoint["model"]["fc.weight"].shape[0] == 6

    oof = pd.read_csv(out / "oof.csv")
    assert oof.columns.tolist() == ["id", "file", *LABELS, *(f"prob_{n}" for n in LABELS), "fold", "repeat"]
    assert (oof["file"] == oof["id"] + ".png").all()  # the slice's file name, beside its id
    assert len(oof) == 29 and run["synthetic"]["corrupt"] not in set(oof["id"])  # the truncated slice is skipped
    probs = oof[[f"prob_{n}" for n in LABELS]].to_numpy()
    assert ((probs > 0) & (probs < 1)).all()
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "multilabel" and results["complete"]
    pooled = results["pooled_oof"]
    assert pooled["weighted_log_loss"] == pytest.approx(weighted_log_loss(oof[list(LABELS)], probs), rel=1e-9)
    lo, hi = results["pooled_oof_ci95"]["weighted_log_loss"]
    assert hi - lo > 0.02  # 6 patients: no narrow interval
    # the interval resamples patients (6, the units the folds keep whole), not the 29 slices
    assert results["ci_resampled"]["unit"] in ("patients", "patient groups")
    assert results["ci_resampled"]["n_units"] <= 6 and results["ci_resampled"]["n_images"] == 29
    assert results["ci_method"].startswith(f"percentile bootstrap over {results['ci_resampled']['n_units']} patient")
    assert {"mean_auc", "accuracy", "auc_any", "f1_subdural"} <= set(pooled)
    assert len(results["per_fold"]) == 3 and all("weighted_log_loss" in f for f in results["per_fold"])
    assert 0.3 < pooled["weighted_log_loss"] < 1.5  # an untrained-ish net near log 2, not a broken one
    history = pd.read_csv(out / "history.csv")
    assert len(history) == 3 * 2 and history["val_loss"].notna().all()


def test_end_to_end_no_patient_in_two_folds(run):
    manifest = pd.read_csv(run["root"] / "prepared" / "manifest.csv").set_index("id")
    oof = pd.read_csv(run["out"] / "oof.csv")
    patients = manifest.loc[oof["id"], "patient"].to_numpy()
    assert (oof.groupby(patients)["fold"].nunique() == 1).all()
    assert oof["fold"].nunique() == 3 and len(set(patients)) == 6
    # any is stratified: every fold has positives and negatives
    assert (oof.groupby("fold")["any"].agg(["min", "max"]).to_numpy() == [0, 1]).all()
