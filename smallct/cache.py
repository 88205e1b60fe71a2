"""The decoded-image cache: images decoded, normalised and resized once, kept as one uint8 tensor.

Training never opens an image file: :func:`load_images` returns an (N, 3, S, S) uint8 tensor,
decoded with every core the first time and read back from disk afterwards. The cache lives in
``$SMALLCT_CACHE`` (default ``~/.cache/smallct``), never in the data folder (which may be
read-only). Its key covers each file's path, size and modification time and the preprocessing
settings, so a changed file invalidates it.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from smallct.ingest import prepare

CACHE_VERSION = 1  # bump when the preprocessing changes what a cached image holds


def cache_dir() -> Path:
    """``$SMALLCT_CACHE``, else ``~/.cache/smallct``."""
    return Path(os.environ.get("SMALLCT_CACHE") or Path.home() / ".cache" / "smallct")


def cache_key(files: list[Path], size: int, resize: str, crop: bool) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION}|{size}|{resize}|{crop}".encode())
    for path in files:
        st = Path(path).stat()
        h.update(f"|{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def _prepare_chw(args) -> np.ndarray:
    path, size, resize, crop = args
    return prepare(path, size, resize, crop).transpose(2, 0, 1)


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def decode_all(files: list[Path], size: int, resize: str = "pad", crop: bool = True, workers: int = 0,
               progress: bool = True) -> np.ndarray:
    """Decode and prepare every file: (N, 3, size, size) uint8. ``workers=0`` uses every core."""
    workers = workers or default_workers()
    jobs = [(Path(f), size, resize, crop) for f in files]
    out = np.empty((len(files), 3, size, size), np.uint8)
    bar = tqdm(total=len(jobs), desc=f"decoding {len(jobs)} images", unit="img", disable=not progress, leave=False)
    if workers == 1 or len(jobs) < 16:
        for i, job in enumerate(jobs):
            out[i] = _prepare_chw(job)
            bar.update()
    else:
        with ProcessPoolExecutor(workers) as pool:
            for i, arr in enumerate(pool.map(_prepare_chw, jobs, chunksize=max(1, len(jobs) // (workers * 8)))):
                out[i] = arr
                bar.update()
    bar.close()
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
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)
    return torch.from_numpy(arr)
