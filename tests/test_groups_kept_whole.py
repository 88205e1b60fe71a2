"""No command splits a group: near-duplicates (planted, and the real Head CT set's known ones) never test in
two folds, for cv, nested (outer and inner), tune, curve and audit (few-shot: tests/studies/test_fewshot.py).

Each test reads the fold assignment from the command's own output files, never from the splitting
function, so a command that stopped passing its groups to the splitter fails here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from smallct import audit, curve, cv, tune
from smallct.config.run import CVConfig, DataConfig, TrainConfig
from smallct.config.studies import NestedConfig
from smallct.datasets.phantom import write_phantom_png_set
from smallct.engine.nested import run_nested

# the same slice saved twice in the Kaggle Head CT set (identical files, or one slice at two sizes)
HEAD_CT_DUPLICATES = [("188", "189"), ("005", "058"), ("004", "057"), ("011", "061")]
PLANTED = 12  # copies planted in the phantom set


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, list[tuple[str, str]]]:
    """36 phantom slices and an exact copy of each of the first 12 (as 036..047, same label): 48 images."""
    folder = write_phantom_png_set(tmp_path_factory.mktemp("planted"), n=36, seed=1)
    lines = (folder / "labels.csv").read_text().splitlines()
    pairs = []
    for i in range(PLANTED):
        shutil.copy(folder / f"{i:03d}.png", folder / f"{36 + i:03d}.png")
        lines.append(f"{36 + i},{lines[1 + i].split(',')[1]}")
        pairs.append((f"{i:03d}", f"{36 + i:03d}"))
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder, pairs


@pytest.fixture(scope="module", params=["planted", "head_ct"])
def data(request, planted) -> tuple[Path, list[tuple[str, str]]]:
    if request.param == "planted":
        return planted
    return request.getfixturevalue("head_ct_dir"), HEAD_CT_DUPLICATES


def norm(i) -> str:
    """An id as a zero-padded stem (ids of a CSV with integer ids may be written without the padding)."""
    return f"{int(i):03d}" if str(i).isdigit() else str(i)


def check_whole(ids, assignment, pairs, recorded=()) -> int:
    """Assert every pair (known, and those the run itself recorded) tests in one fold in every repeat; the count."""
    where = {norm(i): n for n, i in enumerate(ids)}
    assignment = np.atleast_2d(np.asarray(assignment))
    checked = 0
    for a, b in [*pairs, *[(p[0], p[1]) for p in recorded]]:
        if norm(a) in where and norm(b) in where:
            folds = assignment[:, where[norm(a)]], assignment[:, where[norm(b)]]
            assert np.array_equal(*folds), f"{a} and {b} test in different folds: {folds}"
            checked += 1
    return checked


def run_json(folder: Path) -> dict:
    return json.loads((folder / "run.json").read_text())


TINY = ["--arch", "resnet18", "--weights", "none", "--img-size", "16", "--epochs", "1", "--batch-size", "32",
        "--no-tta", "--workers", "1", "--no-progress"]


def test_cv_keeps_groups_whole(data, tmp_path):
    folder, pairs = data
    assert cv.main(["--data", str(folder), *TINY, "--folds", "3", "--repeats", "2", "--out", str(tmp_path)]) == 0
    record = run_json(tmp_path)
    assert check_whole(record["folds"]["ids"], record["folds"]["assignment"], pairs,
                       record["similar_images"]["pairs"]) >= len(pairs)


def test_nested_keeps_groups_whole_outside_and_inside(data, tmp_path):
    folder, pairs = data
    candidate = CVConfig(arch="resnet18", weights="none", workers=1, data=DataConfig(data=folder, img_size=16),
                         train=TrainConfig(epochs=1, batch_size=32, tta=False))
    run_nested(NestedConfig(candidates={"a": candidate}, folds=2, inner_folds=2, out=tmp_path), progress=False,
               log=lambda *_: None)
    outer = run_json(tmp_path)
    assert check_whole(outer["folds"]["ids"], outer["folds"]["assignment"], pairs) == len(pairs)
    inner_runs = sorted((tmp_path / "inner").glob("r*_f*/a"))
    assert len(inner_runs) == 2
    inner_checked = 0
    for inner in inner_runs:
        record = run_json(inner)
        inner_checked += check_whole(record["folds"]["ids"], record["folds"]["assignment"], pairs,
                                     record["similar_images"]["pairs"])
    # a pair lies in one outer training part or the other: each is checked in exactly one inner run
    assert inner_checked >= len(pairs)


def test_tune_trials_keep_groups_whole(data, tmp_path):
    folder, pairs = data
    assert tune.main(["--data", str(folder), *TINY, "--folds", "2", "--trials", "1", "--pruner", "none",
                      "--out", str(tmp_path)]) == 0
    trials = sorted((tmp_path / "trials").glob("*/run.json"))
    assert trials
    for path in trials:
        record = json.loads(path.read_text())
        assert check_whole(record["folds"]["ids"], record["folds"]["assignment"], pairs) == len(pairs)


def test_curve_keeps_groups_whole(data, tmp_path):
    folder, pairs = data
    assert curve.main(["--data", str(folder), "--arch", "resnet18", "--weights", "none", "--img-size", "16",
                       "--sizes", "8", "--folds", "3", "--out", str(tmp_path), "--no-progress"]) == 0
    record = json.loads((tmp_path / "curve.json").read_text())
    assert check_whole(record["folds"]["ids"], record["folds"]["assignment"], pairs,
                       record["similar_images"]["pairs"]) >= len(pairs)


def test_audit_keeps_groups_whole(data, tmp_path):
    folder, pairs = data
    assert audit.main(["--data", str(folder), "--folds", "3", "--repeats", "2", "--n-boot", "100",
                       "--out", str(tmp_path), "--no-progress"]) == 0
    record = json.loads((tmp_path / "audit.json").read_text())
    assert check_whole(record["fold_assignment"]["ids"], record["fold_assignment"]["assignment"], pairs) == len(pairs)
    assert record["ci_resampled"]["unit"] == "near-duplicate groups"
    assert record["ci_resampled"]["n_units"] <= record["n_images"] - len(pairs)
