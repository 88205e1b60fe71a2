"""Exploring a labelled image set before training: the table of what each file is, and a first
look for a size shortcut.

:func:`describe` is the exploratory table (mode, size, channels, dtype, value range, label per file);
:func:`size_note` is the one line smallct.cv prints when images differ in size or mode (read from the
file headers only), pointing to the full shortcut audit (:mod:`smallct.analysis.audit`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from smallct.datasets.folder import read_labelled_folder
from smallct.io.images import describe_image, list_images


def describe(folder: str | Path, labels: str | Path | None = None) -> pd.DataFrame:
    """The exploratory table of an image folder: one row per image.

    Columns: file, label (when labels are known: ``labels.csv`` in the folder, or ``labels``),
    mode, width, height, channels, dtype, min, max, bytes. Works on a class-per-folder layout too.
    """
    folder = Path(folder)
    try:
        dataset = read_labelled_folder(folder, labels=labels)  # classes as the files say
        files = dataset.files
        label_of = dict(zip(dataset.files, dataset.label_names()))
    except ValueError:
        files, label_of = list_images(folder), {}
    rows = []
    for path in files:
        row = describe_image(path)
        if label_of:
            row["label"] = label_of[path]
            row["file"] = str(path.relative_to(folder))
        rows.append(row)
    table = pd.DataFrame(rows)
    if label_of:
        table = table[["file", "label"] + [c for c in table.columns if c not in ("file", "label")]]
    return table


def size_note(files: list[Path], data: str | Path, sample: int = 500) -> str | None:
    """One line for smallct.cv when image sizes or modes differ (PIL headers only, no decoding), else None.

    At most ``sample`` files, spread over the list, are opened; files PIL cannot open (DICOM) end the check.
    """
    files = list(files)
    pick = np.unique(np.linspace(0, len(files) - 1, min(sample, len(files))).astype(int)) if files else []
    sizes, modes = set(), set()
    for i in pick:
        try:
            with Image.open(files[i]) as image:
                sizes.add(image.size)
                modes.add(image.mode)
        except (OSError, ValueError):
            return None
    parts = []
    if len(sizes) > 1:
        w = [s[0] for s in sizes]
        h = [s[1] for s in sizes]
        parts.append(f"image sizes differ (width {min(w)}-{max(w)} px, height {min(h)}-{max(h)} px)")
    if len(modes) > 1:
        parts.append(f"modes differ ({', '.join(sorted(modes))})")
    if not parts:
        return None
    return f"note: {'; '.join(parts)}; check for a size shortcut with: python -m smallct.audit --data {data}"
