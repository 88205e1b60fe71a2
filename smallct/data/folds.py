"""Folds: which images test together, and the groups the folds keep whole.

:func:`make_folds` is the one place smallct makes folds; cross-validation, nested CV, tuning, learning
curves and the shortcut audit all call it, so "the same folds as smallct.cv" holds by construction. It
joins the dataset's own groups (patients, when known) with near-duplicate groups
(:mod:`smallct.data.similar`) and splits with scikit-learn's splitters: ``StratifiedKFold``, or
``StratifiedGroupKFold`` when there are groups (no group in two folds). Multi-label targets are
stratified on their label combinations, those carried by fewer than ``folds`` patients merged by the
first column (``any`` for RSNA), as far as groups allow (see :func:`_strata`). It returns a
:class:`Folds`: the assignment, the groups it respects, and (:attr:`Folds.units`) what a bootstrap of
its figures must resample: those same groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from smallct.config.run import GROUP_SIMILAR
from smallct.data.seeds import FOLDS_SCHEME, SCHEMES, fold_draw_seed
from smallct.data.similar import Grouping, near_duplicate_groups
from smallct.datasets.classes import check_class_sizes
from smallct.datasets.folder import Dataset
from smallct.evaluation.intervals import Units


@dataclass(frozen=True)
class Folds:
    """A fold assignment and what it respects.

    ``assignment`` (repeats, N): the test fold of every image in every repeat. ``grouping``: the groups
    kept whole and how they were found (:class:`smallct.data.similar.Grouping`).
    """

    assignment: np.ndarray
    grouping: Grouping = field(default_factory=lambda: Grouping(None))

    @property
    def groups(self) -> np.ndarray | None:
        """(N,) a group id per image, every group inside one fold (None: every image on its own)."""
        return self.grouping.groups

    @property
    def similar(self) -> list[tuple[int, int, float]]:
        """The near-duplicate pairs linked, ``(i, j, correlation)``."""
        return self.grouping.pairs

    @property
    def threshold(self) -> float | None:
        """The correlation asked for (None: near-duplicates not looked for)."""
        return self.grouping.threshold

    @property
    def units(self) -> Units:
        """What a bootstrap of these folds' figures resamples: the groups they keep whole (images when none)."""
        return self.grouping.units(self.assignment.shape[1])

    @property
    def repeats(self) -> int:
        return int(self.assignment.shape[0])

    @property
    def folds(self) -> int:
        return int(self.assignment.max()) + 1

    def separated(self, linked: np.ndarray) -> tuple[int, int] | None:
        """The first ``(repeat, i)`` whose image ``i`` and image ``linked[i]`` fall in two folds (a series split by the
        folds, ``linked`` being each slice's previous one), or None."""
        apart = self.assignment[:, linked] != self.assignment
        if not apart.any():
            return None
        r, i = np.nonzero(apart)
        return int(r[0]), int(i[0])

    def split(self, repeat: int = 0) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(fold, train indices, test indices)`` of every fold of ``repeat``."""
        for k in range(self.folds):
            yield k, *self.train_test(repeat, k)

    def train_test(self, repeat: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """The training and test indices of one fold, each in increasing order (the one place they are built)."""
        return np.flatnonzero(self.assignment[repeat] != fold), np.flatnonzero(self.assignment[repeat] == fold)

    def similar_record(self, ids: list[str]) -> dict:
        """What ``run.json`` records of the near-duplicates: the thresholds, the pairs by image id, what was done."""
        return self.grouping.record(ids)

    @property
    def scheme(self) -> int:
        """The fold scheme that drew these folds (``run.json``'s ``folds_scheme``; :mod:`smallct.data.seeds`)."""
        return FOLDS_SCHEME

    def resampling_record(self) -> dict:
        """What ``run.json`` records for the intervals: the unit, how many, and each image's group."""
        units = self.units
        return {**units.record(), "groups": None if units.groups is None else np.asarray(units.groups).tolist()}


def scheme_note(a: dict, b: dict, names: tuple[str, str]) -> str | None:
    """Why two ``run.json`` records' fold assignments differ when the fold scheme is the cause: other schemes,
    the same images, repeats and repeat 0 (which every scheme draws alike). A phrase naming the schemes of the
    runs called ``names``; None when the cause is elsewhere (settings, data)."""
    schemes = [int(r.get("folds_scheme", 1)) for r in (a, b)]  # none recorded: scheme 1, smallct <= 0.3
    fa, fb = a["folds"], b["folds"]
    same_draws = len(fa["assignment"]) == len(fb["assignment"]) and fa["assignment"][:1] == fb["assignment"][:1]
    if schemes[0] == schemes[1] or fa["ids"] != fb["ids"] or not same_draws:
        return None
    (old_name, old), (new_name, new) = sorted(zip(names, schemes), key=lambda x: x[1])
    name = [SCHEMES.get(n, f"fold scheme {n}") for n in (old, new)]
    return f"{old_name} was made by {name[0]}, {new_name} by {name[1]}, which draws the folds of repeats >= 1 otherwise"


def check_fold_classes(dataset: Dataset, folds: int) -> None:
    """``ValueError`` (one line naming the class, its count and its ids) when a class of ``dataset`` has fewer than
    ``folds`` images (:func:`smallct.datasets.classes.check_class_sizes`). :func:`make_folds` checks it; a command
    calls it right after loading the data, before weights are resolved or images decoded."""
    fix = ("correct the labels, leave that class's images out or use fewer folds" if folds > 2
           else "correct the labels or leave that class's images out")
    check_class_sizes(dataset, folds, f"--folds {folds} needs at least {folds} images of every class (one in each "
                      f"test fold): {fix}")


def make_folds(dataset: Dataset, folds: int = 5, repeats: int = 1, seed: int = 0,
               group_similar: float | None = GROUP_SIMILAR, workers: int = 0, progress: bool = True,
               log=print, grouping: Grouping | None = None) -> Folds:
    """The folds of a run on ``dataset``: near-duplicates and patients kept together, stratified by label.

    Parameters
    ----------
    dataset
        The labelled images (``dataset.groups``: patients, when known).
    folds, repeats, seed
        ``repeats`` draws of ``folds`` folds; repeat ``r`` shuffles with ``fold_draw_seed(seed, r)``
        (:mod:`smallct.data.seeds`; repeat 0: ``seed``).
    group_similar
        Thumbnail correlation at which images count as near-duplicates (None: not looked for).
    workers, progress
        How the thumbnails are decoded: always one canonical way, whatever the run's preprocessing, so the
        folds depend only on the files (:func:`smallct.data.similar.near_duplicate_groups`).
    grouping
        The groups to keep whole, already found (nested CV's inner folds: the outer folds' groups of the
        training part, :meth:`Grouping.subset`); then nothing is looked for again.

    Raises
    ------
    ValueError
        A class with fewer than ``folds`` images, in one line naming it, its count and its ids
        (:func:`smallct.datasets.classes.check_class_sizes`), before any thumbnail is read.
    """
    check_fold_classes(dataset, folds)
    if grouping is None:
        grouping = near_duplicate_groups(dataset, group_similar, workers, progress, log)
    assignment = fold_assignment(dataset.labels, folds, repeats, seed, grouping.groups, grouping.unit)
    return Folds(assignment, grouping)


def _strata(labels: np.ndarray, folds: int = 5, groups: np.ndarray | None = None) -> np.ndarray:
    """One stratum per image.

    Multi-label (N, L): the label combination where it is common, that is found on images of at
    least ``folds`` patients (``groups``; of at least ``folds`` images without groups). A rarer
    combination joins the most common combination with the same first column (``any`` for RSNA),
    or, when none is common, the bucket of that first-column value. Every stratum lies within one
    value of the first column, so ``any`` stays stratified.

    Why count patients: StratifiedGroupKFold balances every stratum at once, and strata that only a
    few patients carry cannot be balanced but pull the ``any`` balance down. On simulated RSNA-like
    labels (5 folds, 10 draws) counting patients gives the ``any``-only folds for 20 patients, and
    for 200 patients the relative spread of subtype prevalence over folds falls from 0.52 (``any``
    only) to 0.32 while that of ``any`` goes from 0.02 to 0.05 (counting images instead: ``any``
    0.38 -> 0.59 for 20 patients).
    """
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return labels
    combo = (labels.astype(np.int64) != 0) @ (np.int64(1) << np.arange(labels.shape[1], dtype=np.int64))
    owner = np.arange(len(combo)) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    pairs = np.unique(np.stack([combo, owner.ravel()]), axis=1)  # each (combination, patient) once
    values, counts = np.unique(pairs[0], return_counts=True)
    common = values[counts >= folds]
    strata = combo.copy()
    for first in np.unique(labels[:, 0]):
        rows = labels[:, 0] == first
        here = np.isin(values, combo[rows]) & np.isin(values, common)
        target = values[here][np.argmax(counts[here])] if here.any() else -1 - int(first != 0)
        strata[rows & ~np.isin(combo, common)] = target
    return strata


def fold_assignment(labels: np.ndarray, folds: int = 5, repeats: int = 1, seed: int = 0,
                    groups: np.ndarray | None = None, unit: str = "groups") -> np.ndarray:
    """Test-fold index of every image in every repeat: int array (repeats, N), stratified, groups kept whole.

    ``unit`` names what a group is in the error for too few of them (patients, near-duplicate groups, ...).

    Repeat ``r`` shuffles with :func:`smallct.data.seeds.fold_draw_seed` (repeat 0: ``seed``), so the same seed
    always gives the same folds and no two (seed, repeat) share a draw.
    """
    strata = _strata(labels, folds, groups)
    n = len(strata)
    _, counts = np.unique(strata, return_counts=True)
    if folds < 2:
        raise ValueError(f"--folds {folds}: need at least 2")
    if groups is None and counts.min() < folds:
        raise ValueError(f"--folds {folds}: the smallest class has only {counts.min()} images; "
                         f"use at most {counts.min()} folds")
    if groups is not None and len(np.unique(groups)) < folds:
        of = f" of {n} images" if unit != "images" else ""
        raise ValueError(f"--folds {folds}: only {len(np.unique(groups))} {unit}{of} (each kept in one fold); use "
                         "fewer folds")
    out = np.full((repeats, n), -1, dtype=np.int64)
    for r in range(repeats):
        if groups is None:
            splitter = StratifiedKFold(folds, shuffle=True, random_state=fold_draw_seed(seed, r))
            splits = splitter.split(np.zeros(n), strata)
        else:
            splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=fold_draw_seed(seed, r))
            splits = splitter.split(np.zeros(n), strata, groups)
        for k, (_, test) in enumerate(splits):
            out[r, test] = k
    return out
