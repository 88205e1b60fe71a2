"""The decoded-image cache: images decoded, normalised and resized once, kept as one uint8 tensor.

Training never opens an image file: :func:`load_images` returns an (N, 3, S, S) uint8 tensor,
decoded with every core the first time and read back from disk afterwards. The cache lives in
:func:`smallct.io.files.cache_dir` (``$SMALLCT_CACHE``, default ``~/.cache/smallct``), never in the data
folder (which may be read-only). Its key covers each file's path, size and modification time and the preprocessing
settings, so a changed file invalidates it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from smallct.io.files import atomic_npy, cache_dir
from smallct.io.images import preprocess
from smallct.parallel import parallel_map

CACHE_VERSION = 1  # bump when the preprocessing changes what a cached image holds


def cache_key(files: list[Path], size: int, resize: str, crop: bool) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION}|{size}|{resize}|{crop}".encode())
    for path in files:
        st = Path(path).stat()
        h.update(f"|{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def _preprocess_chw(args) -> np.ndarray:
    path, size, resize, crop = args
    return preprocess(path, size, resize, crop).transpose(2, 0, 1)


def decode_all(files: list[Path], size: int, resize: str = "pad", crop: bool = True, workers: int = 0,
               progress: bool = True) -> np.ndarray:
    """Decode and preprocess every file: (N, 3, size, size) uint8. ``workers=0`` uses every core."""
    jobs = [(Path(f), size, resize, crop) for f in files]
    out = np.empty((len(files), 3, size, size), np.uint8)
    decoded = parallel_map(_preprocess_chw, jobs, workers, progress, desc=f"decoding {len(jobs)} images", unit="img",
                           leave=False)
    for i, arr in enumerate(decoded):
        out[i] = arr
    return out


def load_images(files: list[Path], size: int, resize: str = "pad", crop: bool = True,
                cache: Path | bool | None = None, workers: int = 0, progress: bool = True) -> torch.Tensor:
    """All images as one (N, 3, size, size) uint8 tensor, through the on-disk cache.

    ``cache``: a folder, ``None`` for :func:`cache_dir`, or ``False`` for no disk cache.
    """
    files = [Path(f) for f in files]
    if cache is False:
        return torch.from_numpy(decode_all(files, size, resize, crop, workers, progress))
    folder = Path(cache) if cache is not None else cache_dir()
    path = folder / f"images-{cache_key(files, size, resize, crop)}.npy"
    if path.is_file():
        try:
            return torch.from_numpy(np.load(path))
        except (OSError, ValueError):
            pass  # a damaged cache file is rebuilt below
    arr = decode_all(files, size, resize, crop, workers, progress)
    atomic_npy(path, arr)
    return torch.from_numpy(arr)
