"""bench/rsna.py, the RSNA series-context bench of issue #30, kept runnable on a tiny set: every arm runs, the paired
comparisons over patients land in its JSON file, and a second call reads the finished folders instead of training."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import rsna  # noqa: E402


def test_paired_is_b_minus_a_over_patients():
    # Mutants caught: A - B instead of B - A; an interval that is not paired (excludes 0 for identical predictions);
    # excludes_0 read the wrong way round.
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(40), 10)
    y = (rng.random((400, 6)) < 0.3).astype(float)
    noisy = np.clip(0.3 + rng.normal(0, 0.05, (400, 6)), 0.01, 0.99)
    better = np.clip(0.7 * y + 0.3 * noisy, 0.01, 0.99)
    out = rsna.paired(y, noisy, better, patients, n_boot=200)
    wll, auc = out["weighted_log_loss"], out["mean_auc"]
    assert wll["difference"] == pytest.approx(wll["b"] - wll["a"]) and wll["difference"] < 0
    assert auc["difference"] > 0 and wll["excludes_0"] and auc["excludes_0"]
    assert wll["ci95"][1] < 0 < auc["ci95"][0]
    same = rsna.paired(y, noisy, noisy, patients, n_boot=200)
    assert same["mean_auc"]["ci95"] == [0.0, 0.0] and not same["mean_auc"]["excludes_0"]


def test_settings_differ_reads_run_json(tmp_path):
    # Mutants caught: a finished run reused whatever its --context (the default 0 not checked), or its epochs.
    (tmp_path / "run.json").write_text(json.dumps({"config": {
        "arch": "tf_efficientnet_lite0", "weights": "imagenet", "folds": 5, "seed": 0, "context": 0, "smooth": 1,
        "data": {"img_size": 32}, "train": {"epochs": 1, "batch_size": 64, "lr": 0.002, "warmup_epochs": 0,
                                            "augment": "flip"}}}))
    assert rsna.settings_differ(tmp_path, rsna.CV_2D) == []
    assert rsna.settings_differ(tmp_path, [*rsna.CV_2D, "--context", "1"]) == ["--context 1 (run.json: 0)"]
    assert rsna.settings_differ(tmp_path, [*rsna.CV_2D, "--epochs", "2"]) == ["--epochs 2 (run.json: 1)"]


def test_every_arm_runs_and_is_written(tmp_path):
    # 6 patients x 6 slices at 32 px (the smallest the JPEG 2000 slices allow), 16 px models, 3 folds (--strict
    # needs 3); --features both is the stacking arm with another flag, left out here for time.
    common = ["--out", str(tmp_path / "work"), "--results", str(tmp_path), "--n-boot", "100",
              "--arms", "2d,context1,sequence,sequence-strict",
              "--cv-extra", "--folds 3 --img-size 16 --batch-size 16 --workers 0 --threads 1",
              "--sequence-extra", "--epochs 2 --n-boot 100 --device cpu"]
    rsna.main(["all", "--patients", "6", "--slices", "6", "--size", "32", *common])
    first = json.loads((tmp_path / "rsna-cpu.json").read_text())
    assert first["generate"]["settings"]["n_patients"] == 6
    arms = first["arms"]
    rows = {r["arm"]: r for r in arms["rows"]}
    assert list(rows) == ["2d", "context1", "context1+smooth3", "sequence", "sequence-strict"]
    assert arms["not_measured"] == ["sequence-both"]
    assert [(c["a"], c["b"]) for c in arms["paired"]] == rsna.COMPARISONS[:4]
    assert all(isinstance(v, bool) for v in arms["targets"].values()) and len(arms["targets"]) == 3
    for c in arms["paired"]:
        for k in ("weighted_log_loss", "mean_auc"):
            assert c[k]["difference"] == pytest.approx(c[k]["b"] - c[k]["a"])
            assert isinstance(c[k]["excludes_0"], bool) and len(c[k]["ci95"]) == 2
    by = {(c["a"], c["b"]): c for c in arms["paired"]}
    assert by[("2d", "context1")]["weighted_log_loss"]["a"] == pytest.approx(rows["2d"]["weighted_log_loss"])
    assert by[("context1", "context1+smooth3")]["weighted_log_loss"]["b"] == pytest.approx(
        rows["context1+smooth3"]["weighted_log_loss"])  # the smoothing recomputed here is the run's own
    assert rows["context1"]["epoch_s"] > 0 and rows["sequence-strict"]["cpu_s"] > 0
    assert not any(r.get("reused") for r in arms["rows"])
    # a second call reads every finished folder: nothing is trained again, the figures are the same
    rsna.main(["arms", *common])
    again = json.loads((tmp_path / "rsna-cpu.json").read_text())["arms"]
    assert all(r["reused"] for r in again["rows"] if r["arm"] != "context1+smooth3")
    assert again["paired"] == arms["paired"] and "generate" in json.loads((tmp_path / "rsna-cpu.json").read_text())
