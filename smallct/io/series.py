"""Slices in series order: each SeriesInstanceUID sorted along its slice normal, with each slice's neighbours.

One owner of the order of CT slices, for ``smallct.prepare rsna`` (the manifest's rows) and ``smallct.predict``
(raw DICOM folders). :func:`order_slices` is a pure function on a table of headers; :func:`order_dicom_files`
reads the headers of files first.

Conventions (documented once, here):

* **Position** of a slice = dot(ImagePositionPatient, row x column of ImageOrientationPatient), in mm along the
  slice normal. For an untilted axial series it equals ImagePositionPatient[2]; under gantry tilt it does not,
  and ImagePositionPatient[2], file names and InstanceNumber (absent in RSNA) can all give another order.
  The normal of a series is that of its first slice by id, so that every slice of it is measured alike.
* **Neighbours**: ``prev`` and ``next`` of a slice are rows of the ordered table within its series; a slice is
  its own neighbour at a series end, across a gap, and in a series that could not be ordered.
* **Problems**, one line per series, never a silent reorder:
  a *gap* (a spacing over :data:`GAP_FACTOR` x the series' median spacing; neighbours are not linked across it),
  *duplicate positions* (within :data:`SAME_MM`; ordered by id, linked as neighbours),
  *mixed orientations* (direction cosines differing by more than :data:`SAME_COSINE`) and *missing*
  ImagePositionPatient / ImageOrientationPatient / SeriesInstanceUID: such a series is kept in id order and each
  of its slices is its own neighbour.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from smallct.io.dicom import read_headers

# The header columns the order is computed from (as :func:`smallct.io.dicom.read_header` names them):
# ImagePositionPatient (x, y, z, mm), then ImageOrientationPatient (row direction rx, ry, rz; column cx, cy, cz).
POSITION = ("x", "y", "z")
ORIENTATION = ("rx", "ry", "rz", "cx", "cy", "cz")
GAP_FACTOR = 1.5  # a spacing over 1.5 x the series' median spacing is a gap (a missing slice)
SAME_MM = 0.01  # positions closer than this (mm) are duplicates
SAME_COSINE = 1e-3  # orientations whose direction cosines differ by more than this are mixed
_NO_SERIES = "(no SeriesInstanceUID)"


def slice_position(position: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    """Position along the slice normal, mm: dot(position, row x column); NaN where a value is missing.

    ``position`` is (N, 3) ImagePositionPatient, ``orientation`` (N, 6) ImageOrientationPatient; a degenerate
    orientation (parallel or zero direction cosines) gives NaN.
    """
    position, orientation = np.atleast_2d(np.asarray(position, float)), np.atleast_2d(np.asarray(orientation, float))
    normal = np.cross(orientation[:, :3], orientation[:, 3:])
    length = np.linalg.norm(normal, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.einsum("ij,ij->i", position, normal) / length
    out[~(length > 1e-6)] = np.nan
    return out


@dataclass(frozen=True)
class SliceOrder:
    """Where :func:`order_slices` puts each row of a table.

    Attributes
    ----------
    order
        (N,) positions (``iloc``) of the table's rows, in series order.
    position
        (N,) mm along the normal of each ordered row (NaN where unknown).
    prev, next
        (N,) for each ordered row, the ordered row of the previous / next slice of its series (itself at an end,
        across a gap, or when its series could not be ordered).
    problems
        One line per series with a gap, duplicate positions, mixed orientations or missing tags.
    """

    order: np.ndarray
    position: np.ndarray
    prev: np.ndarray
    next: np.ndarray
    problems: list[str]


def _short(items: Sequence[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _mm(value: float) -> str:
    return f"{value:.3g} mm" if abs(value) < 100 else f"{value:.1f} mm"


def order_slices(table: pd.DataFrame, *, id: str = "id", series: str = "series",
                 keys: Sequence[str] = ()) -> SliceOrder:
    """Order slices by series, and each series along its slice normal; find each slice's neighbours.

    Parameters
    ----------
    table
        One row per slice: ``id`` (a unique text id, the tie-break), ``series`` (SeriesInstanceUID; missing: one
        series that cannot be ordered), and the columns :data:`POSITION` and :data:`ORIENTATION` (NaN when absent).
    keys
        Columns that order the series before their uid (e.g. patient, study), taken from each series' first
        slice by id; missing values last.

    Returns
    -------
    SliceOrder
        The order, positions, neighbours and one problem line per series (see the module docstring). The same
        table in any row order gives the same ordered rows.
    """
    n = len(table)
    if n == 0:
        empty = np.array([], int)
        return SliceOrder(order=empty, position=np.array([], float), prev=empty, next=empty, problems=[])
    ids = table[id].astype(str).to_numpy()
    uid = table[series].astype(object).where(table[series].notna(), None).to_numpy()
    codes, uniques = pd.factorize(pd.Series(uid, dtype=object).fillna(_NO_SERIES))
    geometry = table[[*POSITION, *ORIENTATION]].to_numpy(float)
    own = slice_position(geometry[:, :3], geometry[:, 3:])
    known = np.isfinite(geometry).all(axis=1) & np.isfinite(own) & pd.notna(uid)

    by_id = np.argsort(ids, kind="stable")  # first slice of a series = smallest id
    first = np.full(len(uniques), -1)
    first[codes[by_id[::-1]]] = by_id[::-1]
    cosines = pd.DataFrame(geometry[:, 3:]).groupby(codes)
    spread = (cosines.max() - cosines.min()).to_numpy()
    mixed = (np.nan_to_num(spread) > SAME_COSINE).any(axis=1)
    missing = ~pd.Series(known).groupby(codes).all().to_numpy()
    ordered = ~mixed & ~missing
    # an ordered series: every slice measured along its first slice's normal
    normal_from = np.where(ordered[codes], first[codes], np.arange(n))
    position = slice_position(geometry[:, :3], geometry[normal_from, 3:])

    heads = table.iloc[first]
    rank_table = pd.DataFrame({**{f"k{i}": heads[k].to_numpy() for i, k in enumerate(keys)},
                               "uid": uniques.astype(str), "missing_uid": uniques == _NO_SERIES})
    rank_cols = ["missing_uid", *[f"k{i}" for i in range(len(keys))], "uid"]
    series_rank = np.empty(len(uniques), int)
    series_rank[rank_table.sort_values(rank_cols, na_position="last", kind="stable").index.to_numpy()] = \
        np.arange(len(uniques))
    along = np.where(ordered[codes], position, 0.0)  # unordered series: by id alone
    order = np.lexsort((ids, along, series_rank[codes]))

    code, pos = codes[order], position[order]
    step = np.diff(pos)
    linked = (code[1:] == code[:-1]) & ordered[code[1:]]
    spacing = pd.Series(np.where(linked & (step > SAME_MM), step, np.nan)).groupby(code[1:]).median()
    median = spacing.reindex(range(len(uniques))).to_numpy()[code[1:]]
    gap = linked & (step > GAP_FACTOR * median)
    duplicate = linked & (step <= SAME_MM)
    link = linked & ~gap
    rows = np.arange(n)
    prev, nxt = rows.copy(), rows.copy()
    prev[1:][link], nxt[:-1][link] = rows[:-1][link], rows[1:][link]

    problems = []
    ordered_ids = ids[order]
    members_of = pd.Series(np.arange(n)).groupby(codes).indices
    links_of = pd.Series(np.arange(n - 1)).groupby(code[1:]).indices if n > 1 else {}
    troubled = set(np.flatnonzero(~ordered).tolist()) | set(code[1:][gap | duplicate].tolist())
    for c in sorted(troubled, key=lambda c: series_rank[c]):
        parts = []
        members = members_of[c]
        if uniques[c] == _NO_SERIES:
            parts.append("no SeriesInstanceUID")
        lacking = [ids[i] for i in sorted(members, key=lambda i: ids[i]) if not known[i]]
        if lacking and uniques[c] != _NO_SERIES:
            parts.append(f"{len(lacking)} without a usable ImagePositionPatient or ImageOrientationPatient "
                         f"({_short(lacking)})")
        if mixed[c]:
            distinct = len({tuple(np.round(geometry[i, 3:], 3)) for i in members if np.isfinite(geometry[i, 3:]).all()})
            parts.append(f"mixed ImageOrientationPatient ({distinct} different)")
        if not ordered[c]:
            parts[-1] += ": kept in id order, each slice its own neighbour"
        at = links_of.get(c, np.array([], int))
        gaps = [f"{_mm(step[i])} between {ordered_ids[i]} and {ordered_ids[i + 1]}" for i in at if gap[i]]
        if gaps:
            parts.append(f"{len(gaps)} gap{'s' * (len(gaps) > 1)} over {GAP_FACTOR:g} x the median spacing "
                         f"{_mm(median[at[0]])} ({_short(gaps)}): not neighbours across a gap")
        dups = [f"{ordered_ids[i]} = {ordered_ids[i + 1]} at {_mm(pos[i])}" for i in at if duplicate[i]]
        if dups:
            parts.append(f"{len(dups)} duplicate position{'s' * (len(dups) > 1)} ({_short(dups)}): ordered by id")
        problems.append(f"series {uniques[c]}: {len(members)} slices; {'; '.join(parts)}")
    return SliceOrder(order=order, position=pos, prev=prev, next=nxt, problems=problems)


def order_dicom_files(files: Iterable[str | Path], workers: int = 0,
                      progress: bool = True) -> tuple[list[Path], list[str]]:
    """DICOM files in series order (by patient, study, series, then along the normal; ties by file stem, the image
    id, then by the order given), and the problem lines of :func:`order_slices` (:func:`link_dicom_files`)."""
    ordered, _, _, problems = link_dicom_files(files, workers, progress)
    return ordered, problems


def link_dicom_files(files: Iterable[str | Path], workers: int = 0,
                     progress: bool = True) -> tuple[list[Path], np.ndarray, np.ndarray, list[str]]:
    """DICOM files in series order, with each one's neighbours: ``(files, prev, next, problems)``.

    Reads only headers (:func:`smallct.io.dicom.read_headers`). ``prev`` / ``next`` are positions in the returned
    list (:class:`SliceOrder`'s convention: itself at an end or a gap). Files whose header cannot be read come
    last, in the order given, each its own neighbour (their readers raise later, naming them).
    """
    files = [Path(f) for f in files]
    if not files:
        return [], np.zeros(0, np.int64), np.zeros(0, np.int64), []
    table = read_headers(files, workers=workers, progress=progress)
    good = table["error"].isna().to_numpy()
    headers = table[good].rename(columns={"PatientID": "patient", "StudyInstanceUID": "study",
                                          "SeriesInstanceUID": "series"})
    headers["id"] = [Path(f).stem for f in headers["path"]]
    result = order_slices(headers, keys=("patient", "study"))
    kept = np.flatnonzero(good)[result.order]
    alone = np.arange(len(kept), len(files))
    prev = np.concatenate([np.asarray(result.prev, np.int64), alone])
    nxt = np.concatenate([np.asarray(result.next, np.int64), alone])
    return [files[i] for i in kept] + [f for f, ok in zip(files, good) if not ok], prev, nxt, result.problems
