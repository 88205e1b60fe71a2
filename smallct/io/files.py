"""Writing files so that a reader never sees half of one, and smallct's cache folder.

Every file smallct writes that another process, a resumed run or a crash may meet (run records, fold
results, cached arrays, prepared PNGs, study reports) goes through :func:`atomic_write`: the content is
written to a temporary file beside the target, named after this process, then moved over the target in
one step (``os.replace``). Parallel writers (tuning workers) never share a temporary file.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def cache_dir() -> Path:
    """Where decoded images, embeddings and generated sets are kept: ``$SMALLCT_CACHE``, else ``~/.cache/smallct``."""
    return Path(os.environ.get("SMALLCT_CACHE") or Path.home() / ".cache" / "smallct")


def temporary_path(path: Path) -> Path:
    """The temporary file :func:`atomic_write` uses for ``path`` (``.NAME.PID.tmp`` beside it)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` at once, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def move_into_place(src: str | Path, path: str | Path) -> None:
    """Move a finished file (a chunk-by-chunk cache's ``.partial``) over ``path`` in one step."""
    os.replace(src, path)


def atomic_text(path: str | Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def atomic_json(path: str | Path, obj: Any, default=float) -> None:
    """Write ``obj`` as indented JSON; ``default`` turns what JSON cannot hold (numpy numbers) into a value."""
    atomic_text(path, json.dumps(obj, indent=1, default=default))


def atomic_csv(path: str | Path, table) -> None:
    """Write a pandas DataFrame as CSV, without its index."""
    with atomic_write(path) as tmp:
        table.to_csv(tmp, index=False)


def atomic_npy(path: str | Path, array) -> None:
    """Write a numpy array as ``.npy``."""
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)
