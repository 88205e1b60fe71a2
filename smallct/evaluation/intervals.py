"""Intervals: the one place smallct resamples, and the one helper for pooled figures with intervals.

* :func:`bootstrap_indices` draws the resamples; every bootstrap of smallct (pooled cross-validated
  figures, nested CV, the shortcut audit, the paired comparison of two runs) draws from it, so how
  resampling is done changes here alone. It resamples :class:`Units`: the groups the folds keep whole
  (near-duplicate sets, patients) when there are any, a cluster bootstrap, since images of one group
  are not independent; images otherwise.
* :func:`pooled_figures`: a figure of all images and its percentile bootstrap interval, for any
  ``figure(indices) -> {name: value}``; :func:`over_repeats` makes such a figure of repeated-CV
  predictions (the mean over repeats of the figure of each repeat's pooled out-of-fold predictions).
* :func:`paired_figures`: the difference of two predictions' figures of the same images, with a paired interval
  (the same resampled units for both).
* :func:`t_interval`: mean, standard deviation and Student-t interval of the mean of repeated
  measurements (few-shot episodes, learning-curve folds).
* :func:`nadeau_bengio`: the corrected resampled t-test of per-fold differences (Nadeau and Bengio 2003).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
from scipy import stats

Figure = Callable[[np.ndarray], dict]


@dataclass(frozen=True)
class Units:
    """What a bootstrap resamples: every image on its own (``groups`` None), or groups of images.

    ``groups`` (N,) holds a group id per image: the groups the folds keep whole, so that the interval
    resamples the same units that were split. ``name`` says what a unit is in words ("images",
    "near-duplicate groups", "patients", "patient groups"); ``n_images`` is N.
    """

    n_images: int
    groups: np.ndarray | None = None
    name: str = "images"
    members: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.groups is None:
            members = ()
        else:
            groups = np.asarray(self.groups)
            if len(groups) != self.n_images:
                raise ValueError(f"groups: {len(groups)} ids for {self.n_images} images")
            _, inverse = np.unique(groups.astype(str), return_inverse=True)
            order = np.argsort(inverse, kind="stable")
            members = tuple(np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1))
        object.__setattr__(self, "members", members)

    @property
    def n(self) -> int:
        """How many units there are."""
        return len(self.members) if self.groups is not None else self.n_images

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """One resample: ``n`` units drawn with replacement, as the indices of their images."""
        if self.groups is None:
            return rng.integers(0, self.n_images, self.n_images)
        return np.concatenate([self.members[u] for u in rng.integers(0, self.n, self.n)])

    def describe(self, n_boot: int) -> str:
        """``percentile bootstrap over 158 near-duplicate groups of 200 images (1000 resamples)``."""
        of = f" of {self.n_images} images" if self.groups is not None else ""
        return f"percentile bootstrap over {self.n} {self.name}{of} ({n_boot} resamples)"

    def record(self) -> dict:
        """What results files say about the resampling: the unit and how many there were."""
        return {"unit": self.name, "n_units": self.n, "n_images": self.n_images}


def as_units(units: int | Units) -> Units:
    """``units`` as :class:`Units` (an int ``n``: ``n`` images, each on its own)."""
    return units if isinstance(units, Units) else Units(int(units))


def bootstrap_indices(units: int | Units, n_boot: int, seed: int = 0) -> Iterator[np.ndarray]:
    """``n_boot`` seeded resamples of ``units`` (an int ``n``: ``n`` images): index arrays of the images of
    the units drawn with replacement (``n`` draws of images; with groups, as many draws as groups)."""
    units = as_units(units)
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield units.draw(rng)


def bootstrap(figure: Figure, units: int | Units, n_boot: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Each value of ``figure(indices)`` over the resamples of :func:`bootstrap_indices`; resamples where
    a value is undefined (NaN: one class only, for AUC) are dropped for that value."""
    values: dict[str, list[float]] = {}
    for idx in bootstrap_indices(units, n_boot, seed):
        for k, v in figure(idx).items():
            if np.isfinite(v):
                values.setdefault(k, []).append(v)
    return {k: np.asarray(v) for k, v in values.items()}


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap values."""
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def bootstrap_ci(y: np.ndarray, P: np.ndarray, metric: Callable[[np.ndarray, np.ndarray], dict[str, float]],
                 n_boot: int = 2000, seed: int = 0, level: float = 0.95, groups: np.ndarray | None = None,
                 unit: str = "groups") -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of each value of ``metric(y, P)`` over images resampled with replacement,
    or, with ``groups`` (N,), over the groups (a cluster bootstrap)."""
    units = Units(len(y)) if groups is None else Units(len(y), np.asarray(groups), unit)
    values = bootstrap(lambda idx: metric(y[idx], P[idx]), units, n_boot, seed)
    return {k: percentile_interval(v, level) for k, v in values.items()}


def over_repeats(metric: Callable[[np.ndarray, np.ndarray], dict], y: np.ndarray, P: np.ndarray,
                 names: Sequence[str]) -> Figure:
    """``figure(indices)``: the mean over repeats of ``metric(y[idx], P[r, idx])`` for each of ``names``.

    ``P`` is (repeats, N, ...) out-of-fold predictions; the metric is computed once per repeat.
    """
    def figure(idx: np.ndarray) -> dict:
        per_repeat = [metric(y[idx], P[r, idx]) for r in range(len(P))]
        return {k: np.mean([m[k] for m in per_repeat]) for k in names}
    return figure


def pooled_figures(figure: Figure, units: int | Units, ci: Sequence[str], n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95) -> tuple[dict, dict[str, list[float]]]:
    """The figures of all images, and a percentile bootstrap interval of those named in ``ci``.

    ``units``: what is resampled (:class:`Units`; an int ``n``: ``n`` images, each on its own).
    Returns ``(point, intervals)``: ``point = figure(arange(n_images))``, ``intervals = {name: [low, high]}``.
    """
    units = as_units(units)
    point = figure(np.arange(units.n_images))
    wanted = set(ci)
    values = bootstrap(lambda idx: {k: v for k, v in figure(idx).items() if k in wanted}, units, n_boot, seed)
    return point, {k: list(percentile_interval(v, level)) for k, v in values.items()}


def paired_figures(figure_a: Figure, figure_b: Figure, units: int | Units, names: Sequence[str], n_boot: int = 1000,
                   seed: int = 0, level: float = 0.95) -> dict[str, dict]:
    """A paired comparison of two predictions of the same images: for each of ``names``, both figures of all
    images, the difference ``B - A`` and its percentile interval over resamples that draw the same units for both
    (resamples where either is undefined dropped). Returns ``{name: {"a", "b", "difference", "ci95"}}``."""
    units = as_units(units)
    everything = np.arange(units.n_images)
    point_a, point_b = figure_a(everything), figure_b(everything)
    diffs: dict[str, list[float]] = {k: [] for k in names}
    for idx in bootstrap_indices(units, n_boot, seed):
        fa, fb = figure_a(idx), figure_b(idx)
        for k in names:
            d = fb[k] - fa[k]
            if np.isfinite(d):
                diffs[k].append(d)
    return {k: {"a": float(point_a[k]), "b": float(point_b[k]), "difference": float(point_b[k] - point_a[k]),
                "ci95": list(percentile_interval(np.asarray(diffs[k]), level)) if diffs[k] else [float("nan")] * 2}
            for k in names}


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, standard deviation (ddof=1) and the ``level`` Student-t interval of the mean of ``values``
    (NaN values left out; NaN where too few remain)."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    mean = float(v.mean()) if len(v) else float("nan")
    sd = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * sd / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return mean, sd, mean - half, mean + half


def nadeau_bengio(diffs: np.ndarray, n_train: float, n_test: float, level: float = 0.95) -> dict:
    """Corrected resampled t-test (Nadeau and Bengio 2003) of per-fold differences ``diffs`` (J,).

    The variance of the mean is ``(1/J + n_test/n_train) s^2`` instead of ``s^2/J``: the folds'
    training sets overlap, so their results are correlated. Returns mean, t, df, two-sided p, CI.
    """
    diffs = np.asarray(diffs, dtype=float)
    j = len(diffs)
    mean = float(diffs.mean())
    var = float(diffs.var(ddof=1))
    se = np.sqrt((1 / j + n_test / n_train) * var)
    df = j - 1
    if se == 0:
        t, p = (0.0, 1.0) if mean == 0 else (float(np.sign(mean) * np.inf), 0.0)
    else:
        t = mean / se
        p = float(2 * stats.t.sf(abs(t), df))
    half = float(stats.t.ppf(0.5 + level / 2, df) * se)
    return {"mean_difference": mean, "t": float(t), "df": df, "p_value": p, "ci95": [mean - half, mean + half],
            "n_folds": j, "correction": n_test / n_train}
