"""Near-duplicate and same-patient images: found by pixel similarity, kept in one fold.

The Kaggle Head CT set is described as one slice per person, but it is not: some images appear twice
(``188.png`` = ``189.png``; ``005.png`` and ``058.png`` are the same slice saved at two sizes) and runs
of consecutive ids are neighbouring slices of one patient (``168.png``..``172.png``). With such pairs
split across folds a model is tested on images it was trained on, and cross-validated accuracy is
inflated. :func:`similar_groups` links every pair whose grey thumbnails correlate above a threshold
(union-find, so chains form one group); ``smallct.cv`` passes the groups to a grouped stratified
splitter. Grouping unrelated but similar images is the safe error: it only makes folds a little less
balanced, never leaks.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_THRESHOLD = 0.92  # Pearson correlation of 64 px grey thumbnails (after crop and pad)
THUMBNAIL = 64


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
