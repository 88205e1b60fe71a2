"""Tests of smallct.datasets.known: the registry of sets recognised by content, asked by the folder reader."""

import numpy as np
from PIL import Image

from smallct.datasets import known
from smallct.datasets.folder import load_dataset


def _set(folder):
    for name in ("000.png", "001.png", "002.png"):
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(folder / name)
    (folder / "labels.csv").write_text("id,label\n0,1\n1,0\n2,1\n")
    return folder


def test_load_dataset_names_the_classes_of_a_set_a_registered_recogniser_knows(tmp_path, monkeypatch):
    # mutant caught: a reader that asks only the Head CT check (as 0.3.0 did), not the registry
    folder = _set(tmp_path)
    asked = []

    def storms(where, dataset):
        asked.append((where, dataset.class_names))
        return ["calm", "storm"] if where == folder else None

    monkeypatch.setattr(known, "KNOWN_SETS", [lambda where, dataset: None, storms, lambda where, dataset: ["x", "y"]])
    ds = load_dataset(folder)
    assert ds.class_names == ["calm", "storm"] and ds.positive_class == "storm"  # the first that knows it
    assert ds.labels.tolist() == [1, 0, 1] and asked == [(folder, ["0", "1"])]
    assert load_dataset(folder, class_names=["a", "b"]).class_names == ["a", "b"]  # the user's names come first
    assert len(asked) == 1  # ... and then no recogniser is asked


def test_a_set_that_is_not_the_head_ct_set_is_not_recognised(tmp_path):
    dataset = load_dataset(_set(tmp_path))
    assert known.known_classes(tmp_path, dataset) is None and dataset.class_names == ["0", "1"]
