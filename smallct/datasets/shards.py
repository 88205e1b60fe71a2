"""Preparation in shards: N processes or machines each prepare a disjoint part of one selection into one folder.

``python -m smallct.prepare rsna ... --shard K/N`` (K counted from 1: ``--shard 1/4`` is the first of four) prepares
the slices of the series assigned to shard K; ``python -m smallct.prepare merge OUT`` joins the shards into the
folder an unsharded run writes (the same ``manifest.csv``, the same PNG bytes). This module is the one owner of
which series belong to shard K of N (:func:`assign_shards`) and of the merge (:func:`merge_shards`).

Shards are whole series, never split: a slice's neighbours (``prev``, ``next``) are in its shard. The series of a
slice is known only from its DICOM header, so each shard first needs every selected slice's header. Reading them
all in every shard would cost N x the header reads of one run; instead the headers are read in blocks of
:data:`HEADER_BLOCK` image ids (in id order) shared through the output folder: a shard reads its own blocks first
(block b belongs to shard ``b % N + 1``), then loads the other shards' blocks, reading any that is not there yet
itself (the other shard's blocks from the last one back, while that shard goes forward). Shards that run at the
same time read each header about once; shards run one after another read each header once in all; a block is
only a cache (checked against the ids it should hold), so a shard never waits for another.

Under ``OUT/shards/``: ``headers/block-<b>.csv`` (id, PatientID, StudyInstanceUID, SeriesInstanceUID,
ImagePositionPatient x, y, z, ImageOrientationPatient rx..cz, error), and each shard's ``manifest-K-of-N.csv`` and
``report-K-of-N.json`` (never ``OUT/manifest.csv``: that is the merge's). ``prepare.json`` records N and a digest of
the selection, which every shard must share.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from smallct.datasets.prepare import (finish_folder, image_path, order_manifest, prepare_slice, read_prepare_json,
                                      rsna_manifest, run_jobs, select_rsna, start_folder)
from smallct.io.dicom import read_headers
from smallct.io.files import atomic_csv, atomic_json
from smallct.io.series import ORIENTATION, POSITION
from smallct.io.windows import DEFAULT_WINDOWS
from smallct.parallel import workers_for

HEADER_BLOCK = 1024  # image ids per header block: about 0.5 s of header reads on one core
TEXT = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")
BLOCK_COLUMNS = ("id", *TEXT, *POSITION, *ORIENTATION, "error")
# CSV read back as written: floats exactly (pandas 3 does so by default and deprecates the flag), and only an
# empty field missing (a PatientID "NA" stays text)
EXACT = {"keep_default_na": False, "na_values": [""],
         **({} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"})}


def parse_shard(text: str | tuple[int, int]) -> tuple[int, int]:
    """``"K/N"`` (or ``(K, N)``) as ``(K, N)``, K counted from 1; ``ValueError`` naming ``--shard`` otherwise."""
    try:
        k, n = (int(v) for v in (text.split("/") if isinstance(text, str) else text))
    except (ValueError, TypeError):
        k, n = 0, 0
    if not 1 <= k <= n:
        shown = text if isinstance(text, str) else "/".join(map(str, text))
        raise ValueError(f"--shard {shown}: expected K/N with 1 <= K <= N (shard K of N, counted from 1: "
                         "--shard 1/4 ... --shard 4/4)")
    return k, n


def selection_digest(ids) -> str:
    """A digest of a set of image ids (sha1 of the sorted ids): shards of one preparation share it."""
    return hashlib.sha1("\n".join(sorted(map(str, ids))).encode()).hexdigest()


def shard_files(k: int, n: int) -> tuple[str, str]:
    """Shard K of N's manifest and report, relative to the prepared folder."""
    return f"shards/manifest-{k}-of-{n}.csv", f"shards/report-{k}-of-{n}.json"


def assign_shards(headers: pd.DataFrame, n: int) -> np.ndarray:
    """The shard (1..n) of each row of ``headers``: whole series, balanced by slice count.

    ``headers`` has ``id``, ``SeriesInstanceUID`` and ``error`` (NA when the header was read). Series (slices
    without a SeriesInstanceUID: one group) and each unreadable file (a group of one, keyed by its id) go, the
    largest first (ties by key), to the shard with the fewest slices so far (ties: the lowest K). The result
    depends only on the table's content, not on its row order or on any shard's worker count.
    """
    readable = headers["error"].isna().to_numpy()
    keys = np.where(readable, "s:" + headers["SeriesInstanceUID"].fillna("").astype(str),
                    "u:" + headers["id"].astype(str))
    codes, uniques = pd.factorize(pd.Series(keys))
    counts = np.bincount(codes, minlength=len(uniques))
    shard_of = np.empty(len(uniques), int)
    loads = [(0, k) for k in range(1, n + 1)]
    for c in sorted(range(len(uniques)), key=lambda c: (-counts[c], uniques[c])):
        load, k = heapq.heappop(loads)
        shard_of[c] = k
        heapq.heappush(loads, (load + int(counts[c]), k))
    return shard_of[codes]


# --- the header pass -----------------------------------------------------------------------------

def _load_block(path: Path, ids: list[str]) -> pd.DataFrame | None:
    """A header block as written, or None when absent or not of these ids (another selection's)."""
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path, dtype={c: str for c in ("id", *TEXT, "error")}, **EXACT)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    return table if table.columns.tolist() == list(BLOCK_COLUMNS) and table["id"].tolist() == ids else None


def _read_blocks(chosen: list[int], blocks: list[list[str]], path: list[Path], files: dict[str, Path],
                 workers: int) -> dict[int, pd.DataFrame]:
    """Read the headers of the ``chosen`` blocks in one parallel pass (pixels not read); write each block."""
    ids = [i for b in chosen for i in blocks[b]]
    table = read_headers([files[i] for i in ids], workers=workers, progress=False)
    table.insert(0, "id", ids)
    tables, at = {}, 0
    for b in chosen:
        part = table.iloc[at:at + len(blocks[b])][list(BLOCK_COLUMNS)].reset_index(drop=True)
        at += len(blocks[b])
        atomic_csv(path[b], part)
        written = _load_block(path[b], blocks[b])  # as written, so that every shard works from the same text
        tables[b] = part if written is None else written
    return tables


def header_pass(ids: list[str], files: dict[str, Path], out: Path, k: int, n: int,
                workers: int = 0) -> tuple[pd.DataFrame, dict]:
    """Every selected slice's header facts (one row per id, in ``ids`` order) through the shared blocks.

    This shard's own blocks first, then the other shards' (each from its last block back): a block written is
    loaded; missing ones are read a few at a time (as many blocks as processes, one pass each) and written at once,
    so that a shard running beside this one finds them.

    Returns the table (:data:`BLOCK_COLUMNS`) and ``{"blocks", "read", "loaded", "seconds"}``.
    """
    start = time.perf_counter()
    blocks = [ids[i:i + HEADER_BLOCK] for i in range(0, len(ids), HEADER_BLOCK)]
    path = [out / "shards" / "headers" / f"block-{b:05d}.csv" for b in range(len(blocks))]
    tables: dict[int, pd.DataFrame] = {}
    own = list(range(k - 1, len(blocks), n))
    others = [b for j in [*range(k + 1, n + 1), *range(1, k)]  # each other shard's from its last block back
              for b in list(range(j - 1, len(blocks), n))[::-1]]
    batch = workers_for(workers, len(ids))
    read, pending = 0, []
    for at, b in enumerate(own + others):
        table = _load_block(path[b], blocks[b])
        if table is None:
            pending.append(b)
        else:
            tables[b] = table
        if pending and (len(pending) == batch or at in (len(own) - 1, len(own) + len(others) - 1)):
            tables.update(_read_blocks(pending, blocks, path, files, workers))
            read, pending = read + len(pending), []
    headers = pd.concat([tables[b] for b in range(len(blocks))], ignore_index=True) if blocks else \
        pd.DataFrame(columns=list(BLOCK_COLUMNS))
    return headers, {"blocks": len(blocks), "read": read, "loaded": len(blocks) - read,
                     "seconds": round(time.perf_counter() - start, 3)}


# --- a shard -------------------------------------------------------------------------------------

def _remove_stale(images: Path, ids: set[str]) -> None:
    """Remove temporary files a killed run of this shard left (``.<id>.png.<pid>.tmp``), never another shard's."""
    if not images.is_dir():
        return
    for name in os.listdir(images):
        if ".tmp" in name and name.lstrip(".").split(".png")[0] in ids:
            (images / name).unlink(missing_ok=True)


def _check_shards(out: Path, shards: dict) -> None:
    """Refuse a shard of another N, or of another selection, than the shards before it in ``out``."""
    old = (read_prepare_json(out, "delete the folder to start again") or {}).get("shards")
    if old and old.get("n") != shards["n"]:
        raise ValueError(f"--shard K/{shards['n']}: {out} is prepared in {old.get('n')} shards (prepare.json); "
                         f"run --shard K/{old.get('n')} as the other shards did, or use another --out")
    if old and old.get("selection") != shards["selection"]:
        raise ValueError(f"{out}: its shards prepare another selection of images (prepare.json: another --limit, "
                         "--balance, --seed, labels or set of .dcm files); every shard needs the same flags and "
                         "files, or use another --out")


def prepare_rsna_shard(dicom: str | Path, labels: str | Path, out: str | Path, shard: str | tuple[int, int], *,
                       windows: list[str] | tuple[str, ...] = DEFAULT_WINDOWS, size: int = 256, crop: bool = True,
                       limit: int | None = None, balance: bool = False, seed: int = 0, workers: int = 0,
                       progress: bool = True, log=print) -> dict:
    """Shard K of N of :func:`smallct.datasets.prepare.prepare_rsna` (same parameters, and ``shard`` ``"K/N"``).

    Writes the PNGs of this shard's series into ``out/images`` (a rerun redoes only those absent or unreadable)
    and ``out/shards/manifest-K-of-N.csv`` and ``report-K-of-N.json``; :func:`merge_shards` joins them.

    Returns
    -------
    dict
        The shard's report: as ``report.json``, with ``shard`` (k, n, selection digest, series, images and the
        header pass: blocks read and loaded, seconds).
    """
    k, n = parse_shard(shard)
    dicom, out = Path(dicom), Path(out)
    files, chosen, info, report = select_rsna(dicom, labels, out, windows=windows, size=size, crop=crop,
                                              limit=limit, balance=balance, seed=seed)
    ids = chosen["ID"].tolist()
    info["shards"] = {"n": n, "selection": selection_digest(ids)}
    _check_shards(out, info["shards"])
    start_folder(out, info, clean=False)  # another shard may be writing its temporary files beside this one's
    windows = info["settings"]["windows"]

    start = time.perf_counter()
    headers, header_stats = header_pass(ids, files, out, k, n, workers)
    mine = headers[assign_shards(headers, n) == k]
    _remove_stale(out / "images", set(mine["id"]))
    jobs = []
    for row in mine.itertuples(index=False):
        job = (row.id, files[row.id], image_path(out, row.id), windows, size, crop)
        if pd.isna(row.error):  # the header facts as read: not read again (a failed one is, naming the file)
            facts = row._asdict()
            job += ({key: facts[key] for key in (*TEXT, *POSITION, *ORIENTATION)},)
        jobs.append(job)
    rows = run_jobs(prepare_slice, jobs, workers, progress, f"prepare rsna {k}/{n}")
    seconds = time.perf_counter() - start

    manifest, report["series_problems"] = rsna_manifest(chosen[chosen["ID"].isin(set(mine["id"]))], rows)
    series = mine.loc[mine["error"].isna(), "SeriesInstanceUID"].nunique(dropna=False)
    report["shard"] = {"k": k, "n": n, "selection": info["shards"]["selection"], "series": int(series),
                       "images": len(mine), "header_pass": header_stats}
    report = finish_folder(out, manifest, rows, report, seconds, workers, log, names=shard_files(k, n))
    log(f"shard {k} of {n} done; once all {n} are: python -m smallct.prepare merge {out}")
    return report


# --- the merge -----------------------------------------------------------------------------------

def _read_shard_manifest(path: Path) -> pd.DataFrame:
    """A shard's manifest as written: ids and UIDs as text, floats exactly (the merged text equals an unsharded
    run's)."""
    return pd.read_csv(path, dtype={c: str for c in ("id", "file", "patient", "study", "series")},
                       **EXACT)


def merge_shards(out: str | Path, log=print) -> dict:
    """Join the shards of ``out`` into ``out/manifest.csv`` and ``out/report.json``.

    The manifest is the one an unsharded ``prepare rsna`` of the same selection writes: rows by patient, study,
    series, then along the normal, ``prev`` / ``next`` rows of the merged manifest. The report joins the shards'
    failed files (by id), counts and seconds (per shard under ``shards``), with the series problems found anew.
    ``ValueError`` before anything is written when a shard is missing, or the shards disagree (settings, N,
    selection) or do not cover the selection exactly once.
    """
    out = Path(out)
    info = read_prepare_json(out, "merge needs a folder prepared with --shard K/N")
    if info is None:
        raise ValueError(f"{out / 'prepare.json'}: no such file; merge needs a folder prepared with --shard K/N")
    shards = info.get("shards")
    if not shards:
        raise ValueError(f"{out}: not prepared in shards (prepare.json has no shards): its manifest.csv is whole")
    n = shards["n"]
    missing = [k for k in range(1, n + 1) if not all((out / f).is_file() for f in shard_files(k, n))]
    if missing:
        which = ", ".join(f"{k} of {n}" for k in missing)
        raise ValueError(f"{out}: shard {which} not finished (no {shard_files(missing[0], n)[1]}): run prepare rsna "
                         f"with the same flags and --shard {missing[0]}/{n}, then merge again")
    reports = [json.loads((out / shard_files(k, n)[1]).read_text()) for k in range(1, n + 1)]
    for k, report in enumerate(reports, 1):
        theirs = report.get("shard", {})
        if report.get("settings") != info["settings"] or (theirs.get("n"), theirs.get("selection")) != \
                (n, shards["selection"]):
            raise ValueError(f"{out}: shard {k} of {n} ({shard_files(k, n)[1]}) was prepared with other settings, "
                             f"another N or another selection than prepare.json: run it again with the same flags "
                             f"as the others")
    manifests = [_read_shard_manifest(out / shard_files(k, n)[0]) for k in range(1, n + 1)]
    failed = [f for report in reports for f in report["failed_files"]]
    ids = pd.Series([i for m in manifests for i in m["id"]] + [f["id"] for f in failed])
    if ids.duplicated().any() or selection_digest(ids) != shards["selection"]:
        twice = ids[ids.duplicated()].tolist()
        raise ValueError(f"{out}: the shards do not cover their selection exactly once ("
                         + (f"{twice[0]} in two shards" if twice else f"{len(ids)} images, the selection has "
                            f"{reports[0]['selection']['selected']}")
                         + "): run every shard again with the same flags, then merge")

    start = time.perf_counter()
    joined = pd.concat(manifests, ignore_index=True).drop(columns=["position", "prev", "next"])
    manifest, problems = order_manifest(joined.sort_values("id", kind="stable").reset_index(drop=True))
    per_shard = [{"k": k, **{key: r.get(key) for key in ("dicom", "labels", "written", "kept", "failed", "seconds",
                                                         "images_per_second", "workers")},
                  "header_pass": r["shard"]["header_pass"]} for k, r in enumerate(reports, 1)]
    counts = {key: sum(r[key] for r in reports) for key in ("written", "kept", "failed")}
    seconds = sum(r["seconds"] for r in reports)
    report = {"kind": "rsna", "out": str(out), "settings": info["settings"], "selection": reports[0]["selection"],
              "series_problems": problems, "images_in_manifest": len(manifest), **counts,
              "failed_files": sorted(failed, key=lambda f: f["id"]),
              "seconds": round(seconds, 3),  # summed over the shards: the work, not the wall time of parallel shards
              "images_per_second": round(len(ids) / seconds, 2) if seconds > 0 else None,
              "shards": per_shard, "merge_seconds": None}
    atomic_csv(out / "manifest.csv", manifest)
    report["merge_seconds"] = round(time.perf_counter() - start, 3)
    atomic_json(out / "report.json", report, default=str)
    log(f"smallct.prepare merge: {len(manifest)} images of {n} shards in {out / 'manifest.csv'} "
        f"({counts['written']} written, {counts['kept']} already there, {counts['failed']} unreadable; "
        f"{len(problems)} series problems; report in {out / 'report.json'})")
    return report
