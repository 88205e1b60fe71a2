"""What a competition asks of predictions: the RSNA submission (:func:`rsna_submission`), with a row for every
image, unreadable ones included.

A submission needs six rows for every image id. :func:`smallct.apply.predict.predict` sets an unreadable DICOM file
aside (an :class:`~smallct.apply.predict.Unreadable`); :func:`fill_unreadable` gives it the training set's label
rates (:func:`label_rates`) in its place, and :func:`report_unreadable` names it in one line and a report file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from smallct.apply.predict import Unreadable, probability_columns
from smallct.engine.run_models import Run
from smallct.io.files import atomic_json


def rsna_submission(table: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """The RSNA 2019 submission format: ``ID,Label`` with rows ``ID_<image>_<subtype>``, six per image.

    ``table`` is :func:`predict`'s output of a multi-label run; its ``id`` must be the image id
    (``ID_<hex>``, the file name of the slice).
    """
    bad = [i for i in table["id"] if not re.fullmatch(r"ID_[0-9a-fA-F]+", str(i))]
    if bad:
        raise ValueError(f"ids {', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''} are not RSNA image ids "
                         "(ID_<hex>): name the slices by their SOPInstanceUID, as the competition files are")
    dup = table["id"][table["id"].duplicated()].tolist()
    if dup:
        raise ValueError(f"images given twice: {', '.join(dup[:5])}")
    missing = [f"prob_{n}" for n in class_names if f"prob_{n}" not in table.columns]
    if missing:
        raise ValueError(f"no columns {', '.join(missing)}: the submission needs a multi-label run")
    ids = np.repeat(table["id"].to_numpy(dtype=str), len(class_names))
    names = np.tile(np.asarray(class_names, dtype=str), len(table))
    labels = table[[f"prob_{n}" for n in class_names]].to_numpy().ravel()
    return pd.DataFrame({"ID": np.char.add(np.char.add(ids, "_"), names), "Label": labels})


def label_rates(run: Run) -> tuple[np.ndarray, str]:
    """The label rates of ``run``'s training set, (C,) in ``class_names`` order, and where they come from: the
    mean of each label column of ``oof.csv`` (multi-label) or the share of each class, each image once (every
    repeat lists it again)."""
    oof = run.oof().drop_duplicates("id")
    columns = run.class_names if run.task == "multilabel" else ["label"]
    missing = [c for c in columns if c not in oof]
    if missing:
        raise ValueError(f"{run.folder.oof_csv}: no column {', '.join(missing)} to take the training set's label "
                         "rates from; run predict with --on-unreadable fail, or finish the run with this smallct")
    if run.task == "multilabel":
        rates, what = oof[columns].to_numpy(float).mean(axis=0), "the mean of each label"
    else:
        rates, what = np.bincount(oof["label"].to_numpy(int), minlength=len(run.class_names)) / len(oof), \
            "the share of each class"
    return rates, f"{run.folder.oof_csv}: {what} over its {len(oof)} images (each once)"


def fill_unreadable(table: pd.DataFrame, unreadable: Sequence[Unreadable],
                    runs: Sequence[Run]) -> tuple[pd.DataFrame, dict | None]:
    """``table`` (:func:`predict`'s, in which its ``unreadable`` files have no row) with a row for each of them in
    its place, holding the training set's label rates (:func:`label_rates`; several runs averaged with equal
    weight, as their probabilities are): a submission needs a row for every image, and the rates are the best
    guess for an image never seen. Returns the table and what they were given (rates and source; None where
    every file was read)."""
    if not unreadable:
        return table, None
    per_run = [label_rates(run) for run in runs]
    rates = np.mean([r for r, _ in per_run], axis=0)
    filled = pd.DataFrame({"id": [u.id for u in unreadable], "file": [u.file.name for u in unreadable],
                           **probability_columns(np.tile(rates, (len(unreadable), 1)), runs[0].task,
                                                 runs[0].class_names)})
    at = {u.index for u in unreadable}
    places = [i for i in range(len(table) + len(unreadable)) if i not in at] + [u.index for u in unreadable]
    full = pd.concat([table, filled], ignore_index=True).iloc[np.argsort(places, kind="stable")]
    given = {"with": "the training set's label rates", "rates": dict(zip(runs[0].class_names, rates.tolist())),
             "from": [source for _, source in per_run]}
    return full.reset_index(drop=True), given


def report_unreadable(unreadable: Sequence[Unreadable], beside: Path, given: dict | None = None,
                      log=print) -> Path | None:
    """Name the ``unreadable`` files in one line of ``log`` and in ``<beside>.unreadable.json`` (``beside``: the
    submission, or the predictions table): file, image id and reason of each, and ``given``, what
    :func:`fill_unreadable` gave them (None: they have no row). Nothing is written where every file was read."""
    if not unreadable:
        return None
    path = Path(beside).with_suffix(".unreadable.json")
    atomic_json(path, {"files": [{"file": str(u.file), "id": u.id, "reason": u.reason} for u in unreadable],
                       "given": given})
    names = [str(u.file) for u in unreadable]
    what = "given the training set's label rates in the submission" if given else "left out of the predictions"
    log(f"smallct.predict: {len(names)} unreadable file{'s' * (len(names) > 1)} {what} (listed in {path}): "
        + ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else ""))
    return path
