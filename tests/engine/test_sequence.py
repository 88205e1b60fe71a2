"""The sequence model over each series (smallct.engine.sequence, ``smallct.sequence``): out-of-fold discipline,
alignment, the folder, the command and its refusals. On the session's RSNA runs with PERMUTED labels
(``rsna_permuted_runs`` in tests/conftest.py: ``permuted``, trained long enough to memorise its training slices,
and ``tiny``, one epoch, for the command end to end and --strict).
"""

import json
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from smallct import sequence
from smallct.datasets.rsna import LABELS
from smallct.engine.run_models import load_run
from smallct.engine.sequence import SequenceConfig, apply_sequence, check_run, run_sequence, sequence_fold
from smallct.engine.stacking import SliceFeatures
from smallct.engine.run_folder import RunFolder

QUIET = {"progress": False, "log": lambda *a: None}


@pytest.fixture(scope="module")
def stacked(rsna_permuted_runs):
    """The sequence model of the permuted run, honest (stacking) and deliberately leaky (in-fold features)."""
    runs = rsna_permuted_runs
    out = {}
    for mode in ("stacking", "in_fold"):
        cfg = SequenceConfig(run=runs["permuted"], out=runs["root"] / f"seq_{mode}", mode=mode, n_boot=200)
        out[mode] = (cfg, run_sequence(cfg, **QUIET))
    return out


def test_permuted_labels_leave_the_out_of_fold_auc_at_chance(stacked):
    cfg, results = stacked["stacking"]
    lo, hi = results["pooled_oof_ci95"]["mean_auc"]
    assert lo < 0.5 < hi, (lo, hi)
    assert results["features_from"] == "stacking" and results["sequence"]["how"].startswith("STACKING")
    assert results["ci_resampled"]["unit"] in ("patients", "patient groups")


def test_in_fold_features_find_signal_that_is_not_there(stacked):
    # the same harness with each slice described by a fold model that trained on it: the memorised labels leak
    # through the features, and the interval clears 0.5 (the out-of-fold discipline is what keeps it at chance)
    cfg, results = stacked["in_fold"]
    lo, _ = results["pooled_oof_ci95"]["mean_auc"]
    assert lo > 0.5, results["pooled_oof_ci95"]
    assert results["pooled_oof"]["mean_auc"] > stacked["stacking"][1]["pooled_oof_ci95"]["mean_auc"][1]


def test_every_slice_gets_one_prediction_per_repeat_in_the_order_of_oof_csv(rsna_permuted_runs, stacked):
    runs = rsna_permuted_runs
    cfg, results = stacked["stacking"]
    run = load_run(runs["permuted"])
    dataset = run.dataset(log=lambda *a: None)
    oof = pd.read_csv(cfg.out / "oof.csv", dtype={"id": str})
    base = pd.read_csv(runs["permuted"] / "oof.csv", dtype={"id": str})
    assert oof.columns.tolist() == base.columns.tolist()
    assert len(oof) == len(dataset) and sorted(oof["id"]) == sorted(dataset.ids)  # one row per slice and repeat
    assert oof["id"].tolist() == base["id"].tolist() and (oof["fold"] == base["fold"]).all()  # the run's folds
    assert (oof[list(LABELS)].to_numpy() == base[list(LABELS)].to_numpy()).all()
    probs = oof[[f"prob_{n}" for n in LABELS]].to_numpy()
    assert ((probs > 0) & (probs < 1)).all()
    folder = RunFolder(cfg.out)
    for r, k in ((0, 0), (0, 1), (0, 2)):
        mine, theirs = folder.read_fold(r, k), run.folder.read_fold(r, k)
        assert mine["test_index"] == theirs["test_index"] and mine["ids"] == theirs["ids"]
    assert sorted(p.name for p in folder.checkpoints_dir.iterdir()) == ["r0_f0.pt", "r0_f1.pt", "r0_f2.pt"]
    assert results["comparison"]["figures"]["mean_auc"]["a"] == pytest.approx(results["base_run"]["pooled_oof"]
                                                                              ["mean_auc"])
    for png in ("roc.png", "per_label_auc.png"):
        assert (cfg.out / png).stat().st_size > 1000


def test_the_labels_of_fold_k_never_reach_its_sequence_model(rsna_permuted_runs, stacked, tmp_path):
    runs = rsna_permuted_runs
    # mutant caught: the GRU of fold k trained on all chains (or its scale taken from them); also deterministic
    run = load_run(runs["permuted"])
    dataset = run.dataset(log=lambda *a: None)
    cfg = replace(stacked["stacking"][0], epochs=5)
    test = np.asarray(run.folder.read_fold(0, 2)["test_index"])
    flipped = dataset.labels.copy()
    flipped[test] = 1 - flipped[test]
    probs = []
    for i, labels in enumerate((dataset.labels, flipped)):
        folder = RunFolder(tmp_path / str(i))
        folder.folds_dir.mkdir(parents=True)
        folder.checkpoints_dir.mkdir()
        features = SliceFeatures(run, replace(dataset, labels=labels), "logits", folder, progress=False)
        probs.append(np.asarray(sequence_fold(cfg, features, folder, 0, 2)["probs"]))
    assert np.array_equal(probs[0], probs[1])


def test_the_command_end_to_end_strict_resumed_and_applied(rsna_permuted_runs, capsys):
    runs = rsna_permuted_runs
    out = runs["root"] / "tiny_strict"
    argv = [str(runs["tiny"]), "--out", str(out), "--strict", "--epochs", "3", "--n-boot", "100", "--no-progress"]
    assert sequence.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["features_from"] == "strict" and results["sequence"]["how"].startswith("STRICT")
    assert set(results["comparison"]["figures"]) >= {"weighted_log_loss", "mean_auc", "auc_any"}
    run, folder = load_run(runs["tiny"]), RunFolder(out)
    # the training series of outer fold 0 described by inner models trained without fold 0: folds 1 and 2
    inner = folder.inner_run(0, 0, "cnn")
    assert sorted(p.name for p in inner.folds_dir.iterdir()) == ["r0_f1.json", "r0_f2.json"]
    for j in (1, 2):
        inner_fold, outer_fold = inner.read_fold(0, j), run.folder.read_fold(0, j)
        assert inner_fold["test_index"] == outer_fold["test_index"]
        assert not np.allclose(inner_fold["probs"], outer_fold["probs"])  # another model: it never saw fold 0
    stamps = {p: p.stat().st_mtime_ns for p in folder.folds_dir.iterdir()}
    capsys.readouterr()
    assert sequence.main(argv) == 0  # resumes: nothing is trained again
    assert "resuming: 3 folds done" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in folder.folds_dir.iterdir()} == stamps

    # apply_sequence (what predict calls) with one fold's GRU and base model gives that fold's out-of-fold figures
    one = runs["root"] / "one_fold"
    shutil.copytree(out, one)
    for p in (one / "checkpoints").glob("*.pt"):
        if p.stem != "r0_f1":
            p.unlink()
    fold = run.folder.read_fold(0, 1)
    rows = np.asarray(fold["test_index"])
    dataset = run.dataset(log=lambda *a: None)
    applied = apply_sequence(one, {"r0_f1": np.asarray(fold["probs"])}, dataset.neighbours.take(rows))
    assert np.allclose(applied, folder.read_fold(0, 1)["probs"], atol=1e-5)


def test_refusals_are_one_line(rsna_permuted_runs, small_run, tmp_path, capsys):
    runs = rsna_permuted_runs
    assert sequence.main([str(small_run), "--no-progress"]) == 2  # a binary phantom run
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a binary run" in err and "multi-label RSNA run" in err
    run = load_run(runs["tiny"])
    dataset = run.dataset(log=lambda *a: None)
    with pytest.raises(ValueError, match="no series order"):
        check_run(run, replace(dataset, neighbours=None))
    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs["tiny"], unfinished, ignore=shutil.ignore_patterns("sequence", "tensorboard"))
    (unfinished / "folds" / "r0_f2.json").unlink()
    assert sequence.main([str(unfinished), "--no-progress"]) == 2
    assert "2 of 3 folds finished; finish the run first" in capsys.readouterr().err
    assert sequence.main([str(runs["tiny"]), "--drop", "1", "--no-progress"]) == 2
    assert "--drop 1: expected a number, at least 0 and below 1" in capsys.readouterr().err
    other = tmp_path / "seq"  # holds a sequence model: another setting is refused
    assert sequence.main([str(runs["tiny"]), "--out", str(other), "--epochs", "1", "--n-boot", "100",
                          "--no-progress"]) == 0
    capsys.readouterr()
    assert sequence.main([str(runs["tiny"]), "--out", str(other), "--epochs", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds a sequence model with other settings" in err and "epochs" in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="asks for --device cuda on a machine without one")
def test_a_device_that_is_not_there_is_refused_before_the_folder_is_written(rsna_permuted_runs, tmp_path, capsys):
    # mutant caught: resolve_device after start_folder (0.6 as first written left sequence.json and empty folders)
    out = tmp_path / "seq"
    assert sequence.main([str(rsna_permuted_runs["tiny"]), "--out", str(out), "--device", "cuda",
                          "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device cuda" in err
    assert not out.exists()
