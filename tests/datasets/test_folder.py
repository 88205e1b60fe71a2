import dataclasses

import numpy as np
import pytest
from PIL import Image

from smallct.datasets.folder import data_fingerprint, image_ids, load_dataset, read_labelled_folder, same_ids


def make_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(folder / name)
    return folder


def test_head_ct_labels_as_distributed(head_ct_dir):
    ds = load_dataset(head_ct_dir)
    # recognised by its manifest: label 1 (column hemorrhage) is the positive class, named
    assert len(ds) == 200 and ds.class_names == ["normal", "hemorrhage"] and ds.task == "binary"
    assert ds.positive_class == "hemorrhage"
    assert ds.files[0].name == "000.png" and ds.ids[:2] == ["000", "001"] and ds.ids[-1] == "199"  # not "0"
    assert int(ds.labels.sum()) == 100
    assert ds.labels[:100].all() and not ds.labels[100:].any()  # ids 0-99 hemorrhage
    raw = read_labelled_folder(head_ct_dir)  # classes as the CSV says
    assert raw.class_names == ["0", "1"] and raw.positive_class is None and raw.labels.tolist() == ds.labels.tolist()


def test_a_copy_that_is_not_the_head_ct_set_keeps_its_digits(tmp_path):
    make_images(tmp_path, ["000.png", "001.png", "002.png"])
    (tmp_path / "labels.csv").write_text("id, hemorrhage\n0,1\n1,0\n2,1\n")
    ds = load_dataset(tmp_path)
    assert ds.class_names == ["0", "1"] and ds.positive_class == "1" and ds.ids == ["000", "001", "002"]
    renamed = load_dataset(tmp_path, class_names=["normal", "bleed"])
    assert renamed.class_names == ["normal", "bleed"] and renamed.positive_class == "bleed"
    assert renamed.labels.tolist() == [1, 0, 1]
    flipped = load_dataset(tmp_path, class_names=["normal", "bleed"], positive_class="normal")
    assert flipped.class_names == ["bleed", "normal"] and flipped.labels.tolist() == [0, 1, 0]
    assert load_dataset(tmp_path, positive_class="0").labels.tolist() == [0, 1, 0]  # the label it renames
    with pytest.raises(ValueError, match=r"--class-names a,b,c: .* has 2 classes \(0, 1\)"):
        load_dataset(tmp_path, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"--positive-class sick: not a class of .* \(normal, bleed\)"):
        load_dataset(tmp_path, class_names=["normal", "bleed"], positive_class="sick")


def test_any_csv_with_named_columns(tmp_path):
    make_images(tmp_path, ["a.png", "b.png", "c.png", "d.png"])
    (tmp_path / "meta.csv").write_text("patient,file,diagnosis\n1,a.png,bleed\n2,b,normal\n3,c.png,bleed\n4,d,normal\n")
    ds = load_dataset(tmp_path, labels=tmp_path / "meta.csv", id_col="file", label_col="diagnosis",
                      positive_class="bleed")
    assert ds.class_names == ["normal", "bleed"] and ds.ids == ["a", "b", "c", "d"]
    assert [p.name for p in ds.files] == ["a.png", "b.png", "c.png", "d.png"]
    assert ds.labels.tolist() == [1, 0, 1, 0]
    with pytest.raises(ValueError, match="label-col"):
        load_dataset(tmp_path, labels=tmp_path / "meta.csv", id_col="file")
    with pytest.raises(ValueError, match="no column 'dx'"):
        load_dataset(tmp_path, labels=tmp_path / "meta.csv", id_col="file", label_col="dx")


def test_class_per_folder(tmp_path):
    make_images(tmp_path / "normal", ["x.png", "y.png"])
    make_images(tmp_path / "hemorrhage", ["z.png"])
    with pytest.raises(ValueError) as err:  # sorted names would make "normal" positive by accident
        load_dataset(tmp_path)
    message = str(err.value)
    assert "\n" not in message and "'hemorrhage' and 'normal'" in message and "--positive-class" in message
    ds = load_dataset(tmp_path, positive_class="hemorrhage")
    assert ds.class_names == ["normal", "hemorrhage"] and ds.positive_class == "hemorrhage"
    assert sorted(zip(ds.ids, ds.labels.tolist())) == [("x", 0), ("y", 0), ("z", 1)]
    assert load_dataset(tmp_path, positive_class="normal").class_names == ["hemorrhage", "normal"]
    raw = read_labelled_folder(tmp_path)
    assert raw.class_names == ["hemorrhage", "normal"] and raw.positive_class is None


def test_multiclass_sets_have_no_positive_class(tmp_path):
    for name in ("a", "b", "c"):
        make_images(tmp_path / name, [f"{name}1.png", f"{name}2.png"])
    ds = load_dataset(tmp_path)
    assert ds.task == "multiclass" and ds.positive_class is None and ds.class_names == ["a", "b", "c"]
    ordered = load_dataset(tmp_path, class_names=["c", "a", "b"])
    assert ordered.class_names == ["c", "a", "b"]
    assert dict(zip(ordered.ids, ordered.labels.tolist())) == {"a1": 1, "a2": 1, "b1": 2, "b2": 2, "c1": 0, "c2": 0}
    with pytest.raises(ValueError, match="--positive-class a: .* has 3 classes"):
        load_dataset(tmp_path, positive_class="a")


def test_ids_are_file_stems_as_text(tmp_path):
    files = [tmp_path / "normal" / "000.png", tmp_path / "bleed" / "000.png", tmp_path / "bleed" / "007.png"]
    assert image_ids(files) == ["normal/000", "bleed/000", "007"]  # where names repeat: the path below the folder
    assert image_ids([tmp_path / "a.png", tmp_path / "a.jpg", tmp_path / "b.png"]) == ["a.png", "a.jpg", "b"]
    make_images(tmp_path / "set" / "normal", ["000.png", "001.png"])
    make_images(tmp_path / "set" / "bleed", ["000.png"])
    ds = load_dataset(tmp_path / "set", positive_class="bleed")
    assert sorted(ds.ids) == ["001", "bleed/000", "normal/000"]
    assert same_ids(["0", "1", "7"], ["000", "001", "007"]) and not same_ids(["0", "2"], ["000", "001"])


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
    with pytest.raises(ValueError, match=r"--class-names bleed,normal: not the classes of .* \(cat, dog\)"):
        load_dataset(tmp_path, labels=tmp_path / "l.csv", class_names=["bleed", "normal"])
    with pytest.raises(ValueError, match="no labels"):
        load_dataset(make_images(tmp_path / "bare", ["a.png"]))
    with pytest.raises(ValueError, match="no such folder"):
        load_dataset(tmp_path / "nowhere")


def test_the_data_fingerprint_does_not_depend_on_the_label_dtype(tmp_path, head_ct_dir):
    # 0.3.0 hashed the labels' raw bytes: int32 labels of the same set gave another fingerprint, and a settings
    # file's _chosen_on or a study's data check missed it. Mutant caught: hashing dataset.labels' own bytes.
    make_images(tmp_path, ["000.png", "001.png", "002.png"])
    (tmp_path / "labels.csv").write_text("id,label\n0,1\n1,0\n2,1\n")
    ds = load_dataset(tmp_path)
    as32 = dataclasses.replace(ds, labels=ds.labels.astype(np.int32))
    assert data_fingerprint(as32) == data_fingerprint(ds)
    assert data_fingerprint(dataclasses.replace(ds, labels=1 - ds.labels)) != data_fingerprint(ds)  # labels count
    # the shipped recipes' _chosen_on is the Head CT set's fingerprint, unchanged
    assert data_fingerprint(load_dataset(head_ct_dir)) == "627b35b2ff42d1f0"
