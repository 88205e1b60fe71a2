"""Intervals: the one resampler, pooled figures with their interval, and the t interval of a mean."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from smallct.evaluation.intervals import (bootstrap_ci, bootstrap_indices, over_repeats, percentile_interval,
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
