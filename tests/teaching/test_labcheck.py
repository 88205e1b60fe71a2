import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from smallct.teaching import labcheck
from smallct.io.windows import window
from smallct.datasets.phantom import write_phantom_png_set


def test_quick_and_choose_follow_the_environment(monkeypatch):
    monkeypatch.delenv("SMALLCT_QUICK", raising=False)
    assert not labcheck.quick() and labcheck.choose(1, 2) == 2
    for value in ("1", "true", "YES", " on "):
        monkeypatch.setenv("SMALLCT_QUICK", value)
        assert labcheck.quick() and labcheck.choose(1, 2) == 1
    monkeypatch.setenv("SMALLCT_QUICK", "0")
    assert not labcheck.quick()


def test_data_dir_is_the_head_ct_folder_when_given(tmp_path, monkeypatch):
    monkeypatch.setenv("SMALLCT_HEAD_CT", str(tmp_path))
    said = []
    assert labcheck.data_dir(log=said.append) == tmp_path
    assert "SMALLCT_HEAD_CT" in said[0]
    monkeypatch.setenv("SMALLCT_HEAD_CT", str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="absent: no such folder"):
        labcheck.data_dir(log=said.append)


def test_data_dir_writes_the_phantom_set_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("SMALLCT_HEAD_CT", raising=False)
    monkeypatch.setenv("SMALLCT_QUICK", "1")
    said = []
    folder = labcheck.data_dir(log=said.append)
    assert folder.parent == Path(os.environ["SMALLCT_CACHE"])
    assert len(list(folder.glob("*.png"))) == 32 and (folder / "labels.csv").is_file()
    assert "SYNTHETIC" in said[0]
    stamp = (folder / "000.png").stat().st_mtime_ns
    assert labcheck.data_dir(log=said.append) == folder
    assert (folder / "000.png").stat().st_mtime_ns == stamp  # not written again
    assert len(list(labcheck.data_dir(n=6, log=said.append).glob("*.png"))) == 6


def test_out_dir_separates_quick_and_full_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SMALLCT_QUICK", "1")
    assert labcheck.out_dir("nb").resolve() == (tmp_path / "runs" / "quick" / "nb").resolve()
    monkeypatch.delenv("SMALLCT_QUICK")
    assert labcheck.out_dir("nb").is_dir() and labcheck.out_dir("nb").parts[-2] == "full"


def test_pretrained_or_none_says_which():
    said = []
    assert labcheck.pretrained_or_none("tf_efficientnet_lite0", log=said.append) in ("imagenet", "none")
    assert labcheck.pretrained_or_none("no_such_arch_xyz", log=said.append) == "none"
    assert "random initialisation" in said[-1]


def test_rsna_dicom_gives_a_labelled_dicom_set():
    rsna = labcheck.rsna_dicom(n_patients=2, slices_per_series=2, size=32)
    assert len(rsna["files"]) == 4 and rsna["labels"].is_file()
    assert all(f.suffix == ".dcm" and f.parent == rsna["root"] for f in rsna["files"])


def test_montage_draws_one_axis_per_image_in_a_grid():
    images = [np.zeros((8, 8), np.uint8), np.zeros((8, 10, 3), np.uint8), np.zeros((3, 6, 6), np.uint8)]
    import torch

    images[2] = torch.zeros((3, 6, 6), dtype=torch.uint8)
    fig = labcheck.montage(images, ["a", "b", "c"], ncols=2, suptitle="t")
    shown = [ax for ax in fig.axes if ax.images]
    assert len(fig.axes) == 4 and len(shown) == 3
    assert [ax.get_title() for ax in shown] == ["a", "b", "c"]
    assert shown[2].images[0].get_array().shape == (6, 6, 3)
    with pytest.raises(ValueError, match="no images"):
        labcheck.montage([])


def test_same_compares_numbers_arrays_dicts_and_series():
    assert labcheck.same(0.1 + 0.2, 0.3) and not labcheck.same(0.31, 0.3)
    assert labcheck.same(np.arange(3), [0, 1, 2]) and not labcheck.same(np.arange(3), np.arange(4))
    assert labcheck.same((4, 5, 3), (4, 5, 3)) and not labcheck.same((4, 5, 3), (5, 4, 3))
    assert labcheck.same(pd.Series({"0": 1.0, "1": 2.0}), {"0": 1, "1": 2})
    assert not labcheck.same({"0": 1.0}, {"0": 1, "1": 2})
    assert labcheck.same(np.int64(3), 3) and not labcheck.same("3", 3)
    assert labcheck.same(True, True) and not labcheck.same(1, True)


def test_check_prints_correct_not_yet_and_raises_only_when_strict(monkeypatch, capsys):
    hu = np.array([[-1000.0, 0.0, 40.0, 80.0, 2000.0]])
    monkeypatch.delenv("SMALLCT_LABCHECK_STRICT", raising=False)
    verdict = labcheck.check("brain_window_by_hand", window(hu, 40, 80), hu=hu)
    assert verdict and verdict.correct and "correct (brain_window_by_hand)" in capsys.readouterr().out
    verdict = labcheck.check("brain_window_by_hand", None, hu=hu)
    assert not verdict and "not yet (brain_window_by_hand): v = clip" in capsys.readouterr().out
    wrong = np.zeros((1, 5), np.uint8)
    assert not labcheck.check("brain_window_by_hand", wrong, hu=hu)
    assert "is not the expected answer. Hint:" in capsys.readouterr().out
    monkeypatch.setenv("SMALLCT_LABCHECK_STRICT", "1")
    with pytest.raises(AssertionError, match="brain_window_by_hand"):
        labcheck.check("brain_window_by_hand", wrong, hu=hu)
    assert not labcheck.check("brain_window_by_hand", None, hu=hu)  # unanswered: never an error
    with pytest.raises(ValueError, match="unknown"):
        labcheck.check("no_such_exercise", 1)


def test_exercises_of_the_explore_notebook_on_a_small_set(tmp_path, capsys):
    folder = write_phantom_png_set(tmp_path / "set", n=10, seed=1)
    from smallct import describe

    table = describe(folder)
    assert labcheck.check("rgba_count", int((table["mode"] == "RGBA").sum()), folder=folder)
    assert not labcheck.check("rgba_count", 0, folder=folder)  # the phantom cycles through RGBA too
    assert labcheck.check("median_width_by_class", table.groupby("label")["width"].median(), folder=folder)
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[5:9, 0:4] = 200
    assert labcheck.check("cropped_shape", (8, 6, 3), rgb=rgb)  # rows 3..10, columns 0..5
