import numpy as np
import pytest
from PIL import Image

from smallct.datasets.folder import load_dataset


def make_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(folder / name)
    return folder


def test_head_ct_labels_as_distributed(head_ct_dir):
    ds = load_dataset(head_ct_dir)
    assert len(ds) == 200 and ds.class_names == ["0", "1"] and ds.task == "binary"
    assert ds.files[0].name == "000.png" and ds.ids[0] == "0"
    assert int(ds.labels.sum()) == 100
    assert ds.labels[:100].all() and not ds.labels[100:].any()  # ids 0-99 hemorrhage


def test_any_csv_with_named_columns(tmp_path):
    make_images(tmp_path, ["a.png", "b.png", "c.png", "d.png"])
    (tmp_path / "meta.csv").write_text("patient,file,diagnosis\n1,a.png,bleed\n2,b,normal\n3,c.png,bleed\n4,d,normal\n")
    ds = load_dataset(tmp_path, labels=tmp_path / "meta.csv", id_col="file", label_col="diagnosis")
    assert ds.class_names == ["bleed", "normal"]
    assert [p.name for p in ds.files] == ["a.png", "b.png", "c.png", "d.png"]
    assert ds.labels.tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="label-col"):
        load_dataset(tmp_path, labels=tmp_path / "meta.csv", id_col="file")
    with pytest.raises(ValueError, match="no column 'dx'"):
        load_dataset(tmp_path, labels=tmp_path / "meta.csv", id_col="file", label_col="dx")


def test_class_per_folder(tmp_path):
    make_images(tmp_path / "normal", ["x.png", "y.png"])
    make_images(tmp_path / "hemorrhage", ["z.png"])
    ds = load_dataset(tmp_path)
    assert ds.class_names == ["hemorrhage", "normal"]
    assert sorted(zip(ds.ids, ds.labels.tolist())) == [("hemorrhage/z", 0), ("normal/x", 1), ("normal/y", 1)]


def test_every_problem_is_named_in_one_message(tmp_path):
    make_images(tmp_path, ["000.png", "001.png", "002.png", "extra.png"])
    (tmp_path / "labels.csv").write_text("id, hemorrhage\n0,1\n1,0\n1,1\n2,7.5\n5,0\n")
    with pytest.raises(ValueError) as err:
        load_dataset(tmp_path)
    message = str(err.value)
    assert "labels.csv" in message and "\n" not in message
    assert "conflicting labels: 1" in message
    assert "ids without a file" in message and "5" in message
    assert "files without a label: extra.png" in message
    assert "outside the expected classes" in message and "7.5" in message


def test_agreeing_duplicates_are_tolerated(tmp_path):
    make_images(tmp_path, ["000.png", "001.png"])
    (tmp_path / "labels.csv").write_text("id, hemorrhage\n0,1\n0,1\n1,0\n")
    assert load_dataset(tmp_path).labels.tolist() == [1, 0]


def test_expected_classes_and_missing_labels(tmp_path):
    make_images(tmp_path, ["a.png", "b.png"])
    (tmp_path / "l.csv").write_text("id,label\na,cat\nb,dog\n")
    with pytest.raises(ValueError, match="expected classes"):
        load_dataset(tmp_path, labels=tmp_path / "l.csv", classes=["bleed", "normal"])
    with pytest.raises(ValueError, match="no labels"):
        load_dataset(make_images(tmp_path / "bare", ["a.png"]))
    with pytest.raises(ValueError, match="no such folder"):
        load_dataset(tmp_path / "nowhere")
