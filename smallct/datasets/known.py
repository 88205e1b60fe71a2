"""Sets smallct recognises by their content, so that their 0/1 labels get names when a folder is read.

:data:`KNOWN_SETS` is the registry of recognisers the generic reader asks (:func:`known_classes`, called by
:func:`smallct.datasets.folder.load_dataset`): each takes the folder and the set read from it (classes as the
files say) and gives the class names of a set it recognises, else None. The reader names no set itself, and
this module imports no reader, so the set modules that do read folders (:mod:`smallct.datasets.head_ct`'s
``verify``) sit above the reader without an import circle.

The one set known today is the Kaggle Head CT set, recognised by the manifest shipped inside the package
(``smallct/datasets/head_ct_manifest.csv``: every file's name, label and SHA-256); :mod:`smallct.datasets.head_ct`
checks a user's copy against that manifest.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path
from typing import Callable

import pandas as pd

HEAD_CT_SOURCE = "kaggle:felipekitamura/head-ct-hemorrhage"
MANIFEST_COLUMNS = ["file", "label", "sha256", "mode", "width", "height", "source"]
MANIFEST = "head_ct_manifest.csv"  # inside this package
HEAD_CT_CLASSES = ["normal", "hemorrhage"]  # the names of labels 0 and 1 (column ``hemorrhage`` of labels.csv)


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def packaged_manifest() -> pd.DataFrame:
    """The Head CT manifest shipped inside the package."""
    with resources.files("smallct.datasets").joinpath(MANIFEST).open("r") as fh:
        return pd.read_csv(fh, dtype={"label": str})


def is_head_ct(folder: str | Path, files: list[Path], labels: list[str]) -> bool:
    """Whether ``files`` (in ``folder``) with ``labels`` (``"0"``/``"1"``, one per file) are the Kaggle Head CT set as
    distributed: the manifest's file names and labels, and each file's content (SHA-256, about 0.1 s for the set)."""
    manifest = packaged_manifest()
    if len(files) != len(manifest):
        return False
    try:
        found = {Path(f).relative_to(folder).as_posix(): str(lab) for f, lab in zip(files, labels)}
    except ValueError:  # a file outside the folder
        return False
    if found != dict(zip(manifest["file"], manifest["label"].astype(str))):
        return False
    return all(sha256(Path(folder) / row.file) == row.sha256 for row in manifest.itertuples())


def head_ct_classes(folder: Path, dataset) -> list[str] | None:
    """:data:`HEAD_CT_CLASSES` for the Head CT set as distributed (:func:`is_head_ct`), else None."""
    if dataset.class_names != ["0", "1"]:
        return None
    return HEAD_CT_CLASSES if is_head_ct(folder, dataset.files, dataset.label_names()) else None


# The recognisers of known sets, asked in order: (folder, dataset as read) -> its class names, or None.
KNOWN_SETS: list[Callable[[Path, object], list[str] | None]] = [head_ct_classes]


def known_classes(folder: str | Path, dataset) -> list[str] | None:
    """The class names of the first known set (:data:`KNOWN_SETS`) that ``dataset``, read from ``folder``, is."""
    for recognise in KNOWN_SETS:
        names = recognise(Path(folder), dataset)
        if names is not None:
            return list(names)
    return None
