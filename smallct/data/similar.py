"""Near-duplicate and same-patient images: found by pixel similarity, kept in one fold.

The Kaggle Head CT set is described as one slice per person, but it is not: some images appear twice
(``188.png`` = ``189.png``; ``005.png`` and ``058.png`` are the same slice saved at two sizes) and runs
of consecutive ids are neighbouring slices of one patient (``168.png``..``172.png``). With such pairs
split across folds a model is tested on images it was trained on, and cross-validated accuracy is
inflated. :func:`similar_groups` links every pair whose grey thumbnails correlate above a threshold
(union-find, so chains form one group); :func:`smallct.data.folds.make_folds` passes the groups to a
grouped stratified splitter. Grouping unrelated but similar images is the safe error: it only makes folds a little less
balanced, never leaks.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from smallct.config.run import GROUP_SIMILAR
from smallct.data.cache import load_images

DEFAULT_THRESHOLD = GROUP_SIMILAR  # Pearson correlation of 64 px grey thumbnails (after crop and pad)
THUMBNAIL = 64
DECODE_SIZE = 128  # images are decoded at this size, then shrunk to THUMBNAIL (the threshold was set this way)
SKIP_SHARE = 0.1  # a group holding more than this share of the images means uniformly similar images


def similarity(images: torch.Tensor, size: int = THUMBNAIL) -> np.ndarray:
    """Pearson correlation (N, N) between grey thumbnails of uint8 images (N, 3, H, W)."""
    x = images.float().mean(1, keepdim=True)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = x.flatten(1).double()
    x = (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True).clamp_min(1e-6)
    return ((x @ x.T) / (x.shape[1] - 1)).numpy()


def _components(n: int, edges) -> np.ndarray:
    """Connected-component id (N,) of a graph given as (i, j) edges (union-find)."""
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in edges:
        parent[root(i)] = root(j)
    return np.unique([root(i) for i in range(n)], return_inverse=True)[1]


def similar_groups(images: torch.Tensor, threshold: float = DEFAULT_THRESHOLD
                   ) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """Group ids (N,) linking images whose thumbnails correlate at ``threshold`` or more, and the pairs found."""
    corr = similarity(images)
    ii, jj = np.nonzero(np.triu(corr, 1) >= threshold)
    pairs = sorted(((int(i), int(j), float(corr[i, j])) for i, j in zip(ii, jj)), key=lambda p: -p[2])
    return _components(len(corr), [(i, j) for i, j, _ in pairs]), pairs


def combine_groups(a: np.ndarray | None, b: np.ndarray) -> np.ndarray:
    """Groups that keep together whatever either grouping keeps together (e.g. patient and similarity)."""
    if a is None:
        return np.asarray(b)
    edges = []
    for labels in (np.asarray(a).astype(str), np.asarray(b).astype(str)):
        first: dict = {}
        for i, g in enumerate(labels):
            edges.append((i, first.setdefault(g, i)))
    return _components(len(b), edges)


def near_duplicate_groups(dataset, threshold: float | None = DEFAULT_THRESHOLD, resize: str = "pad",
                          crop: bool = True, workers: int = 0, progress: bool = False, log=print
                          ) -> tuple[np.ndarray | None, list[tuple[int, int, float]]]:
    """Groups for a splitter: the dataset's own groups (patients, when known) joined with near-duplicates.

    Images are decoded at :data:`DECODE_SIZE` px and compared as :data:`THUMBNAIL` px thumbnails, whatever
    the training image size, so runs at other
    ``--img-size`` share their folds (and can be compared image by image). When one group would hold
    more than :data:`SKIP_SHARE` of the images (uniformly similar images, as in a synthetic set),
    linking tells nothing about leakage: the grouping is skipped with a message.
    """
    if not threshold:
        return dataset.groups, []
    thumbs = load_images(dataset.files, DECODE_SIZE, resize, crop, workers=workers, progress=progress)
    groups, pairs = similar_groups(thumbs, threshold)
    largest = int(np.bincount(groups).max())
    if largest > len(groups) * SKIP_SHARE:
        log(f"similar-image grouping skipped: {largest} of {len(groups)} images would form one group "
            f"at correlation >= {threshold} (uniformly similar images, as in a synthetic set)")
        return dataset.groups, []
    if pairs:
        shown = "; ".join(f"{dataset.files[i].name}~{dataset.files[j].name} {c:.3f}" for i, j, c in pairs[:4])
        log(f"found {len(pairs)} pairs of near-duplicate or very similar images (thumbnail correlation >= "
            f"{threshold}; e.g. {shown}): each linked set is kept in one fold (--group-similar 0 turns this off)")
    return combine_groups(dataset.groups, groups), pairs
