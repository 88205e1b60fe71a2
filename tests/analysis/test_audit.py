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
