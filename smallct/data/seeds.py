"""Seeds: the random state of every fold draw and every training run, from (seed, repeat, fold).

The one place smallct turns ``--seed`` into the seed of a fold draw (:func:`fold_draw_seed`, which
:func:`smallct.data.folds.fold_assignment` shuffles with) or of a fit: a fold model of cv, nested and
tune and the audit's forests (:func:`fit_seed`), a learning-curve subset and its fine-tuning
(:func:`subset_seed`), a few-shot fine-tuning episode (:func:`episode_seed`), a sequence model over the series of
a fold (:func:`sequence_seed`).

Fold scheme 1 (smallct <= 0.3) shuffled repeat ``r`` with ``seed + r`` and built training seeds as
``seed * 1000 + r * 100 + fold``: seed 0's repeats 1-2 were seed 1's repeats 0-1, and (seed S, repeat 10)
trained with the seeds of (S + 1, repeat 0). Scheme 2 (:data:`FOLDS_SCHEME`) keeps repeat 0's values,
so single-repeat runs give the same folds and figures as before, and derives every other value from
``numpy.random.SeedSequence`` of the seed, a purpose and the indices, mapped into ``[2**31, 2**32)``:
apart from the small values of repeat 0 (for seeds below 21474) and within the 32 bits scikit-learn
accepts as ``random_state``. Seeds 0-9 x repeats 0-9 are 100 distinct fold draws.
"""

from __future__ import annotations

import numpy as np

FOLDS_SCHEME = 2  # run.json's "folds_scheme"; a run.json without it was made by scheme 1
SCHEMES = {1: "fold scheme 1, smallct <= 0.3", 2: "fold scheme 2"}

# One tag per kind of draw, so that a fold draw and a fit never share a value by construction.
_FOLDS, _FIT, _SUBSET, _EPISODE, _SEQUENCE, _RANK = range(6)


def _derived(seed: int, purpose: int, *keys: int) -> int:
    """A value in [2**31, 2**32) from ``seed``, ``purpose`` and ``keys`` (a fixed number per purpose:
    SeedSequence pads short keys with zeros, so (1,) and (1, 0) would collide)."""
    state = np.random.SeedSequence(int(seed), spawn_key=(purpose, *map(int, keys))).generate_state(1)[0]
    return 2**31 + int(state) % 2**31


def fold_draw_seed(seed: int, repeat: int) -> int:
    """``random_state`` of the fold draw of ``repeat`` under ``seed`` (repeat 0: ``seed``, as in scheme 1)."""
    return int(seed) if repeat == 0 else _derived(seed, _FOLDS, repeat)


def fit_seed(seed: int, repeat: int, fold: int) -> int:
    """Seed of the model trained on fold ``fold`` of ``repeat`` (cv, nested, tune; the audit's forests).

    Repeat 0: ``seed * 1000 + fold``, scheme 1's value (distinct for fewer than 1000 folds)."""
    if repeat == 0 and fold < 1000:
        return int(seed) * 1000 + int(fold)
    return _derived(seed, _FIT, repeat, fold)


def subset_seed(seed: int, size: int, repeat: int, fold: int) -> int:
    """Seed of a learning curve's training subset of ``size`` images of fold ``fold`` of ``repeat``, and of
    its fine-tuning.

    Repeat 0: ``seed * 10007 + size * 101 + fold``, scheme 1's value (distinct across sizes and folds of one
    seed; across seeds for sizes below 99 or fewer than 9 folds)."""
    if repeat == 0 and fold < 101:
        return int(seed) * 10007 + int(size) * 101 + int(fold)
    return _derived(seed, _SUBSET, size, repeat, fold)


def episode_seed(seed: int, shots: int, episode: int) -> int:
    """Seed of the fine-tuning of few-shot episode ``episode`` at ``shots`` images per class.

    ``seed * 100003 + shots * 1009 + episode`` (scheme 1's value) where that is distinct (fewer than 99
    shots and 1009 episodes); derived beyond."""
    if shots < 99 and episode < 1009:
        return int(seed) * 100003 + int(shots) * 1009 + int(episode)
    return _derived(seed, _EPISODE, shots, episode)


def sequence_seed(seed: int, repeat: int, fold: int) -> int:
    """Seed of the sequence model (``smallct.sequence``) trained outside fold ``fold`` of ``repeat``: its
    initialisation, chain order, reversals and dropped slices. Derived for every value (no scheme 1 to keep)."""
    return _derived(seed, _SEQUENCE, repeat, fold)


def rank_seed(seed: int, rank: int) -> int:
    """Seed of the augmentation and mixup draws of rank ``rank`` of a model trained on several processes (torchrun),
    from the fold's training seed ``seed``: each rank augments its own images with its own draws, while the order of
    the images (the shards) comes from ``seed`` itself, shared by every rank."""
    return _derived(seed, _RANK, rank)
