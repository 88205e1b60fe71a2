"""Intervals: the one resampler, pooled figures with their interval, and the t interval of a mean."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from smallct.evaluation.intervals import (Units, bootstrap_ci, bootstrap_indices, over_repeats, percentile_interval,
                                          pooled_figures, t_interval)
from smallct.evaluation.metrics import classification_metrics


def test_resamples_are_seeded_draws_of_every_unit_with_replacement():
    a = list(bootstrap_indices(50, 3, seed=7))
    assert len(a) == 3 and all(len(i) == 50 and i.min() >= 0 and i.max() < 50 for i in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, bootstrap_indices(50, 3, seed=7)))
    assert not np.array_equal(a[0], next(bootstrap_indices(50, 1, seed=8)))
    assert any(len(np.unique(i)) < 50 for i in a)  # with replacement


def test_pooled_figures_of_repeats_and_their_interval():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    p = np.clip(0.5 + (y - 0.5) * 0.4 + rng.normal(0, 0.25, (2, 60)), 0.01, 0.99)
    P = np.stack([1 - p, p], axis=2)  # (repeats, N, C)
    figure = over_repeats(classification_metrics, y, P, ["accuracy", "roc_auc"])
    point, ci = pooled_figures(figure, 60, ["accuracy"], n_boot=300, seed=1)
    per_repeat = [((p[r] >= 0.5) == y).mean() for r in range(2)]
    assert point["accuracy"] == pytest.approx(np.mean(per_repeat))  # the mean over repeats
    assert set(ci) == {"accuracy"} and ci["accuracy"][0] < point["accuracy"] < ci["accuracy"][1]
    assert ci["accuracy"][1] - ci["accuracy"][0] > 0.05  # 60 images: no narrow interval
    # the same resamples as bootstrap_ci over the images of one repeat
    one = over_repeats(classification_metrics, y, P[:1], ["accuracy"])
    def accuracy(yy, pp):
        return {"accuracy": classification_metrics(yy, pp)["accuracy"]}
    expected = bootstrap_ci(y, P[0], accuracy, n_boot=300, seed=1)["accuracy"]
    assert pooled_figures(one, 60, ["accuracy"], n_boot=300, seed=1)[1]["accuracy"] == pytest.approx(list(expected))


def test_percentile_and_t_intervals_by_hand():
    values = np.arange(101, dtype=float)
    assert percentile_interval(values, 0.9) == pytest.approx((5.0, 95.0))
    mean, sd, lo, hi = t_interval(np.array([0.5, 0.6, 0.7, 0.8, np.nan]))
    half = stats.t.ppf(0.975, 3) * np.std([0.5, 0.6, 0.7, 0.8], ddof=1) / 2  # 3.182 x 0.129 / 2 = 0.2054
    assert (mean, lo, hi) == pytest.approx((0.65, 0.65 - half, 0.65 + half)) and half == pytest.approx(0.2054, abs=1e-4)
    assert np.isnan(t_interval(np.array([0.3]))[2])  # one value: no interval


def test_units_draw_whole_groups_and_say_what_they_are():
    groups = np.array([0, 0, 0, 1, 2, 2, 3, 4, 4, 4])  # 5 groups of 10 images
    units = Units(10, groups, "patients")
    assert units.n == 5 and units.record() == {"unit": "patients", "n_units": 5, "n_images": 10}
    assert units.describe(100) == "percentile bootstrap over 5 patients of 10 images (100 resamples)"
    for idx in bootstrap_indices(units, 50, seed=3):
        drawn = groups[idx]
        # every group drawn comes whole: its members as often as the group was drawn
        for g in np.unique(drawn):
            members = np.flatnonzero(groups == g)
            assert (np.bincount(idx, minlength=10)[members] == (drawn == g).sum() / len(members)).all()
    assert Units(10).describe(100) == "percentile bootstrap over 10 images (100 resamples)"
    with pytest.raises(ValueError, match="groups: 3 ids for 10 images"):
        Units(10, np.array([0, 1, 2]), "patients")


def test_planted_duplicates_widen_the_interval_when_their_groups_are_resampled():
    # 50 independent slices, each saved 4 times: the image bootstrap believes in 200 independent images
    rng = np.random.default_rng(0)
    y0 = np.tile([0, 1], 25)
    right0 = rng.random(50) < 0.75
    y, right = np.repeat(y0, 4), np.repeat(right0, 4)
    groups = np.repeat(np.arange(50), 4)
    p = np.where(right, y, 1 - y).astype(float)
    P = np.stack([1 - p, p], axis=1)[None]
    figure = over_repeats(classification_metrics, y, P, ["accuracy"])
    _, flat = pooled_figures(figure, 200, ["accuracy"], n_boot=1000, seed=0)
    _, grouped = pooled_figures(figure, Units(200, groups, "near-duplicate groups"), ["accuracy"], n_boot=1000, seed=0)
    w_flat, w_grouped = (np.diff(ci["accuracy"])[0] for ci in (flat, grouped))
    assert w_grouped == pytest.approx(2 * w_flat, rel=0.25)  # sqrt(4) wider: 50 units, not 200
    # and as wide as the image bootstrap of the 50 distinct slices themselves
    _, distinct = pooled_figures(over_repeats(classification_metrics, y0, P[:, ::4], ["accuracy"]), 50, ["accuracy"],
                                 n_boot=1000, seed=0)
    assert w_grouped == pytest.approx(np.diff(distinct["accuracy"])[0], rel=0.2)


def test_paired_figures_draw_the_same_units_for_both():
    # mutant caught: each prediction resampled on its own (the interval of a constant shift would then not be a point)
    from smallct.evaluation.intervals import Units, paired_figures

    rng = np.random.default_rng(0)
    values = rng.normal(size=40)
    units = Units(40, np.repeat(np.arange(10), 4), "patients")
    a = lambda idx: {"mean": float(values[idx].mean())}  # noqa: E731
    b = lambda idx: {"mean": float(values[idx].mean()) + 0.25}  # noqa: E731
    out = paired_figures(a, b, units, ["mean"], n_boot=200, seed=0)["mean"]
    assert out["difference"] == pytest.approx(0.25) and out["ci95"] == pytest.approx([0.25, 0.25])
    assert out["a"] == pytest.approx(values.mean())
