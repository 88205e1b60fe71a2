"""Which class is positive: named on purpose, recorded in every file of a run, shown on its figures."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from smallct.cv import main as cv_main
from smallct.datasets.classes import check_class_sizes, class_note, name_classes
from smallct.datasets.folder import Dataset
from smallct.datasets.phantom import write_phantom_png_set
from smallct.predict import main as predict_main

TINY = ["--arch", "resnet18", "--weights", "none", "--img-size", "32", "--epochs", "1", "--batch-size", "8",
        "--folds", "2", "--no-tta", "--workers", "1", "--no-progress"]


def test_multilabel_sets_have_no_positive_class():
    names = ["any", "epidural"]
    ds = Dataset(ids=["a", "b"], files=[], labels=np.array([[1, 0], [0, 0]]), class_names=names, task="multilabel",
                 source="rsna")
    assert name_classes(ds) is ds
    with pytest.raises(ValueError, match="multi-label set; its labels keep their own names"):
        name_classes(ds, positive_class="any")
    assert class_note("multilabel", names).startswith("labels: any, epidural (multi-label: no positive class")
    assert "multi-class: no positive class" in class_note("multiclass", ["a", "b", "c"])
    assert class_note("binary", ["normal", "hemorrhage"]) == (
        "classes: normal = 0, hemorrhage = 1; prob, sensitivity and the ROC curve are for the positive class "
        "hemorrhage")


def test_a_class_with_too_few_images_is_named_with_its_count_and_ids():
    ds = Dataset(ids=[f"{i:03d}" for i in range(7)], files=[], labels=np.array([0, 0, 0, 1, 1, 1, 2]),
                 class_names=["0", "1", "2", "3"], task="multiclass", source="data (labels data/labels.csv)")
    with pytest.raises(ValueError) as err:
        check_class_sizes(ds, 2, "NEED")
    # mutants caught: a count of < 1 (class 2 has one), classes without images left out, ids of another class
    assert str(err.value) == "data (labels data/labels.csv): class 2 has 1 image (006); class 3 has 0 images; NEED"
    check_class_sizes(Dataset(ids=["a"], files=[], labels=np.array([[1, 0]]), class_names=["any", "epidural"],
                              task="multilabel", source="rsna"), 5, "NEED")  # label combinations: make_folds' own
    check_class_sizes(Dataset(ids=list("abcdef"), files=[], labels=np.array([0, 1, 0, 1, 0, 1]),
                              class_names=["0", "1"], source="ok"), 3, "NEED")  # 3 of each: enough for 3 folds


@pytest.fixture(scope="module")
def class_folders(tmp_path_factory):
    """12 phantom slices as two class folders whose file names repeat: hemorrhage/000..005, normal/000..005."""
    flat = write_phantom_png_set(tmp_path_factory.mktemp("flat"), n=12, seed=0)  # 000-005 lesion, 006-011 none
    root = tmp_path_factory.mktemp("folders")
    for i in range(12):
        cls = "hemorrhage" if i < 6 else "normal"
        (root / cls).mkdir(exist_ok=True)
        shutil.copy(flat / f"{i:03d}.png", root / cls / f"{i % 6:03d}.png")
    return root


def test_cv_and_predict_name_the_positive_class(class_folders, tmp_path, capsys):
    out = tmp_path / "run"
    # sorted folder names would make "normal" the positive class: refused, one line naming both
    assert cv_main(["--data", str(class_folders), *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("smallct.cv: error: ")
    assert "'hemorrhage' and 'normal'" in err and "--positive-class" in err and not out.exists()

    assert cv_main(["--data", str(class_folders), *TINY, "--positive-class", "hemorrhage", "--out", str(out)]) == 0
    assert "are for the positive class hemorrhage" in capsys.readouterr().out
    record = json.loads((out / "run.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert record["class_names"] == results["class_names"] == ["normal", "hemorrhage"]
    assert record["positive_class"] == results["positive_class"] == "hemorrhage"
    assert record["config"]["data"]["positive_class"] == "hemorrhage"
    oof = pd.read_csv(out / "oof.csv", dtype={"id": str})
    assert sorted(oof["id"]) == [f"{c}/{i:03d}" for c in ("hemorrhage", "normal") for i in range(6)]
    assert (oof["label"] == oof["id"].str.startswith("hemorrhage").astype(int)).all()  # 1: hemorrhage
    with Image.open(out / "roc.png") as roc, Image.open(out / "confusion.png") as confusion:
        assert "positive class: hemorrhage" in roc.text["Title"]
        assert roc.text["Description"] == "x: 1 - specificity (false positive rate); y: sensitivity (of hemorrhage)"
        assert "positive class: hemorrhage" in confusion.text["Title"]
        assert confusion.text["Description"] == "x: predicted class; y: true class"

    preds_csv = tmp_path / "preds.csv"
    assert predict_main(["--run", str(out), "--data", str(class_folders), "--out", str(preds_csv),
                         "--no-progress"]) == 0
    preds = pd.read_csv(preds_csv, dtype={"id": str})
    joined = oof.merge(preds, on="id", suffixes=("", "_pred"), validate="one_to_one")
    assert len(joined) == 12 and (joined["file"] == joined["file_pred"]).all()
    assert set(preds["pred_class"]) <= {"normal", "hemorrhage"}
    assert (preds["pred_class"] == np.where(preds["prob"] >= 0.5, "hemorrhage", "normal")).all()
