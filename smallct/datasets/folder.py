"""A labelled image set read from a folder: :class:`Dataset` and :func:`load_dataset`, and :func:`load_data`,
the set a command runs on (``--data``, or the generated phantom set).

Three layouts are read:

* the Head CT ``labels.csv`` as distributed (header ``id, hemorrhage`` with a space; id ``0``
  names ``000.png``);
* any CSV, with ``id_col`` and ``label_col`` (an id may be a file name, a stem, or a number
  that matches a zero-padded stem);
* class-per-folder, ``DIR/<class>/*.png``.

Every problem is collected and reported at once, in one line: ids without a file, files without a
label, duplicated ids with conflicting labels, labels outside the expected classes.

An image's id is its file's name without the suffix, as text (``000`` for ``000.png``, whatever the
CSV wrote: ``0``), or its path below the set's folder where names repeat (:func:`image_ids`); tables
(``oof.csv``, predictions) join on it. :func:`read_labelled_folder` reads the classes as the files
say; :func:`load_dataset` also names them and puts the positive one of two at index 1
(:func:`smallct.datasets.classes.name_classes`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from smallct.config.run import DataConfig
from smallct.data.neighbours import Neighbours
from smallct.datasets.classes import name_classes
from smallct.datasets.known import HEAD_CT_CLASSES, known_classes
from smallct.datasets.phantom import phantom_folder
from smallct.datasets.rsna import LABELS
from smallct.io.images import IMAGE_SUFFIXES, list_images


@dataclass
class Dataset:
    """A labelled image set.

    ``labels`` is (N,) int class indices into ``class_names`` for binary/multiclass tasks, or
    (N, L) 0/1 for multi-label tasks (``class_names`` are then the label names). ``groups`` (N,)
    holds a patient id per image when known, so that folds never split a patient. ``positive_class``
    is ``class_names[1]`` of a two-class set whose positive class is decided (None otherwise). ``neighbours`` links
    each image to the slices before and after it in its series (a prepared RSNA folder; None otherwise).
    """

    ids: list[str]
    files: list[Path]
    labels: np.ndarray
    class_names: list[str]
    task: str = "binary"
    groups: np.ndarray | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)
    positive_class: str | None = None
    neighbours: Neighbours | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def label_names(self) -> list[str]:
        if self.labels.ndim == 2:
            return ["|".join(n for n, v in zip(self.class_names, row) if v) or "none" for row in self.labels]
        return [self.class_names[i] for i in self.labels]

    def subset(self, index) -> "Dataset":
        index = np.asarray(index)
        return Dataset(
            ids=[self.ids[i] for i in index], files=[self.files[i] for i in index],
            labels=self.labels[index], class_names=self.class_names, task=self.task,
            groups=None if self.groups is None else self.groups[index], source=self.source, meta=self.meta,
            positive_class=self.positive_class,
            neighbours=None if self.neighbours is None else self.neighbours.take(index))


def data_fingerprint(dataset: Dataset) -> str:
    """Ids, labels and classes: equal on every machine that holds the same data, wherever it lies (what a study
    and a settings file's ``_chosen_on`` record of the images they chose on). Labels are hashed as little-endian
    int64 whatever their dtype (int32 or int64 labels of the same set give the same fingerprint)."""
    h = hashlib.sha1("|".join(dataset.ids).encode())
    h.update(np.ascontiguousarray(dataset.labels, dtype="<i8").tobytes())
    h.update("|".join(dataset.class_names).encode())
    return h.hexdigest()[:16]


def _short(items, limit: int = 8) -> str:
    items = [str(i) for i in items]
    more = f", ... ({len(items)} in all)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _file_index(files: list[Path]) -> dict[str, Path]:
    """Keys under which an id can name a file: name, stem, and the integer value of a numeric stem."""
    index: dict[str, Path] = {}
    for path in files:
        index[path.name] = path
        index[path.stem] = path
        if path.stem.isdigit():
            index.setdefault(str(int(path.stem)), path)
    return index


def image_ids(files: Sequence[str | Path]) -> list[str]:
    """The id of each image file, as text: its name without the suffix (``000`` for ``000.png``: zero padding
    kept), or where files share that name, their path below the folder they share (``normal/000``)."""
    files = [Path(f) for f in files]
    count = Counter(f.stem for f in files)
    repeated = [os.path.abspath(f.parent) for f in files if count[f.stem] > 1]
    root = Path(os.path.commonpath(repeated)) if repeated else None
    ids = [f.stem if count[f.stem] == 1 else Path(os.path.abspath(f)).relative_to(root).with_suffix("").as_posix()
           for f in files]
    again = Counter(ids)  # a.png and a.jpg in one folder: the suffix tells them apart
    return [i if again[i] == 1 else Path(os.path.abspath(f)).relative_to(root).as_posix() for i, f in zip(ids, files)]


def same_ids(recorded: Sequence, ids: Sequence[str]) -> bool:
    """Whether ``recorded`` ids (a run.json) name the images ``ids`` do; a run of smallct 0.1.0 recorded a
    numeric CSV id without its zero padding (``0`` for ``000.png``)."""
    def unpadded(i) -> str:
        return str(int(i)) if str(i).isdigit() else str(i)

    recorded = [str(i) for i in recorded]
    return recorded == list(ids) or [unpadded(i) for i in recorded] == [unpadded(i) for i in ids]


def _normalise_id(value) -> str:
    text = str(value).strip()
    if text.endswith(".0") and text[:-2].isdigit():  # ids read as floats
        text = text[:-2]
    return text


def _class_names(values: pd.Series, where: str, classes: list[str] | None) -> tuple[list[str], list[str]]:
    """Class names in order, and the problems found."""
    problems = []
    if classes is not None:
        names = [str(c) for c in classes]
        bad = sorted({str(v) for v in values if str(v) not in names})
        if bad:
            problems.append(f"labels outside the expected classes {names}: {_short(bad)}")
        return names, problems
    if values.isna().any():
        problems.append(f"{int(values.isna().sum())} empty labels")
        values = values.dropna()
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        bad = sorted({v for v in numeric if v != int(v) or v < 0})
        if bad:
            problems.append(f"labels outside the expected classes (non-negative integers): {_short(bad)}")
        names = [str(int(v)) for v in sorted(set(numeric)) if v == int(v) and v >= 0]
    else:
        names = sorted({str(v) for v in values})
    if len(names) < 2:
        problems.append(f"only one class ({_short(names)}) in {where}: a classifier needs two")
    return names, problems


def read_csv_labels(folder: Path, labels: Path, id_col: str | None = None, label_col: str | None = None,
                    classes: list[str] | None = None) -> Dataset:
    """Read an (id, label) CSV whose ids name image files in ``folder``."""
    try:
        table = pd.read_csv(labels, skipinitialspace=True, dtype=str)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{labels}: cannot read labels CSV ({err})") from None
    table.columns = [c.strip() for c in table.columns]
    if id_col is None:
        id_col = "id" if "id" in table.columns else table.columns[0]
    if label_col is None:
        others = [c for c in table.columns if c != id_col]
        if len(others) != 1:
            raise ValueError(f"{labels}: {len(table.columns)} columns ({', '.join(table.columns)}); "
                             "say which holds the label with --label-col")
        label_col = others[0]
    for col in (id_col, label_col):
        if col not in table.columns:
            raise ValueError(f"{labels}: no column {col!r} (columns: {', '.join(table.columns)})")
    table = table[[id_col, label_col]].copy()
    table[id_col] = table[id_col].map(_normalise_id)
    table[label_col] = table[label_col].map(lambda v: v.strip() if isinstance(v, str) else v)

    problems = []
    dup = table[table.duplicated(id_col, keep=False)]
    conflicting = sorted(i for i, g in dup.groupby(id_col) if g[label_col].nunique(dropna=False) > 1)
    if conflicting:
        problems.append(f"duplicated ids with conflicting labels: {_short(conflicting)}")
    table = table.drop_duplicates(id_col)

    files = list_images(folder)
    index = _file_index(files)
    missing = [i for i in table[id_col] if i not in index]
    if missing:
        problems.append(f"ids without a file in {folder}: {_short(missing)}")
    matched = {index[i] for i in table[id_col] if i in index}
    unlabelled = [p.name for p in files if p not in matched]
    if unlabelled:
        problems.append(f"files without a label: {_short(unlabelled)}")
    names, label_problems = _class_names(table[label_col], str(labels), classes)
    problems += label_problems
    if problems:
        raise ValueError(f"{labels}: " + "; ".join(problems))

    table = table[table[id_col].isin(index)]
    paths = [index[i] for i in table[id_col]]
    order = np.argsort([str(p) for p in paths], kind="stable")
    ids = image_ids([paths[i] for i in order])  # the file's own name, never the CSV's form of it
    raw = table[label_col].tolist()
    if classes is None and pd.to_numeric(table[label_col], errors="coerce").notna().all():
        raw = [str(int(float(v))) for v in raw]
    labels_arr = np.array([names.index(str(v)) for v in raw], dtype=np.int64)
    return Dataset(
        ids=ids, files=[paths[i] for i in order],
        labels=labels_arr[order], class_names=names, task="binary" if len(names) == 2 else "multiclass",
        source=f"{folder} (labels {labels})")


def read_class_folders(folder: Path, classes: list[str] | None = None) -> Dataset:
    """Read ``folder/<class>/*.png``: the class of an image is the name of its sub-folder."""
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = {d.name: list_images(d) for d in subdirs}
    found = {k: v for k, v in found.items() if v}
    names = [str(c) for c in classes] if classes is not None else sorted(found)
    problems = []
    bad = [k for k in found if k not in names]
    if bad:
        problems.append(f"class folders outside the expected classes {names}: {_short(bad)}")
    if len(found) < 2:
        problems.append("a class-per-folder layout needs at least two sub-folders with images")
    if problems:
        raise ValueError(f"{folder}: " + "; ".join(problems))
    files, labels = [], []
    for name in names:
        for path in found.get(name, []):
            files.append(path)
            labels.append(names.index(name))
    return Dataset(ids=image_ids(files), files=files, labels=np.array(labels, dtype=np.int64), class_names=names,
                   task="binary" if len(names) == 2 else "multiclass", source=f"{folder} (class folders)")


def load_dataset(folder: str | Path, labels: str | Path | None = None, id_col: str | None = None,
                 label_col: str | None = None, class_names: Sequence[str] | None = None,
                 positive_class: str | None = None) -> Dataset:
    """Find and read the labels of an image folder (:func:`read_labelled_folder`), and name its classes.

    ``class_names`` and ``positive_class`` are ``--class-names`` and ``--positive-class``
    (:func:`smallct.datasets.classes.name_classes`): of two classes the positive one is index 1. A set known by
    its content (:data:`smallct.datasets.known.KNOWN_SETS`; the Kaggle Head CT set, by its manifest) gets its
    class names.
    ``ValueError`` (one line, naming both) for two text classes and no ``positive_class``.
    """
    dataset = read_labelled_folder(folder, labels, id_col, label_col)
    default = None
    if class_names is None:
        default = known_classes(folder, dataset)
    return name_classes(dataset, class_names, positive_class, default)


def read_labelled_folder(folder: str | Path, labels: str | Path | None = None, id_col: str | None = None,
                         label_col: str | None = None) -> Dataset:
    """Find and read the labels of an image folder, classes as the files say (digits, or sorted names; none
    marked positive: :func:`load_dataset` decides that).

    ``labels`` given: that CSV. Else ``folder/labels.csv`` when present, else class sub-folders.
    A prepared folder (``smallct.prepare``) with a ``manifest.csv`` is read by :func:`read_manifest`
    (the readers of such folders are ``MANIFEST_READERS``, by the file that marks them).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    if labels is not None:
        labels = Path(labels)
        if not labels.is_file():
            raise ValueError(f"{labels}: no such labels file")
        return read_csv_labels(folder, labels, id_col, label_col)
    for name, reader in MANIFEST_READERS.items():
        if (folder / name).is_file():
            return reader(folder)
    if (folder / "labels.csv").is_file():
        return read_csv_labels(folder, folder / "labels.csv", id_col, label_col)
    if any(p.is_dir() for p in folder.iterdir()):
        return read_class_folders(folder)
    images = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    raise ValueError(f"{folder}: {len(images)} images but no labels: add labels.csv, pass --labels CSV, "
                     "or put each class in a sub-folder")


def read_manifest(folder: str | Path) -> Dataset:
    """Read a folder prepared by ``python -m smallct.prepare`` (``manifest.csv`` + ``prepare.json``).

    ``manifest.csv`` with the six RSNA label columns (``prepare rsna``) gives a multi-label Dataset:
    labels (N, 6) 0/1 in :data:`smallct.datasets.rsna.LABELS` order, groups = ``patient`` (the image id where
    a slice has none). With a single ``label`` column (``prepare png``) it gives a binary or
    multi-class Dataset, classes in the order recorded in ``prepare.json``. ``meta`` is the
    ``meta`` of ``prepare.json`` (``windows``: preset names or None, ``channels``: a sentence).
    """
    folder = Path(folder)
    path = folder / "manifest.csv"
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        info = json.loads((folder / "prepare.json").read_text()) if (folder / "prepare.json").is_file() else {}
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"{path}: cannot read the manifest of a prepared folder ({err})") from None
    multilabel = set(LABELS) <= set(table.columns)
    needed = ["id", "file", *(LABELS if multilabel else ["label"])]
    absent = [c for c in needed if c not in table.columns]
    if absent:
        raise ValueError(f"{path}: no column {', '.join(absent)} (columns: {', '.join(table.columns)}); expected "
                         f"id, file and either the six RSNA labels ({', '.join(LABELS)}) or label")
    if table.empty:
        raise ValueError(f"{path}: no images")
    files = [folder / f for f in table["file"]]
    problems = []
    missing = [str(f.relative_to(folder)) for f in files if not f.is_file()]
    if missing:
        problems.append(f"files listed but absent: {_short(missing)} (run smallct.prepare again to complete it)")
    dup = table["id"][table["id"].duplicated()].tolist()
    if dup:
        problems.append(f"duplicated ids: {_short(dup)}")
    groups = None
    if multilabel:
        cells = table[list(LABELS)]
        rows, cols = np.nonzero(~cells.isin(["0", "1"]).to_numpy())
        bad = [f"{table['id'].iat[i]} {LABELS[j]}={cells.iat[i, j]!r}" for i, j in zip(rows, cols)]
        if bad:
            problems.append(f"labels other than 0/1: {_short(bad)}")
        names = list(LABELS)
        if "patient" in table.columns:  # a slice without a patient keeps its series whole (else it stands alone)
            alone = table["series"] if "series" in table.columns else table["id"]
            alone = np.where(alone != "", alone, table["id"])
            groups = np.where(table["patient"] != "", table["patient"], alone).astype(str)
    else:
        names = [str(c) for c in info["class_names"]] if "class_names" in info else None
        names, label_problems = _class_names(table["label"], str(path), names)
        problems += label_problems
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    if multilabel:
        labels = table[list(LABELS)].to_numpy(dtype=np.int64)
        task = "multilabel"
    else:
        labels = np.array([names.index(v) for v in table["label"]], dtype=np.int64)
        task = "binary" if len(names) == 2 else "multiclass"
    kind = info.get("kind", "?")
    return Dataset(ids=table["id"].tolist(), files=files, labels=labels, class_names=names, task=task,
                   groups=groups, source=f"{folder} (prepared by smallct.prepare {kind})",
                   meta=dict(info.get("meta", {})), neighbours=_neighbours(table, path))


def _neighbours(table: pd.DataFrame, path: Path) -> Neighbours | None:
    """The manifest's ``prev`` / ``next`` rows (series order, :mod:`smallct.io.series`), checked; None without them."""
    if not {"prev", "next"} <= set(table.columns):
        return None
    try:
        return Neighbours(table["prev"].astype(np.int64).to_numpy(), table["next"].astype(np.int64).to_numpy())
    except ValueError as err:
        raise ValueError(f"{path}: columns prev/next are not the rows of slices in series order ({err}); run "
                         "smallct.prepare again") from None


# Readers of prepared folders, by the file that marks them.
MANIFEST_READERS: dict = {"manifest.csv": read_manifest}


def phantom_dataset(n: int = 200, seed: int = 0, log=print, class_names: Sequence[str] | None = None,
                    positive_class: str | None = None) -> Dataset:
    """The embedded default: a synthetic head-CT phantom set of ``n`` images, written once into the cache.

    Its labels mean what the Head CT set's do (1: a lesion), so its classes are named alike unless
    ``class_names`` says otherwise.
    """
    folder = phantom_folder(n, seed)
    log(f"SYNTHETIC DATA: no --data given, so this run uses {n} generated head-CT phantom images in {folder}. "
        "For the real Kaggle Head CT set pass --data DIR (the folder with 000.png..199.png and labels.csv).")
    return load_dataset(folder, class_names=class_names or HEAD_CT_CLASSES, positive_class=positive_class)


def load_data(data: DataConfig, seed: int = 0, log=print) -> Dataset:
    """The labelled images a command runs on: ``data.data`` read by :func:`load_dataset`, or without a
    folder the phantom set of ``data.phantom_n`` images (seeded by ``seed``), saying so."""
    if data.data is None:
        return phantom_dataset(data.phantom_n, seed, log, data.class_names, data.positive_class)
    return load_dataset(data.data, data.labels, data.id_col, data.label_col, data.class_names, data.positive_class)
