import numpy as np
import pytest

from smallct.splits import fold_assignment


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
