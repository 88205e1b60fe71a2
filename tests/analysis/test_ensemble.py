"""Ensembles of runs: members made from one real tiny cv run (``small_run``) by editing its oof.csv, and
multi-class members written by hand."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from smallct.analysis.ensemble import best_member, ensemble_runs, normalised_weights
from smallct.ensemble import main
from tests.analysis import write_multiclass_run


def member(run, folder, prob=None):
    """A copy of ``run`` (run.json, oof.csv, results.json) whose oof ``prob`` is ``prob(p, label)``."""
    shutil.copytree(run, folder, ignore=shutil.ignore_patterns("checkpoints", "folds", "*.png"))
    if prob is not None:
        oof = pd.read_csv(folder / "oof.csv", dtype={"id": str})
        oof["prob"] = prob(oof["prob"].to_numpy(), oof["label"].to_numpy())
        oof["pred"] = (oof["prob"] >= 0.5).astype(int)
        oof.to_csv(folder / "oof.csv", index=False)
    return folder


def probs(folder) -> pd.Series:
    return pd.read_csv(folder / "oof.csv", dtype={"id": str}).set_index("id")["prob"]


def test_the_ensemble_is_the_weighted_mean_with_its_figures_and_a_paired_comparison(small_run, tmp_path, capsys):
    rng = np.random.default_rng(0)
    b = member(small_run, tmp_path / "b", lambda p, y: p ** 2)
    c = member(small_run, tmp_path / "c", lambda p, y: np.where(y == 1, 0.8, 0.2) + rng.uniform(-0.1, 0.1, len(y)))
    out = tmp_path / "ens"
    res = ensemble_runs([small_run, b, c], out, weights=[1, 2, 1], n_boot=300)

    got, p = probs(out), probs(small_run)
    expected = (p + 2 * probs(b) + probs(c)) / 4
    assert np.allclose(got.loc[p.index], expected, atol=1e-12)
    # one image by hand: b holds the square of the run's probability
    assert got["001"] == pytest.approx((p["001"] + 2 * p["001"] ** 2 + probs(c)["001"]) / 4)

    oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
    assert list(oof.columns) == list(pd.read_csv(small_run / "oof.csv").columns)
    assert (oof["pred"] == (oof["prob"] >= 0.5)).all()
    saved = json.loads((out / "results.json").read_text())
    assert saved["pooled_oof"]["accuracy"] == pytest.approx(((oof["prob"] >= 0.5) == oof["label"]).mean())
    lo, hi = saved["pooled_oof_ci95"]["accuracy"]
    assert lo <= saved["pooled_oof"]["accuracy"] <= hi and hi - lo > 0.05
    assert saved["ci_resampled"] == {"unit": "images", "n_units": 40, "n_images": 40}
    assert len(saved["per_fold"]) == 2 and "accuracy" in saved["mean_std_over_folds"]
    assert [m["weight"] for m in saved["ensemble"]["members"]] == pytest.approx([0.25, 0.5, 0.25])
    assert saved["ensemble"]["members"][2]["pooled_oof"]["accuracy"] == 1.0  # c predicts every image right
    assert res == saved

    # the best member is c (accuracy 1.0): the comparison is ensemble (B) - c (A), on the grouped units
    comparison = json.loads((out / "compare.json").read_text())
    assert comparison["run_a"]["path"] == str(c) and comparison["run_b"]["path"] == str(out)
    assert comparison["accuracy"]["a"] == 1.0
    assert comparison["accuracy"]["difference"] == pytest.approx(saved["pooled_oof"]["accuracy"] - 1.0)
    assert len(comparison["accuracy"]["ci95"]) == 2 and comparison["ci_resampled"]["n_units"] == 40
    assert comparison["nadeau_bengio"] is None and "excludes 0): B against A" not in comparison["sentence"]
    assert json.loads((out / "ensemble.json").read_text())["best_member"]["path"] == str(c)
    assert (out / "roc.png").stat().st_size > 5000 and (out / "confusion.png").is_file()
    printed = capsys.readouterr().out
    assert "95% paired CI" in printed and "pooled out-of-fold accuracy" in printed


def test_a_run_with_itself_is_the_run(small_run, tmp_path):
    out = tmp_path / "self"
    res = ensemble_runs([small_run, small_run], out, n_boot=1000, seed=0, log=lambda *a: None)
    run = json.loads((small_run / "results.json").read_text())  # cv's bootstrap: 1000 resamples, seed 0
    for key in ("pooled_oof", "pooled_oof_ci95", "per_fold", "mean_std_over_folds", "ci_resampled"):
        assert res[key] == run[key], key
    pd.testing.assert_frame_equal(pd.read_csv(out / "oof.csv"), pd.read_csv(small_run / "oof.csv"))
    assert res["ensemble"]["comparison"]["accuracy"]["ci95"] == [0.0, 0.0]


def test_a_run_on_other_folds_is_one_line_naming_both(small_run, tmp_path, capsys):
    other = member(small_run, tmp_path / "other")
    record = json.loads((other / "run.json").read_text())
    record["folds"]["assignment"] = (1 - np.asarray(record["folds"]["assignment"])).tolist()
    record["config"]["seed"] = 1
    (other / "run.json").write_text(json.dumps(record))
    assert main([str(small_run), str(other), "--out", str(tmp_path / "ens"), "--n-boot", "200"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("smallct.ensemble: error:") and len(err.splitlines()) == 1
    assert str(small_run) in err and str(other) in err
    assert "different fold assignments" in err and "seed 0 vs 1" in err
    assert not (tmp_path / "ens").exists()


def test_unfinished_runs_bad_weights_and_a_member_as_out_are_refused(small_run, tmp_path):
    unfinished = member(small_run, tmp_path / "unfinished")
    (unfinished / "oof.csv").unlink()
    with pytest.raises(ValueError, match=r"unfinished: no oof.csv; the run has not finished"):
        ensemble_runs([small_run, unfinished], tmp_path / "ens", n_boot=200)
    with pytest.raises(ValueError, match="is the member run"):
        ensemble_runs([small_run, small_run], small_run, n_boot=200)
    with pytest.raises(ValueError, match="holds a smallct.cv run"):
        ensemble_runs([small_run, small_run], member(small_run, tmp_path / "a_run"), n_boot=200)
    with pytest.raises(ValueError, match="3 weights for 2 runs"):
        ensemble_runs([small_run, small_run], tmp_path / "ens", weights=[1, 2, 3])
    multilabel = member(small_run, tmp_path / "rsna")
    record = json.loads((multilabel / "run.json").read_text())
    (multilabel / "run.json").write_text(json.dumps({**record, "task": "multilabel"}))
    with pytest.raises(ValueError, match="rsna: a multi-label run; smallct.ensemble averages binary and multi"):
        ensemble_runs([small_run, multilabel], tmp_path / "ens", n_boot=200)
    assert not (tmp_path / "ens").exists()


def test_weights_and_the_best_member():
    assert normalised_weights(None, 4).tolist() == [0.25] * 4
    assert normalised_weights([1, 3], 2).tolist() == [0.25, 0.75]
    with pytest.raises(ValueError, match=">= 0 and not all 0"):
        normalised_weights([0, 0], 2)
    # equal accuracy: the higher AUC wins; an undefined AUC loses the tie
    figures = [{"accuracy": 0.8, "roc_auc": 0.85}, {"accuracy": 0.8, "roc_auc": 0.9}, {"accuracy": 0.7, "roc_auc": 1}]
    assert best_member(figures) == 1
    assert best_member([{"accuracy": 0.8, "roc_auc": float("nan")}, {"accuracy": 0.8, "roc_auc": 0.5}]) == 1


def test_multiclass_members(tmp_path):
    y = np.tile([0, 1, 2], 20)
    ids = [f"{i:03d}" for i in range(len(y))]
    assignment = (np.arange(len(y)) // 3 % 3)[None]  # three folds of 20 (every class in each), one repeat
    rng = np.random.default_rng(1)
    runs, stacked = [], []
    for name, noise in (("a", 2.0), ("b", 1.0)):
        logits = np.eye(3)[y] * 2 + rng.normal(0, noise, (len(y), 3))
        P = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        folder = tmp_path / name
        write_multiclass_run(folder, ids, y, P, assignment)
        runs.append(folder)
        stacked.append(P)
    out = tmp_path / "ens"
    res = ensemble_runs(runs, out, n_boot=200, log=lambda *a: None)
    mean = (stacked[0] + stacked[1]) / 2
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str}).set_index("id").loc[ids]
    assert np.allclose(oof[["prob_p", "prob_q", "prob_r"]].to_numpy(), mean)
    assert (oof["pred"].to_numpy() == mean.argmax(1)).all()
    assert res["pooled_oof"]["accuracy"] == pytest.approx((mean.argmax(1) == y).mean())
    assert res["task"] == "multiclass" and res["folds"] == 3 and len(res["per_fold"]) == 3
    assert (out / "confusion.png").is_file() and not (out / "roc.png").exists()
    assert json.loads((out / "compare.json").read_text())["run_a"]["path"] == str(runs[1])  # less noise: best
