"""RSNA Intracranial Hemorrhage Detection (2019): labels, their order and the metric's weights.

Labels come in ``stage_2_train.csv`` long format, ``ID,Label`` with six rows per image
(``ID_63eb1e259_epidural,0`` ... ``ID_63eb1e259_any,0``). smallct holds them wide: one row per
image, six 0/1 columns in :data:`LABELS` order. Label order and metric weights are tied here, in
:data:`LABEL_WEIGHTS`, and nowhere else: sources differ on whether ``any`` comes first or last. The
competition metric itself is :func:`smallct.evaluation.multilabel.weighted_log_loss`.

Cite: Flanders AF et al., Radiology: Artificial Intelligence 2020;2:3, doi 10.1148/ryai.2020190211
(the data are for non-commercial use).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

# The one place where label order and metric weights are set: 2 for "any", 1 for each subtype.
LABEL_WEIGHTS: dict[str, float] = {
    "any": 2.0,
    "epidural": 1.0,
    "intraparenchymal": 1.0,
    "intraventricular": 1.0,
    "subarachnoid": 1.0,
    "subdural": 1.0,
}
LABELS: tuple[str, ...] = tuple(LABEL_WEIGHTS)
WEIGHTS: tuple[float, ...] = tuple(LABEL_WEIGHTS.values())
SUBTYPES: tuple[str, ...] = LABELS[1:]
EPS = 1e-15  # the competition clips probabilities to [EPS, 1 - EPS]

_IMAGE_ID = r"ID_[0-9a-fA-F]+"


def label_weights(class_names) -> tuple[float, ...] | None:
    """The metric's weight of each of ``class_names`` when they are the six RSNA labels (in any order), else None.

    RSNA runs train with the loss the metric asks for (``any`` x2); no resampling and no ``pos_weight``, which
    shift calibration (no top solution did either).
    """
    names = [str(n) for n in class_names]
    if sorted(names) != sorted(LABELS):
        return None
    return tuple(LABEL_WEIGHTS[n] for n in names)


def _short(items, limit: int = 8) -> str:
    items = [str(i) for i in items]
    more = f", ... ({len(items)} in all)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def read_rsna_labels(csv: str | Path) -> pd.DataFrame:
    """Read RSNA labels in long format (``stage_2_train.csv``) into one row per image.

    Parameters
    ----------
    csv
        A CSV with columns ``ID,Label``; ``ID`` is ``ID_<hex image id>_<subtype>``, ``Label`` 0 or 1.
        Duplicated rows are tolerated when they agree (the real file has some).

    Returns
    -------
    pandas.DataFrame
        Column ``ID`` (the image id, ``ID_<hex>``, equal to the DICOM SOPInstanceUID) and six int
        0/1 columns in :data:`LABELS` order; one row per image, sorted by ``ID``.

    Raises
    ------
    ValueError
        Starting with the file path, listing the offending ids: unreadable file, missing columns,
        malformed ids, unknown subtypes, labels other than 0/1, duplicates that disagree, images
        without all six labels.
    """
    csv = Path(csv)
    try:
        table = pd.read_csv(csv, dtype=str, skipinitialspace=True)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{csv}: cannot read labels CSV ({err})") from None
    table.columns = [str(c).strip() for c in table.columns]
    if not {"ID", "Label"} <= set(table.columns):
        raise ValueError(f"{csv}: expected columns ID,Label (RSNA stage_2_train.csv), got {', '.join(table.columns)}")
    if table.empty:
        raise ValueError(f"{csv}: no labels")
    # Plain Python and numpy rather than pandas string methods: stage_2_train.csv has 4.5 million rows.
    raw = table["ID"].tolist()
    image, _, subtype = zip(*(i.rpartition("_") if isinstance(i, str) else ("", "", "") for i in raw))
    codes, images = pd.factorize(np.asarray(image, dtype=object))
    sub_codes, subtypes = pd.factorize(np.asarray(subtype, dtype=object))
    good_image = pd.Series(images, dtype=object).str.fullmatch(_IMAGE_ID).to_numpy(dtype=bool)
    good_subtype = np.array([t.isalpha() for t in subtypes], dtype=bool)
    malformed = ~good_image[codes] | ~good_subtype[sub_codes]
    if malformed.any():
        raise ValueError(f"{csv}: malformed IDs (expected ID_<hex>_<subtype>): "
                         f"{_short(raw[i] for i in np.flatnonzero(malformed))}")
    unknown = sorted(set(subtypes) - set(LABELS))
    if unknown:
        raise ValueError(f"{csv}: unknown subtypes {_short(unknown)} (expected {', '.join(LABELS)})")
    column = np.array([LABELS.index(t) for t in subtypes])[sub_codes]

    text = table["Label"].to_numpy(dtype=object)
    value = np.full(len(text), -1, np.int8)
    value[text == "0"], value[text == "1"] = 0, 1
    other = np.flatnonzero(value < 0)  # "1.0", " 0", or a bad label
    numeric = pd.to_numeric(pd.Series(text[other], dtype=object), errors="coerce").to_numpy()
    value[other[numeric == 0]], value[other[numeric == 1]] = 0, 1
    bad = np.flatnonzero(value < 0)
    if bad.size:
        raise ValueError(f"{csv}: labels other than 0/1: {_short(f'{raw[i]}={text[i]}' for i in bad)}")

    cell = codes * len(LABELS) + column  # one cell per (image, label)
    order = np.lexsort((value, cell))
    cell, value = cell[order], value[order]
    clash = cell[1:][(cell[1:] == cell[:-1]) & (value[1:] != value[:-1])]
    if clash.size:
        pairs = sorted({f"{images[c // len(LABELS)]}_{LABELS[c % len(LABELS)]}" for c in clash})
        raise ValueError(f"{csv}: duplicated IDs with conflicting labels: {_short(pairs)}")
    wide = np.full((len(images), len(LABELS)), -1, np.int8)
    wide.flat[cell] = value  # duplicates that agree write the same value
    incomplete = np.flatnonzero((wide < 0).any(axis=1))
    if incomplete.size:
        raise ValueError(f"{csv}: images without all six labels ({', '.join(LABELS)}): "
                         f"{_short(sorted(images[incomplete]))}")
    by_id = np.argsort(images, kind="stable")
    return pd.DataFrame({"ID": images[by_id], **{name: wide[by_id, j].astype(np.int64)
                                                 for j, name in enumerate(LABELS)}})
