"""Shortcut audit on small generated PNG sets: one where image size gives the label away, one where it does not."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from smallct.analysis.audit import audit
from smallct.audit import main
from smallct.datasets.explore import size_note
from smallct.datasets.folder import load_dataset


def write_set(folder, n, size_of_label, seed):
    """``n`` noise PNGs with labels.csv; ``size_of_label(label, rng)`` gives each image's (width, height)."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    labels = np.tile([0, 1], n // 2)
    for i, y in enumerate(labels):
        w, h = size_of_label(y, rng)
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    (folder / "labels.csv").write_text("id, hemorrhage\n" + "".join(f"{i},{y}\n" for i, y in enumerate(labels)))
    return folder


def test_size_shortcut_is_found(tmp_path, capsys):
    data = write_set(tmp_path / "shortcut", 40, lambda y, rng: (48 + 24 * y, int(rng.integers(40, 60))), seed=0)
    out = tmp_path / "out"
    assert main(["--data", str(data), "--out", str(out), "--n-boot", "200", "--no-progress"]) == 0
    result = json.loads((out / "audit.json").read_text())
    size = result["feature_sets"]["size"]
    assert size["accuracy"] >= 0.95 and size["above_chance"]
    assert result["chance"] == 0.5
    assert result["warning"].startswith("WARNING: width, height, aspect ratio and mode alone")
    assert result["by_class"]["1"]["median_width"] == 72
    assert (out / "audit.png").is_file() and (out / "features.csv").is_file()
    assert "WARNING" in capsys.readouterr().out


def test_no_shortcut_no_warning(tmp_path):
    data = write_set(tmp_path / "fair", 40, lambda y, rng: (int(rng.integers(40, 80)), int(rng.integers(40, 80))),
                     seed=1)
    result = audit(load_dataset(data), n_boot=200, progress=False)
    for s in result["feature_sets"].values():
        assert s["ci95"]["accuracy"][0] <= 0.5 and not s["above_chance"]
    assert result["warning"] is None


def test_size_note_reads_headers_only(tmp_path):
    a = tmp_path / "a.png"
    b = tmp_path / "b.png"
    Image.new("RGB", (30, 20)).save(a)
    Image.new("RGBA", (50, 20)).save(b)
    note = size_note([a, b], "DIR")
    assert note == ("note: image sizes differ (width 30-50 px, height 20-20 px); modes differ (RGB, RGBA); "
                    "check for a size shortcut with: python -m smallct.audit --data DIR")
    assert size_note([a, a], "DIR") is None


def test_bad_folder_is_one_line_error(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "missing"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smallct.audit: error:") and len(err.strip().splitlines()) == 1


def test_folds_of_a_run_are_used(tmp_path):
    from smallct.analysis.audit import run_folds

    data = write_set(tmp_path / "d", 20, lambda y, rng: (40 + 8 * y, 40), seed=2)
    dataset = load_dataset(data)
    assignment = np.tile(np.arange(4), 5)[None]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(json.dumps({"folds": {"ids": dataset.ids,
                                                                     "assignment": assignment.tolist()}}))
    assert np.array_equal(run_folds(tmp_path / "run", dataset).assignment, assignment)
    result = audit(dataset, n_boot=100, progress=False, assignment=run_folds(tmp_path / "run", dataset))
    assert result["folds"] == 4 and result["folds_from"] == "the given fold assignment"
    other = load_dataset(data).subset(np.arange(10))
    with pytest.raises(ValueError, match="other images"):
        run_folds(tmp_path / "run", other)


def test_each_seed_and_repeat_grows_its_own_forests():
    from smallct.analysis.audit import cross_validated_probs

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)), np.tile([0, 1], 20)
    folds = np.tile(np.arange(40) // 2 % 2, (11, 1))  # the same folds in every repeat: only the forests' seeds differ
    P = cross_validated_probs(X, y, folds, 2, seed=0)
    Q = cross_validated_probs(X, y, folds[:1], 2, seed=1)
    assert not np.allclose(P[10], Q[0])  # smallct 0.3: seed 0's repeat 10 grew the forests of seed 1's repeat 0
    assert not np.allclose(P[1], P[0])


def test_intervals_resample_the_groups_the_folds_keep_whole(tmp_path):
    """With each slice saved 4 times, the audit's interval is the grouped bootstrap (10 groups), not one over 40
    images. Mutant: analysis/audit.py handing ``len(y)`` (images) to the bootstrap, which makes it narrower."""
    from smallct.analysis.audit import AUDITED, FEATURE_SETS, cross_validated_probs, design_matrix, metadata_features
    from smallct.data.folds import Folds
    from smallct.data.similar import Grouping
    from smallct.evaluation.intervals import Units, over_repeats, pooled_figures
    from smallct.evaluation.metrics import classification_metrics

    rng = np.random.default_rng(3)
    folder = tmp_path / "copies"
    folder.mkdir()
    rows = []
    for g in range(10):  # a partial size shortcut: 10 slices, each saved 4 times (same size, same label)
        y = g % 2
        w, h = 40 + int(rng.integers(0, 8)) + 4 * y, 40
        image = rng.integers(0, 256, (h, w), dtype=np.uint8)
        for c in range(4):
            Image.fromarray(image).save(folder / f"{4 * g + c:03d}.png")
            rows.append(f"{4 * g + c},{y}\n")
    (folder / "labels.csv").write_text("id, hemorrhage\n" + "".join(rows))
    dataset = load_dataset(folder)
    groups = np.repeat(np.arange(10), 4)
    assignment = np.repeat(np.arange(5), 8)[None]  # each group in one fold
    folds = Folds(assignment, Grouping(groups, unit="near-duplicate groups"))
    result = audit(dataset, n_boot=300, seed=0, progress=False, assignment=folds)
    assert result["ci_resampled"] == {"unit": "near-duplicate groups", "n_units": 10, "n_images": 40}
    assert result["ci_method"].startswith("percentile bootstrap over 10 near-duplicate groups of 40 images")
    y = dataset.labels
    X = design_matrix(metadata_features(dataset.files, progress=False), FEATURE_SETS["size"])
    figure = over_repeats(classification_metrics, y, cross_validated_probs(X, y, assignment, 2, 0), AUDITED)
    _, grouped = pooled_figures(figure, Units(40, groups, "near-duplicate groups"), AUDITED, n_boot=300, seed=0)
    _, images = pooled_figures(figure, 40, AUDITED, n_boot=300, seed=0)
    assert result["feature_sets"]["size"]["ci95"] == grouped
    width = {name: ci["accuracy"][1] - ci["accuracy"][0] for name, ci in (("groups", grouped), ("images", images))}
    assert width["groups"] > width["images"]  # 4 copies resampled one by one look like 4 independent cases


def test_n_boot_is_checked_before_anything_is_written(tmp_path, capsys):
    data = write_set(tmp_path / "d", 20, lambda y, rng: (40 + 8 * y, 40), seed=2)
    for n_boot in ("0", "1", "99"):  # 0 was a KeyError traceback; 1 wrote "95% CI 66%-66%", then failed
        out = tmp_path / f"out{n_boot}"
        assert main(["--data", str(data), "--n-boot", n_boot, "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"smallct.audit: error: --n-boot {n_boot}: use at least 100 resamples (default 1000)"]
        assert not out.exists()
    with pytest.raises(ValueError, match="--n-boot 0: use at least 100"):
        audit(load_dataset(data), n_boot=0, progress=False)
