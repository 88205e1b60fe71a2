"""Bleeds that need series context, for ``write_synthetic_rsna(..., lesions="context")``.

Each bleed is one subtype on a contiguous run of ``span`` (3-8) neighbouring slices in slice order along the
normal, faint (``contrast`` HU above the brain), largest mid-run and smaller towards its ends, at the same place
on every slice of its run: one slice alone is hard to read, several neighbours together easier. The subtypes
differ in place and shape so that the six labels can be learnt:

* epidural: a biconvex lens against the inner table of the skull,
* subdural: a long thin crescent along the inner table,
* subarachnoid: thin radial lines (sulci) in a band under the skull,
* intraparenchymal: a blob in the brain,
* intraventricular: two small blobs either side of the centre.

:func:`plan_lesions` draws a series' bleeds from a generator alone (no pixels), so that labels and rates can be
computed without writing a file; :func:`slice_labels` gives the per-slice labels (``any`` = union of the
subtypes); :func:`draw_lesions` adds a slice's bleeds to its HU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from smallct.datasets.rsna import SUBTYPES

# Share of bleeds of each subtype: near the RSNA 2019 training set's slice rates (subdural 6.3%,
# intraparenchymal 4.8%, subarachnoid 4.7%, intraventricular 3.5%, epidural 0.4% of slices), epidural raised to
# 4% of bleeds so that a 500-patient set holds a few dozen epidural slices.
SUBTYPE_SHARE = {"epidural": 0.04, "intraparenchymal": 0.24, "intraventricular": 0.17, "subarachnoid": 0.24,
                 "subdural": 0.31}
assert tuple(SUBTYPE_SHARE) == SUBTYPES


@dataclass(frozen=True)
class Lesion:
    """One bleed: its subtype, its run of slices ``start .. start + length - 1`` and where it sits."""

    subtype: str
    start: int
    length: int
    angle: float  # direction from the head's centre, radians
    place: tuple[float, float]  # (y, x) offset from the centre, as a share of the skull's inner radius
    extent: float  # size factor


def plan_lesions(rng: np.random.Generator, n_slices: int, *, rate: float = 0.5, span: tuple[int, int] = (3, 8),
                 extra: float = 0.6) -> list[Lesion]:
    """The bleeds of one series of ``n_slices`` slices, drawn from ``rng`` alone.

    A series bleeds with probability ``rate``; then it has one bleed and up to 3 more, each with probability
    ``extra``; a further bleed starts within 3 slices of the first one with probability 0.6 (bleeds of several
    subtypes on the same slices, as in RSNA). Each bleed's length is uniform in ``span`` (at most ``n_slices``).
    The defaults give about 14% of slices with ``any`` at 40 slices per series (RSNA: 14.4%), subtypes 1-6%.
    """
    if not 1 <= span[0] <= span[1]:
        raise ValueError(f"span={span}: expected (shortest, longest) run of slices, 1 <= shortest <= longest")
    if rng.uniform() >= rate:
        return []
    count = 1 + int((rng.uniform(size=3) < extra).sum())
    lesions, first = [], None
    for _ in range(count):
        subtype = str(rng.choice(SUBTYPES, p=list(SUBTYPE_SHARE.values())))
        length = min(int(rng.integers(span[0], span[1] + 1)), n_slices)
        start = int(rng.integers(0, n_slices - length + 1))
        if first is not None and rng.uniform() < 0.6:
            start = int(np.clip(first + rng.integers(-3, 4), 0, n_slices - length))
        first = start if first is None else first
        lesions.append(Lesion(subtype, start, length, float(rng.uniform(-np.pi, np.pi)),
                              (float(rng.uniform(-0.45, 0.45)), float(rng.uniform(-0.45, 0.45))),
                              float(rng.uniform(0.75, 1.3))))
    return lesions


def slice_labels(lesions: list[Lesion], n_slices: int) -> np.ndarray:
    """(n_slices, 6) int 0/1 labels in :data:`smallct.datasets.rsna.LABELS` order (``any`` first, the union)."""
    y = np.zeros((n_slices, 1 + len(SUBTYPES)), np.int64)
    for lesion in lesions:
        y[lesion.start:lesion.start + lesion.length, 1 + SUBTYPES.index(lesion.subtype)] = 1
    y[:, 0] = y[:, 1:].max(axis=1)
    return y


@dataclass(frozen=True)
class HeadGeometry:
    """Per-pixel polar coordinates about the head's centre and the depth inside the skull's inner table, px."""

    cy: float
    cx: float
    radius: float  # the inner table's median radius
    yy: np.ndarray
    xx: np.ndarray
    theta: np.ndarray
    depth: np.ndarray  # inner-table radius at the pixel's angle minus its radius (negative: bone or outside)


def head_geometry(hu: np.ndarray, bins: int = 72) -> HeadGeometry:
    """The geometry of a phantom slice (:func:`smallct.datasets.phantom.head_phantom_hu`): air, skull, brain."""
    size = hu.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    head = hu > -500
    cy, cx = float(yy[head].mean()), float(xx[head].mean())
    r = np.hypot(yy - cy, xx - cx)
    theta = np.arctan2(yy - cy, xx - cx)
    which = ((theta + np.pi) / (2 * np.pi) * bins).astype(int) % bins
    bone = hu > 300
    inner = np.full(bins, np.inf)
    np.minimum.at(inner, which[bone], r[bone])
    inner[~np.isfinite(inner)] = np.median(inner[np.isfinite(inner)])
    return HeadGeometry(cy, cx, float(np.median(inner)), yy, xx, theta, inner[which] - r)


def _mask(lesion: Lesion, g: HeadGeometry, scale: float) -> np.ndarray:
    """The bleed's pixels on a slice where its size is ``scale`` (0-1] of its mid-run size."""
    unit = g.yy.shape[0] / 64 * lesion.extent * scale  # sizes below are in px of a 64 px slice
    inside = g.depth >= 0.5
    turn = np.angle(np.exp(1j * (g.theta - lesion.angle)))  # angle from the bleed's direction, -pi..pi
    if lesion.subtype == "epidural":  # lens: thick in the middle, thin at its ends
        half = 0.45 * np.sqrt(scale)
        return inside & (np.abs(turn) < half) & (g.depth < 0.5 + 4.5 * unit * (1 - (turn / half) ** 2))
    if lesion.subtype == "subdural":  # crescent: long and thin
        half = 1.2 * np.sqrt(scale)
        lens = 0.5 + 2.0 * unit * np.sqrt(np.clip(1 - (turn / half) ** 2, 0, None))
        return inside & (np.abs(turn) < half) & (g.depth < lens)
    if lesion.subtype == "subarachnoid":  # thin lines in the sulci under the skull
        half = 1.0 * np.sqrt(scale)
        sulci = np.abs(np.sin(14 * g.theta + 7 * lesion.angle)) > 0.9
        return inside & (np.abs(turn) < half) & sulci & (g.depth > 1.0) & (g.depth < 1.0 + 6.0 * unit)
    if lesion.subtype == "intraparenchymal":  # blob
        ly, lx = g.cy + lesion.place[0] * g.radius, g.cx + lesion.place[1] * g.radius
        ry, rx = 3.5 * unit, 3.5 * unit * (0.6 + 0.4 * abs(np.cos(lesion.angle)))
        return (g.depth >= 2) & (((g.yy - ly) / ry) ** 2 + ((g.xx - lx) / rx) ** 2 <= 1)
    if lesion.subtype == "intraventricular":  # two small blobs either side of the midline
        off, ry, rx = 0.14 * g.radius, 3.0 * unit, 1.8 * unit
        return sum(((g.yy - g.cy + 0.05 * g.radius) / ry) ** 2 + ((g.xx - g.cx - side * off) / rx) ** 2 <= 1
                   for side in (-1, 1)) > 0
    raise ValueError(f"unknown subtype {lesion.subtype!r}: expected one of {', '.join(SUBTYPES)}")


def draw_lesions(hu: np.ndarray, g: HeadGeometry, lesions: list[Lesion], index: int, contrast: float) -> np.ndarray:
    """``hu`` (float) with the bleeds that cover slice ``index`` added, ``contrast`` HU each, in place; returned."""
    for lesion in lesions:
        t = index - lesion.start
        if 0 <= t < lesion.length:
            scale = 0.4 + 0.6 * np.sin(np.pi * (t + 1) / (lesion.length + 1))  # largest mid-run
            hu[_mask(lesion, g, scale)] += contrast
    return hu
