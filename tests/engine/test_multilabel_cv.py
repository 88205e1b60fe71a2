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


@pytest.fixture(scope="module")
def context_run(run):
    """The same prepared slices, each with one neighbour on each side in every window (9 channels), smoothed."""
    out = run["root"] / "context"
    assert cv.main(["--data", str(run["root"] / "prepared"), "--arch", "resnet18", "--weights", "none",
                    "--img-size", "32", "--epochs", "1", "--batch-size", "8", "--folds", "3", "--workers", "1",
                    "--context", "1", "--context-channels", "all", "--smooth", "3", "--out", str(out),
                    "--no-progress", "--no-test-curves"]) == 0
    return out


def test_context_run_records_its_input_and_smooths_within_series(run, context_run):
    from smallct.datasets.folder import read_manifest

    record = json.loads((context_run / "run.json").read_text())
    context = record["input"]["context"]
    assert context["n_channels"] == 9 and context["order"][:4] == ["slice-1 brain", "slice-1 subdural",
                                                                   "slice-1 bone", "slice brain"]
    assert len(record["input"]["mean"]) == 9
    checkpoint = torch.load(context_run / "checkpoints" / "r0_f0.pt", weights_only=False)
    assert checkpoint["channels"] == 9 and checkpoint["model"]["conv1.weight"].shape[1] == 9
    results = json.loads((context_run / "results.json").read_text())
    smoothed = results["smoothed"]
    assert smoothed["slices"] == 3 and "never across a gap" in smoothed["how"]
    # the smoothed figure is the metric of the out-of-fold probabilities averaged over each slice's neighbours
    dataset = read_manifest(run["root"] / "prepared")
    oof = pd.read_csv(context_run / "oof.csv", dtype={"id": str}).set_index("id").loc[dataset.ids]
    probs = oof[[f"prob_{n}" for n in LABELS]].to_numpy()
    by_hand = dataset.neighbours.smooth(probs, 3)
    assert smoothed["pooled_oof"]["weighted_log_loss"] == pytest.approx(
        weighted_log_loss(dataset.labels, by_hand), rel=1e-9)
    assert smoothed["pooled_oof"]["weighted_log_loss"] != results["pooled_oof"]["weighted_log_loss"]


def test_context_run_is_explained_on_its_centre_slice_and_exported_with_its_channels(context_run, tmp_path):
    from smallct.apply.explain import explain_oof
    from smallct.apply.export import export_run
    from smallct.engine.run_models import load_run

    loaded = load_run(context_run)
    table, images, maps = explain_oof(loaded, everything=True, limit=3, layer="layer3", device="cpu",
                                      progress=False, log=lambda *a: None)
    assert images.shape == (3, 3, 32, 32) and maps.shape == (3, 32, 32)  # drawn over the slice itself
    contract = export_run(loaded, tmp_path / "model.pt", folds=["r0_f0"])
    assert contract["input"]["shape"] == ["N", 9, 32, 32]
    assert contract["input"]["channel_order"] == loaded.input["context"]["order"]
    assert contract["max_abs_difference"] < 1e-4
    with pytest.raises(ValueError, match="--context 1 run reads each slice with its neighbours"):
        from smallct.apply.explain import explain_images
        explain_images(loaded, [tmp_path / "x.png"], progress=False)


def test_context_and_smoothing_refuse_images_without_a_series(easy_set, tmp_path, capsys):
    for flags in (["--context", "1"], ["--smooth", "3"]):
        out = tmp_path / flags[0].strip("-")
        assert cv.main(["--data", str(easy_set), "--weights", "none", "--epochs", "1", "--out", str(out),
                        "--no-progress", *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "has no series order (prev/next)" in err[0] and flags[0] in err[0]
        assert not out.exists()


def test_predict_gives_a_context_run_its_out_of_fold_probabilities_again(run, context_run, tmp_path, capsys):
    # fold model r0_f0 applied to the DICOM folder: its test slices get their oof.csv probabilities back, which
    # needs the same neighbours (the truncated slice a gap, as prepare made it) and, smoothed, the same series
    from smallct import predict
    from smallct.data.neighbours import Neighbours

    oof = pd.read_csv(context_run / "oof.csv", dtype={"id": str})
    test = oof[oof["fold"] == 0].set_index("id")
    columns = [f"prob_{n}" for n in LABELS]
    for smooth in ("1", "3"):
        out = tmp_path / f"p{smooth}.csv"
        assert predict.main(["--run", str(context_run), "--data", str(run["synthetic"]["root"]), "--fold", "r0_f0",
                             "--smooth", smooth, "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
        got = pd.read_csv(out, dtype={"id": str}).set_index("id")
        if smooth == "1":
            assert np.allclose(got.loc[test.index, columns], test[columns], atol=1e-5)
        else:  # each series of fold 0 smoothed alone: the same as smoothing its out-of-fold probabilities
            manifest = pd.read_csv(run["root"] / "prepared" / "manifest.csv", dtype={"id": str})
            links = Neighbours(manifest["prev"], manifest["next"])
            rows = np.flatnonzero(manifest["id"].isin(test.index))
            by_hand = links.take(rows).smooth(test.loc[manifest["id"].iloc[rows], columns].to_numpy(), 3)
            assert np.allclose(got.loc[manifest["id"].iloc[rows], columns], by_hand, atol=1e-5)
    capsys.readouterr()
    assert predict.main(["--run", str(context_run), "--data", str(run["root"] / "prepared" / "images"),
                         "--out", str(tmp_path / "png.csv"), "--no-progress"]) == 2
    assert "needs each slice's series: give a DICOM folder" in capsys.readouterr().err


def test_predict_applies_a_sequence_folder_over_each_series(run, context_run, tmp_path, capsys):
    # smallct.sequence on the context run, then predict with its folder: each fold's GRU over what the base run's
    # fold model of the same name says of the new series (the truncated slice a gap), averaged over the folds
    from smallct import predict, sequence
    from smallct.apply.predict import find_series
    from smallct.engine.sequence import apply_sequence

    folder = tmp_path / "seq"
    assert sequence.main([str(context_run), "--out", str(folder), "--epochs", "3", "--no-progress"]) == 0
    dicom = run["synthetic"]["root"]
    assert predict.main(["--run", str(folder), "--data", str(dicom), "--out", str(tmp_path / "seq.csv"),
                         "--submission", str(tmp_path / "sub.csv"), "--no-progress", "--device", "cpu"]) == 0
    got = pd.read_csv(tmp_path / "seq.csv", dtype={"id": str})
    columns = [f"prob_{n}" for n in LABELS]
    per_fold = {}
    for name in ("r0_f0", "r0_f1", "r0_f2"):
        out = tmp_path / f"{name}.csv"
        assert predict.main(["--run", str(context_run), "--data", str(dicom), "--fold", name, "--smooth", "1",
                             "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
        per_fold[name] = pd.read_csv(out, dtype={"id": str})[columns].to_numpy()
    files, links = find_series([dicom])
    readable = np.flatnonzero([f.stem != run["synthetic"]["corrupt"] for f in files])
    by_hand = apply_sequence(folder, per_fold, links.take(readable))
    assert np.allclose(got[columns].to_numpy(), by_hand, atol=1e-5)
    assert not np.allclose(by_hand, np.mean(list(per_fold.values()), axis=0), atol=1e-3)  # the GRU did something
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert len(sub) == 6 * (len(got) + 1)  # every image, the unreadable one at the training rates
    # --fold: the sequence model of that fold on its own fold model's outputs only
    assert predict.main(["--run", str(folder), "--data", str(dicom), "--fold", "r0_f1",
                         "--out", str(tmp_path / "one.csv"), "--no-progress", "--device", "cpu"]) == 0
    one = pd.read_csv(tmp_path / "one.csv", dtype={"id": str})[columns].to_numpy()
    assert np.allclose(one, apply_sequence(folder, {"r0_f1": per_fold["r0_f1"]}, links.take(readable)), atol=1e-5)


def test_context_refuses_folds_that_split_a_series(run, tmp_path, capsys):
    # slices without a patient used to stand alone in the folds: their series could then fall in two folds, and a
    # training input would carry a test slice as its neighbour. Without the patient column the series keeps them
    # together (read_manifest); a manifest that still splits them is refused before anything is written.
    import shutil

    from smallct.datasets.folder import read_manifest

    prepared = tmp_path / "prepared"
    shutil.copytree(run["root"] / "prepared", prepared)
    manifest = pd.read_csv(prepared / "manifest.csv", dtype=str, keep_default_na=False)
    manifest["patient"] = ""
    manifest.to_csv(prepared / "manifest.csv", index=False)
    dataset = read_manifest(prepared)
    assert len(set(dataset.groups)) == manifest["series"].nunique()  # one group per series, not per slice
    manifest["series"] = ""
    manifest.to_csv(prepared / "manifest.csv", index=False)
    out = tmp_path / "ctx"
    assert cv.main(["--data", str(prepared), "--weights", "none", "--img-size", "32", "--epochs", "1",
                    "--folds", "3", "--context", "1", "--group-similar", "0", "--out", str(out), "--no-progress",
                    "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "of one series fall in two folds" in err[0]
    assert not out.exists()
