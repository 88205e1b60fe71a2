import numpy as np
import pytest

from smallct.data.folds import Folds, fold_assignment
from smallct.data.similar import Grouping


def test_stratified_repeatable_and_reshuffled():
    y = np.array([0] * 100 + [1] * 100)
    a = fold_assignment(y, folds=5, repeats=2, seed=3)
    assert a.shape == (2, 200)
    np.testing.assert_array_equal(a, fold_assignment(y, folds=5, repeats=2, seed=3))
    for r in range(2):
        for k in range(5):
            assert (a[r] == k).sum() == 40 and y[a[r] == k].sum() == 20  # 20 of each class per fold
    assert not np.array_equal(a[0], a[1])  # each repeat reshuffled
    assert not np.array_equal(a[0], fold_assignment(y, folds=5, seed=4)[0])


def test_groups_never_split_a_patient():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), 4)
    y = np.repeat(rng.integers(0, 2, 30), 4)
    a = fold_assignment(y, folds=5, seed=0, groups=groups)[0]
    for g in range(30):
        assert len(set(a[groups == g])) == 1


def test_too_many_folds_is_a_clear_error():
    with pytest.raises(ValueError, match="smallest class has only 3"):
        fold_assignment(np.array([0] * 10 + [1] * 3), folds=5)


def test_make_folds_returns_the_groups_it_respects(head_ct_dir):
    from smallct.data.folds import make_folds
    from smallct.datasets.folder import load_dataset

    dataset = load_dataset(head_ct_dir)
    folds = make_folds(dataset, folds=5, repeats=2, seed=0, log=lambda *_: None)
    assert folds.assignment.shape == (2, 200) and (folds.repeats, folds.folds) == (2, 5)
    assert folds.threshold == 0.92 and len(folds.similar) == 49
    for r in range(2):
        for g in np.unique(folds.groups):  # every near-duplicate group inside one test fold
            assert len(set(folds.assignment[r][folds.groups == g])) == 1
    linked = [(i, j) for i, j, _ in folds.similar]
    assert all(folds.groups[i] == folds.groups[j] for i, j in linked)
    record = folds.similar_record(dataset.ids)
    assert record["threshold"] == 0.92 and record["pairs"][0][:2] == [dataset.ids[linked[0][0]],
                                                                      dataset.ids[linked[0][1]]]
    splits = list(folds.split(1))
    assert [k for k, _, _ in splits] == [0, 1, 2, 3, 4]
    assert all(set(train).isdisjoint(test) and len(train) + len(test) == 200 for _, train, test in splits)
    units = folds.units  # what its intervals resample: the same groups
    assert (units.name, units.n, units.n_images) == ("near-duplicate groups", len(np.unique(folds.groups)), 200)
    assert units.n < 200 - 40  # 49 pairs join at least 40 images to others
    assert folds.resampling_record()["groups"] == [int(g) for g in folds.groups]
    off = make_folds(dataset, folds=5, group_similar=None, log=lambda *_: None)
    assert off.groups is None and off.similar == [] and off.threshold is None
    assert (off.units.name, off.units.n) == ("images", 200) and off.resampling_record()["groups"] is None


def test_too_few_groups_names_the_unit_the_folds_keep_whole(tmp_path):
    """``--folds`` above the number of groups says which groups: near-duplicate groups, patients (smallct 0.3 said
    "patients" for every kind). Mutant: a message that drops the unit, or names patients for near-duplicates."""
    import dataclasses

    from PIL import Image

    from smallct.data.folds import make_folds
    from smallct.datasets.folder import load_dataset

    rng = np.random.default_rng(0)
    folder = tmp_path / "copies"
    folder.mkdir()
    rows = []
    for g in range(8):  # 8 distinct slices, each saved 3 times: 24 images, 12 of each class, 8 groups
        image = np.clip(rng.normal(128, 60, (16, 16, 3)).repeat(8, 0).repeat(8, 1), 1, 255).astype(np.uint8)
        for c in range(3):
            Image.fromarray(image).save(folder / f"{3 * g + c:03d}.png")
            rows.append(f"{3 * g + c:03d},{g % 2}\n")
    (folder / "labels.csv").write_text("id,label\n" + "".join(rows))
    dataset = load_dataset(folder)
    quiet = dict(progress=False, log=lambda *_: None)
    with pytest.raises(ValueError, match=r"^--folds 10: only 8 near-duplicate groups of 24 images .*use fewer folds"):
        make_folds(dataset, folds=10, **quiet)
    patients = dataclasses.replace(dataset, groups=np.array([f"p{i // 4}" for i in range(24)]))
    with pytest.raises(ValueError, match=r"^--folds 10: only 6 patients of 24 images"):
        make_folds(patients, folds=10, group_similar=None, **quiet)
    with pytest.raises(ValueError, match=r"^--folds 10: only [1-6] patient groups of 24 images"):
        make_folds(patients, folds=10, **quiet)


def test_train_test_are_the_folds_indices_in_increasing_order():
    # cv, nested and curve take their indices from Folds.train_test; the rows (and so every figure) must stay in
    # the order np.flatnonzero gave before (mutants: test and train swapped, unsorted or a fold's indices dropped)
    labels = np.array([0, 1] * 15)
    folds = Folds(fold_assignment(labels, 3, 2, 0))
    for r in range(2):
        for k, train, test in folds.split(r):
            assert np.array_equal(test, np.flatnonzero(folds.assignment[r] == k))
            assert np.array_equal(train, np.flatnonzero(folds.assignment[r] != k))
            assert all(np.array_equal(a, b) for a, b in zip(folds.train_test(r, k), (train, test)))
            assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0) and len(train) + len(test) == 30


def test_patient_ids_as_groups_are_recorded_as_they_are():
    # a prepared RSNA folder with --group-similar 0 keeps its patients' ids (ID_<hex>) as the groups: 0.3.0's
    # record cast each to int and stopped the run (invalid literal for int(): 'ID_001688ba')
    patients = np.array(["ID_001688ba", "ID_001688ba", "ID_00aa", "ID_00bb"])
    folds = Folds(np.array([[0, 0, 1, 1]]), Grouping(patients, [], None, None, "patients", "given"))
    assert folds.resampling_record()["groups"] == ["ID_001688ba", "ID_001688ba", "ID_00aa", "ID_00bb"]


def test_separated_names_the_first_link_across_two_folds():
    from smallct.data.folds import Folds

    one = Folds(np.array([[0, 0, 1, 1]]))
    assert one.separated(np.array([0, 0, 2, 2])) is None  # series 0-1 and 2-3, each in one fold
    assert one.separated(np.array([0, 0, 1, 2])) == (0, 2)  # slice 2 linked to slice 1, of the other fold
    assert one.separated(np.arange(4)) is None  # every slice alone
    two = Folds(np.array([[0, 0, 1, 1], [0, 1, 1, 0]]))
    assert two.separated(np.array([0, 0, 2, 2])) == (1, 1)  # whole in repeat 0, split in repeat 1
