"""The Kaggle Head CT - hemorrhage set: its manifest, and checking a user's copy against it.

:func:`verify` compares every file of a folder with the manifest shipped inside the package
(``smallct/datasets/head_ct_manifest.csv``, the same as ``data_manifest.csv`` at the top of the
repository) and names every missing, changed or unexpected file (``python -m smallct.data verify DIR``).
:func:`build_manifest` writes the manifest of a folder (``python -m smallct.data manifest DIR``).
The set's facts (:data:`HEAD_CT_CLASSES`, the packaged manifest, :func:`is_head_ct`) are kept by
:mod:`smallct.datasets.known`, which the folder reader asks to recognise a set, and are named here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from smallct.datasets.folder import read_labelled_folder
from smallct.datasets.known import (HEAD_CT_CLASSES, HEAD_CT_SOURCE, MANIFEST, MANIFEST_COLUMNS, is_head_ct,
                                    packaged_manifest, sha256)
from smallct.io.images import describe_image, list_images

__all__ = ["HEAD_CT_CLASSES", "HEAD_CT_SOURCE", "MANIFEST", "MANIFEST_COLUMNS", "VerifyReport", "build_manifest",
           "is_head_ct", "packaged_manifest", "sha256", "verify"]


def build_manifest(folder: str | Path, source: str = HEAD_CT_SOURCE) -> pd.DataFrame:
    """One row per image of ``folder``: file, label, sha256, mode, width, height, source."""
    folder = Path(folder)
    dataset = read_labelled_folder(folder)
    rows = []
    for path, label in zip(dataset.files, dataset.label_names()):
        info = describe_image(path)
        rows.append({"file": str(path.relative_to(folder)), "label": label, "sha256": sha256(path),
                     "mode": info["mode"], "width": info["width"], "height": info["height"], "source": source})
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


@dataclass
class VerifyReport:
    """Result of :func:`verify`: empty lists mean the copy matches."""

    folder: Path
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    label_mismatch: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.changed or self.unexpected or self.label_mismatch)

    def summary(self) -> str:
        if self.ok:
            return f"{self.folder}: all {self.checked} files match the manifest"
        parts = []
        for name in ("missing", "changed", "unexpected", "label_mismatch"):
            items = getattr(self, name)
            if items:
                parts.append(f"{len(items)} {name.replace('_', ' ')}: {', '.join(items)}")
        return f"{self.folder}: " + "; ".join(parts)


def verify(folder: str | Path, manifest: pd.DataFrame | None = None) -> VerifyReport:
    """Compare the files (content by SHA-256) and labels of ``folder`` with ``manifest``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    manifest = packaged_manifest() if manifest is None else manifest
    report = VerifyReport(folder)
    present = {str(p.relative_to(folder)) for p in list_images(folder)}
    for row in manifest.itertuples():
        path = folder / row.file
        if not path.is_file():
            report.missing.append(row.file)
            continue
        report.checked += 1
        if sha256(path) != row.sha256:
            report.changed.append(row.file)
    report.unexpected = sorted(present - set(manifest["file"]))
    try:
        dataset = read_labelled_folder(folder)
        labels = {str(p.relative_to(folder)): lab for p, lab in zip(dataset.files, dataset.label_names())}
        report.label_mismatch = [r.file for r in manifest.itertuples()
                                 if r.file in labels and str(labels[r.file]) != str(r.label)]
    except ValueError:
        pass  # missing files are reported above; a labels problem shows up in cv with its own message
    return report

