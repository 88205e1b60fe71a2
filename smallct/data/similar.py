"""Near-duplicate and same-patient images: found by pixel similarity, kept in one fold.

The Kaggle Head CT set is described as one slice per person, but it is not: some images appear twice
(``188.png`` = ``189.png``; ``005.png`` and ``058.png`` are the same slice saved at two sizes) and runs
of consecutive ids are neighbouring slices of one patient (``168.png``..``172.png``). With such pairs
split across folds a model is tested on images it was trained on, and cross-validated accuracy is
inflated. :func:`similar_groups` links every pair whose grey thumbnails correlate above a threshold
(union-find, so chains form one group), comparing the thumbnails block by block (:func:`similar_pairs`: memory
flat in N, time quadratic); :func:`smallct.data.folds.make_folds` passes the groups to a
grouped stratified splitter. Grouping unrelated but similar images is the safe error: it only makes folds a little less
balanced, never leaks.

Grouping never switches itself off. When single linkage chains an implausibly large set (more than
:data:`PLAUSIBLE_SHARE` of the images, or of the patients where patients are known, counting only links
between different patients), the links are cut at the stricter correlation where no set is that large,
and :class:`Grouping` records it; when even near-identical links (:data:`STRICTEST_CUT`) chain such a set,
a ``ValueError`` says how to choose (``--group-similar 0`` turns grouping off knowingly).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from smallct.config.run import GROUP_SIMILAR
from smallct.data.cache import open_images, sidecar
from smallct.data.source import BatchSource, DiskSource, as_source
from smallct.io.files import atomic_write
from smallct.evaluation.intervals import Units

DEFAULT_THRESHOLD = GROUP_SIMILAR  # Pearson correlation of 64 px grey thumbnails (after crop and pad)
THUMBNAIL = 64
DECODE_SIZE = 128  # images are decoded at this size, then shrunk to THUMBNAIL (the threshold was set this way)
CANONICAL_RESIZE = "pad"  # ... with this resize and crop, whatever the run's own preprocessing, so that runs with
CANONICAL_CROP = True  # other --resize, --no-crop or --img-size share their folds and can be compared image by image
PLAUSIBLE_SHARE = 0.1  # a linked set of more than this share of the images (patients) is not a set of near-duplicates
PLAUSIBLE_MIN = 3  # ... nor is it at any size up to this (two or three copies of one slice are plausible in a small set)
STRICTEST_CUT = 0.97  # links this close are the same slice: when they alone chain a large set, stop and ask


BLOCK = 1024  # thumbnails compared (and made) this many at a time: memory O(N x thumbnail + BLOCK x thumbnail)
SCREEN_MARGIN = 1e-3  # the float32 screen keeps pairs this far below the threshold; each is then checked in float64
#                       (over 4x the worst-case float32 rounding of a 4096-term correlation, 4096 x 6e-8)
THUMB_BLOCK = 256  # images shrunk to thumbnails at a time (a float copy of 256 decoded 128 px images: 50 MB)


def thumbnails(images: BatchSource | torch.Tensor, size: int = THUMBNAIL, block: int = THUMB_BLOCK,
               out: np.ndarray | None = None) -> torch.Tensor | np.ndarray:
    """Grey thumbnails (N, size * size), float32, of uint8 images (N, 3, H, W), made ``block`` images at a time;
    into ``out`` (a memory-mapped array, say) when given."""
    images = as_source(images)
    table = torch.empty((len(images), size * size), dtype=torch.float32) if out is None else out
    for start, xb in zip(range(0, len(images), block), images.in_batches(block)):
        x = xb.float().mean(1, keepdim=True)
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        table[start:start + len(xb)] = x.flatten(1) if out is None else x.flatten(1).numpy()
    return table


def thumbnail_table(images: BatchSource | torch.Tensor, block: int = THUMB_BLOCK) -> np.ndarray:
    """The grey thumbnails of ``images`` as an (N, THUMBNAIL**2) float32 array: in memory for images in memory; for
    a disk source a memory-mapped file beside its cache (made once), so that no copy of N thumbnails is private
    memory (750,000 images: 12 GB)."""
    source = as_source(images)
    if not isinstance(source, DiskSource):
        return thumbnails(source, block=block).numpy()
    path = sidecar(source.path, f".thumbs{THUMBNAIL}")  # removed with its cache (smallct.data.cache.SIDECARS)
    shape = (len(source), THUMBNAIL * THUMBNAIL)
    try:
        table = np.load(path, mmap_mode="r")
        if table.shape == shape and table.dtype == np.float32:
            return table
    except (OSError, ValueError):
        pass  # none yet, or a damaged one: made again
    try:
        with atomic_write(path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
            thumbnails(source, block=block, out=out)
            out.flush()
            del out
    except OSError:  # a read-only cache folder: the thumbnails in memory
        return thumbnails(source, block=block).numpy()
    return np.load(path, mmap_mode="r")


def _rows(table: np.ndarray, index) -> torch.Tensor:
    """Rows of a thumbnail table (a slice or indices) as a float32 tensor of their own."""
    return torch.from_numpy(np.array(table[index]))


def _standardised(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` centred and scaled to unit (sample) standard deviation, in float64."""
    x = x.to(torch.float64, copy=True)  # the caller's rows are left as they are
    std = x.std(1, keepdim=True).clamp_min(1e-6)
    return x.sub_(x.mean(1, keepdim=True)).div_(std)


def similarity(images: torch.Tensor, size: int = THUMBNAIL) -> np.ndarray:
    """Pearson correlation (N, N) between grey thumbnails of uint8 images (N, 3, H, W): small sets only
    (N x N float64); :func:`similar_pairs` finds the pairs above a threshold in memory flat in N."""
    x = _standardised(thumbnails(images, size))
    return ((x @ x.T) / (x.shape[1] - 1)).numpy()


def similar_pairs(images: torch.Tensor, threshold: float = DEFAULT_THRESHOLD, block: int = BLOCK
                  ) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, correlation)``, i < j, whose thumbnails correlate at ``threshold`` or more, closest first.

    The thumbnails are compared ``block`` x ``block`` at a time in float32 (quadratic in time, never an N x N
    matrix); the pairs within :data:`SCREEN_MARGIN` of the threshold or above are then computed in float64,
    as :func:`similarity` does, so the pairs and their correlations are those of the full matrix.
    """
    thumbs = thumbnail_table(images, block=min(block, THUMB_BLOCK))
    n, scale = len(thumbs), thumbs.shape[1] - 1
    screen = threshold - SCREEN_MARGIN
    found_i, found_j = [], []
    for r0 in range(0, n, block):
        rows = _standardised(_rows(thumbs, slice(r0, r0 + block))).float()
        for c0 in range(r0, n, block):
            cols = rows if c0 == r0 else _standardised(_rows(thumbs, slice(c0, c0 + block))).float()
            near = (rows @ cols.T) / scale >= screen
            if c0 == r0:
                near = torch.triu(near, 1)  # each pair once, never an image with itself
            if near.any():
                ii, jj = torch.nonzero(near, as_tuple=True)
                found_i.append(ii + r0)
                found_j.append(jj + c0)
    ii, jj = (torch.cat(found_i), torch.cat(found_j)) if found_i else (torch.empty(0, dtype=torch.long),) * 2
    corr = torch.cat([(_standardised(_rows(thumbs, ii[k:k + block].numpy()))
                       * _standardised(_rows(thumbs, jj[k:k + block].numpy()))).sum(1)
                      for k in range(0, len(ii), block)] or [torch.empty(0, dtype=torch.float64)]) / scale
    keep = corr >= threshold
    pairs = [(int(i), int(j), float(c)) for i, j, c in zip(ii[keep], jj[keep], corr[keep])]
    return sorted(pairs, key=lambda p: (-p[2], p[0], p[1]))


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
    pairs = similar_pairs(images, threshold)
    return _components(len(images), [(i, j) for i, j, _ in pairs]), pairs


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


@dataclass(frozen=True)
class Grouping:
    """The groups a splitter keeps whole, and how they were found.

    ``groups`` (N,) group ids (None: none, every image on its own); ``pairs`` the near-duplicate links kept,
    ``(i, j, correlation)``; ``threshold`` the correlation asked for (None: not looked for); ``cut_above``
    the stricter correlation the links were cut above when the asked one chained an implausible set;
    ``unit`` what a group is, in words (the unit a bootstrap of these folds resamples); ``note`` what was done.
    """

    groups: np.ndarray | None
    pairs: list[tuple[int, int, float]] = field(default_factory=list)
    threshold: float | None = None
    cut_above: float | None = None
    unit: str = "images"
    note: str = ""

    def record(self, ids: list[str]) -> dict:
        """What ``run.json`` records: the thresholds, the pairs by image id, what was done."""
        return {"threshold": self.threshold, "cut_above": self.cut_above, "unit": self.unit, "note": self.note,
                "pairs": [[ids[i], ids[j], round(c, 4)] for i, j, c in self.pairs]}

    def units(self, n_images: int) -> Units:
        """What a bootstrap of figures over these ``n_images`` resamples: the groups kept whole (images when none)."""
        if self.groups is None or self.unit == "images":
            return Units(n_images)
        return Units(n_images, self.groups, self.unit)

    def subset(self, index) -> "Grouping":
        """The grouping of the images ``index`` (in that order): their groups and pairs as found on the whole set,
        never looked for again (a fresh cut on fewer images can be stricter and split a group)."""
        index = np.asarray(index)
        where = {int(i): n for n, i in enumerate(index)}
        pairs = [(where[i], where[j], c) for i, j, c in self.pairs if i in where and j in where]
        groups = None if self.groups is None else np.unique(self.groups[index], return_inverse=True)[1].ravel()
        return replace(self, groups=groups, pairs=pairs, note=f"the groups of the whole set, kept ({self.note})")


def plausible_cut(owner: np.ndarray, pairs: list[tuple[int, int, float]], share: float = PLAUSIBLE_SHARE
                  ) -> tuple[float | None, int]:
    """The correlation above which links must be cut so that no linked set holds more than ``share`` of the
    owners (patients, or images), and the largest set the asked links would make.

    ``owner`` (N,) owner index per image, ``pairs`` sorted by decreasing correlation. Single linkage adds
    the links from the closest down; the first link that would join a set larger than allowed sets the cut
    (None: no cut needed). Links within one owner are not counted: a patient's series is one group by design.
    """
    n = int(owner.max()) + 1 if len(owner) else 0
    limit = max(share * n, PLAUSIBLE_MIN)
    parent, size = list(range(n)), [1] * n

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    cut, largest = None, 1
    for i, j, c in pairs:
        a, b = root(owner[i]), root(owner[j])
        if a == b:
            continue
        parent[a] = b
        size[b] += size[a]
        if size[b] > limit and cut is None:
            cut = c
        largest = max(largest, size[b])
    return cut, largest


def near_duplicate_groups(dataset, threshold: float | None = DEFAULT_THRESHOLD, workers: int = 0,
                          progress: bool = False, log=print) -> Grouping:
    """Groups for a splitter: the dataset's own groups (patients, when known) joined with near-duplicates.

    Every file is decoded one canonical way (:data:`DECODE_SIZE` px, :data:`CANONICAL_RESIZE`, cropped to
    content) and compared as a :data:`THUMBNAIL` px grey thumbnail, whatever the run's ``--img-size``,
    ``--resize`` or ``--no-crop``: the groups, and so the folds, depend only on the files, and runs that
    preprocess differently share their folds (and can be compared image by image). An implausibly large linked set is cut at a stricter correlation, saying so, or, when only
    near-identical links chain it, a ``ValueError`` (see the module's text).
    """
    patients = dataset.groups
    if not threshold:
        unit = "patients" if patients is not None else "images"
        return Grouping(patients, [], None, None, unit, "near-duplicates not looked for (--group-similar 0)")
    thumbs = open_images(dataset.files, DECODE_SIZE, CANONICAL_RESIZE, CANONICAL_CROP, store="disk",
                         workers=workers, progress=progress)
    _, pairs = similar_groups(thumbs, threshold)
    owner = (np.arange(len(dataset)) if patients is None
             else np.unique(np.asarray(patients).astype(str), return_inverse=True)[1].ravel())
    pairs = [p for p in pairs if owner[p[0]] != owner[p[1]]]  # links within a patient add nothing
    whom = "patients" if patients is not None else "images"
    cut, largest = plausible_cut(owner, pairs)
    note = f"links at thumbnail correlation >= {threshold}"
    if cut is not None:
        if cut >= STRICTEST_CUT:
            raise ValueError(
                f"near-duplicate grouping: {largest} of {owner.max() + 1} {whom} form one linked set even through "
                f"links of correlation >= {STRICTEST_CUT} (uniformly similar images?): such a set cannot be kept in "
                f"one fold; pass --group-similar 0 to turn grouping off knowingly")
        kept = [p for p in pairs if p[2] > cut]
        note = (f"at correlation >= {threshold} {largest} of {owner.max() + 1} {whom} formed one linked set "
                f"(implausible for near-duplicates: more than {PLAUSIBLE_SHARE:.0%}); links cut above {cut:.4f}, "
                f"keeping {len(kept)} of {len(pairs)} pairs")
        log(f"near-duplicate grouping: {note} (--group-similar CORR to choose, 0 turns grouping off)")
        pairs = kept
    if pairs:
        shown = "; ".join(f"{dataset.files[i].name}~{dataset.files[j].name} {c:.3f}" for i, j, c in pairs[:4])
        log(f"found {len(pairs)} pairs of near-duplicate or very similar images (thumbnail correlation >= "
            f"{threshold}; e.g. {shown}): each linked set is kept in one fold (--group-similar 0 turns this off)")
    linked = _components(len(dataset), [(i, j) for i, j, _ in pairs])
    groups = combine_groups(patients, linked)
    if patients is not None:
        unit = "patient groups" if pairs else "patients"
    else:
        unit = "near-duplicate groups" if pairs else "images"
    return Grouping(groups, pairs, threshold, cut, unit, note)
