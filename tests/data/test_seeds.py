"""The one owner of fold draws and training seeds (``smallct.data.seeds``): every (seed, repeat) its own fold
draw, every fit its own seed, and repeat 0 exactly as smallct <= 0.3 drew it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from smallct.data.folds import fold_assignment, scheme_note
from smallct.data.seeds import episode_seed, fit_seed, fold_draw_seed, sequence_seed, subset_seed

PACKAGE = Path(__file__).resolve().parents[2] / "smallct"


def _partition(row: np.ndarray) -> tuple:
    """A fold assignment up to the names of its folds: relabelling folds is the same draw."""
    names: dict[int, int] = {}
    return tuple(names.setdefault(int(k), len(names)) for k in row)


def _scheme_1(labels, folds, seed, repeat, groups=None) -> np.ndarray:
    """The fold draw smallct 0.3 made for ``repeat``: shuffled with ``seed + repeat``."""
    if groups is None:
        splits = StratifiedKFold(folds, shuffle=True, random_state=seed + repeat).split(np.zeros(len(labels)), labels)
    else:
        splits = StratifiedGroupKFold(folds, shuffle=True, random_state=seed + repeat).split(
            np.zeros(len(labels)), labels, groups)
    out = np.full(len(labels), -1)
    for k, (_, test) in enumerate(splits):
        out[test] = k
    return out


@pytest.mark.parametrize("grouped", [False, True])
def test_seeds_0_to_9_by_repeats_0_to_9_are_100_distinct_fold_draws(grouped):
    # smallct 0.3 (seed + r) gives 19 distinct draws here: seed S's repeat r was seed S + r's repeat 0
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), 2) if grouped else None
    labels = np.repeat(rng.integers(0, 2, 30), 2) if grouped else np.tile([0, 1], 20)
    draws = {_partition(row) for seed in range(10) for row in fold_assignment(labels, 5, 10, seed, groups)}
    assert len(draws) == 100


@pytest.mark.parametrize("grouped", [False, True])
def test_repeat_0_is_the_draw_of_fold_scheme_1(grouped):
    # single-repeat runs keep their folds and figures; a mutant that derives repeat 0 too fails here
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(30), 2) if grouped else None
    labels = np.repeat(rng.integers(0, 2, 30), 2) if grouped else np.tile([0, 1], 20)
    for seed in (0, 1, 7, 123):
        now = fold_assignment(labels, 5, 3, seed, groups)
        np.testing.assert_array_equal(now[0], _scheme_1(labels, 5, seed, 0, groups))
        assert not np.array_equal(now[1], _scheme_1(labels, 5, seed, 1, groups))  # repeat 1 is drawn anew
        assert fold_draw_seed(seed, 0) == seed


def test_repeat_0_keeps_the_training_seeds_of_fold_scheme_1():
    for seed in (0, 3, 250):
        for k in range(10):
            assert fit_seed(seed, 0, k) == seed * 1000 + k  # cv, nested, tune, the audit's forests
            for n in (10, 40, 150):
                assert subset_seed(seed, n, 0, k) == seed * 10007 + n * 101 + k  # curve (r * 10 was 0)
        for shots in (1, 5, 20):
            for e in (0, 4, 1008):
                assert episode_seed(seed, shots, e) == seed * 100003 + shots * 1009 + e  # few-shot fine-tuning


def test_every_fit_of_seeds_repeats_and_folds_has_its_own_seed():
    fits = [(s, r, k) for s in range(12) for r in range(12) for k in range(10)]
    seeds = [fit_seed(*f) for f in fits]
    assert len(set(seeds)) == len(fits)
    for s in range(5):  # scheme 1 (seed * 1000 + r * 100 + k) gave (S, repeat 10) the seeds of (S + 1, repeat 0)
        assert {fit_seed(s, 10, k) for k in range(5)}.isdisjoint({fit_seed(s + 1, 0, k) for k in range(5)})
    subsets = [(s, n, r, k) for s in range(10) for n in (10, 40, 150) for r in range(12) for k in range(5)]
    assert len({subset_seed(*x) for x in subsets}) == len(subsets)  # scheme 1: (n, r, k=10) was (n, r + 1, k=0)
    assert subset_seed(0, 40, 0, 10) != subset_seed(0, 40, 1, 0)
    episodes = [(s, k, e) for s in range(3) for k in (1, 2) for e in range(1100)]
    assert len({episode_seed(*x) for x in episodes}) == len(episodes)  # scheme 1: (k, e=1009) was (k + 1, e=0)
    assert all(0 <= x < 2**32 for x in seeds)  # scikit-learn's random_state takes 32 bits


def test_a_sequence_model_never_shares_the_seed_of_a_fit():
    # mutant caught: the sequence model of fold (r, k) seeded with fit_seed (its CNN's own initialisation stream)
    keys = [(s, r, k) for s in range(5) for r in range(5) for k in range(10)]
    ours = {sequence_seed(*x) for x in keys}
    assert len(ours) == len(keys) and ours.isdisjoint({fit_seed(*x) for x in keys})
    assert all(2**31 <= x < 2**32 for x in ours)


def test_no_module_builds_a_seed_by_hand():
    # smallct 0.3 built training seeds with four formulas in five places (cv, audit, curve twice, few-shot)
    # (any spacing: `seed*1000`, `1000 * seed`, `seed+r`; a name ending in seed, such as fold_seed, is not one)
    by_hand = re.compile(r"\bseed\s*[*+]\s*\w|\w\s*\*\s*seed\b")
    found = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if by_hand.search(p.read_text())}
    assert found <= {"data/seeds.py"}, found


def _record(assignment, scheme=None) -> dict:
    record = {"folds": {"ids": ["a", "b", "c", "d"], "assignment": assignment}}
    return record if scheme is None else {**record, "folds_scheme": scheme}


def test_the_note_names_the_scheme_only_when_it_is_the_cause():
    old = _record([[0, 1, 0, 1], [0, 0, 1, 1]])  # no folds_scheme: smallct <= 0.3
    new = _record([[0, 1, 0, 1], [1, 0, 0, 1]], scheme=2)
    note = scheme_note(new, old, ("B", "A"))
    assert note.startswith("A was made by fold scheme 1, smallct <= 0.3, B by fold scheme 2")
    assert scheme_note(old, _record([[0, 1, 0, 1], [1, 0, 0, 1]]), ("A", "B")) is None  # both scheme 1
    assert scheme_note(_record([[1, 0, 0, 1], [0, 0, 1, 1]]), new, ("A", "B")) is None  # repeat 0 differs: not it
    assert scheme_note(_record([[0, 1, 0, 1]]), new, ("A", "B")) is None  # other --repeats: not it
    assert scheme_note(_record([[0, 1, 0, 1], [1, 0, 0, 1]], scheme=2), new, ("A", "B")) is None  # same scheme
