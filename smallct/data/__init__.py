"""A labelled set on its way to the model: the decoded-image cache, batched augmentation, near-duplicate
groups and the folds.

``cache``: :func:`open_images` (the (N, 3, S, S) uint8 images, decoded once into a cache built in chunks) and
:func:`load_images` (the same as one tensor); ``source``: :class:`BatchSource` (rows read by index, in memory or
memory-mapped); ``transforms``: :func:`augment`,
:func:`normalize`; ``similar``: :func:`near_duplicate_groups`; ``folds``: :func:`make_folds`, the one
maker of folds, returning :class:`Folds` (assignment and groups). ``python -m smallct.data verify DIR``
checks a copy of the Head CT set (:mod:`smallct.datasets.head_ct`).
"""

from smallct import _legacy
from smallct._lazy import exports

__all__, __getattr__, __dir__ = exports(__name__, {
    "smallct.data.transforms": ["augment", "normalize", "random_affine", "random_flip"],
    "smallct.data.cache": ["build_cache", "cache_key", "cache_path", "decode_all", "load_images", "open_images"],
    "smallct.data.source": ["BatchSource", "DiskSource", "MemorySource", "as_source", "choose_store"],
    "smallct.data.folds": ["Folds", "check_fold_classes", "fold_assignment", "make_folds"],
    "smallct.data.seeds": ["FOLDS_SCHEME", "episode_seed", "fit_seed", "fold_draw_seed", "subset_seed"],
    "smallct.data.similar": ["Grouping", "combine_groups", "near_duplicate_groups", "plausible_cut", "similar_groups",
        "similar_pairs", "similarity", "thumbnails"],
}, fallback=_legacy.forward(__name__))  # smallct 0.1's smallct.data (the Head CT manifest): verify, build_manifest
