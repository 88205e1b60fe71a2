"""Summaries: the t interval over episodes, the bootstrap over units of prediction sets, the printed table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from smallct.evaluation.intervals import Units, bootstrap_indices, over_repeats, pooled_figures
from smallct.evaluation.metrics import classification_metrics
from smallct.studies.summary import SUMMARY_METRICS, format_summary, resampled_figures


def _predictions(rng, y, repeats):
    """(repeats, N, 2) noisy probabilities that follow ``y``."""
    p = np.clip(0.35 * y[None] + 0.65 * rng.random((repeats, len(y))), 0, 1)
    return np.stack([1 - p, p], axis=-1)


def test_one_set_per_repeat_is_the_pooled_interval_of_cross_validation():
    # the curve's interval is smallct.cv's pooled_oof_ci95: the same draws over the same units, the same figures
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 45)
    P = _predictions(rng, y, 3)
    units = Units(90, np.arange(90) // 3, "near-duplicate groups")
    point, ci = resampled_figures(y, [(np.arange(90), P[r]) for r in range(3)], units, n_boot=300, seed=4)
    cv_point, cv_ci = pooled_figures(over_repeats(classification_metrics, y, P, SUMMARY_METRICS), units,
                                     SUMMARY_METRICS, n_boot=300, seed=4)
    for m in SUMMARY_METRICS:
        assert point[m] == pytest.approx(cv_point[m], abs=1e-12)
        assert ci[m] == pytest.approx(cv_ci[m], abs=1e-12)
    # how="one" (learning curves): each repeat's interval as cv gives one repeat's, bounds averaged over repeats
    _, one = resampled_figures(y, [(np.arange(90), P[r]) for r in range(3)], units, n_boot=300, seed=4, how="one")
    each = [pooled_figures(over_repeats(classification_metrics, y, P[r:r + 1], SUMMARY_METRICS), units,
                           SUMMARY_METRICS, n_boot=300, seed=4)[1] for r in range(3)]
    for m in SUMMARY_METRICS:
        assert one[m] == pytest.approx(np.mean([e[m] for e in each], axis=0), abs=1e-12)
    with pytest.raises(ValueError, match="how='median'"):
        resampled_figures(y, [(np.arange(90), P[0])], units, n_boot=10, how="median")


def test_sets_of_some_images_take_their_figure_over_those_images_as_drawn():
    # an episode's query set: each resample takes every set's figure over its own images, as often as drawn
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 30)
    P = _predictions(rng, y, 4)
    sets = [(np.sort(rng.choice(60, 40, replace=False)), None) for _ in range(4)]
    sets = [(index, P[e, index]) for e, (index, _) in enumerate(sets)]
    units = Units(60, np.arange(60) // 2, "patients")
    point, ci = resampled_figures(y, sets, units, n_boot=200, seed=2)
    assert point["accuracy"] == pytest.approx(np.mean([classification_metrics(y[i], p)["accuracy"] for i, p in sets]))
    values = []
    for idx in bootstrap_indices(units, 200, seed=2):  # the draws resampled_figures makes (same seed)
        per_set = []
        for index, p in sets:
            taken = np.concatenate([np.flatnonzero(index == i) for i in idx])  # set rows, as often as drawn
            per_set.append(classification_metrics(y[index[taken]], p[taken])["accuracy"])
        values.append(np.mean(per_set))
    assert ci["accuracy"] == pytest.approx(np.quantile(values, [0.025, 0.975]), abs=1e-12)


def test_table_names_its_intervals_and_says_what_they_are():
    row = {"method": "proto", "shots": 1, "count": 3}
    for m in SUMMARY_METRICS:
        row.update({f"{m}_mean": 0.7, f"{m}_std": 0.1, f"{m}_pooled": 0.71, f"{m}_ci_low": 0.6, f"{m}_ci_high": 0.8,
                    f"{m}_new_pool_ci_low": 0.5, f"{m}_new_pool_ci_high": 0.9})
    summary = pd.DataFrame([row])
    two = format_summary(summary, intervals=(("ci", "this pool"), ("new_pool_ci", "new pool")), notes=("a note",))
    assert "mean +- std [this pool] [new pool]" in two and "0.700 +- 0.100 [0.600, 0.800] [0.500, 0.900]" in two
    assert two.splitlines()[-1] == "a note"
    pooled = format_summary(summary, point="pooled", intervals=(("ci", "95% CI"),))
    assert "pooled [95% CI]" in pooled and "0.710 [0.600, 0.800]" in pooled and "+-" not in pooled
