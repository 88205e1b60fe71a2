"""Prepare: a raw image set to a normalised PNG cache with a manifest (``python -m smallct.prepare``).

``prepare rsna`` reads RSNA 2019 DICOM slices and their ``stage_2_train.csv``-style labels and writes
one RGB PNG per slice, one CT window per channel (:func:`smallct.dicom.to_rgb`: HU, bad-intercept
fix, padding to air, crop to the body, resize keeping the aspect ratio). ``prepare png`` writes the
same cache for a PNG set (:func:`smallct.ingest.to_rgb_uint8`). The prepared folder:

``prepare.json``  settings and the Dataset ``meta`` (written first; other settings in the same
                  folder are refused, so a folder never mixes two windowings)
``images/``       one PNG per image, each written atomically (``<id>.png`` for RSNA)
``manifest.csv``  one row per prepared image: ``id, file``, the six labels in
                  :data:`smallct.rsna.LABELS` order, ``patient, study, series, z`` (mm), sorted by
                  patient, study, series and z (RSNA); ``id, file, label`` (PNG)
``report.json``   the last run: selection, counts, every skipped file with its reason, time

:func:`smallct.labels.load_dataset` reads such a folder (``smallct.labels.read_manifest``), so
``python -m smallct.cv --data OUT`` trains on it. Runs resume: a second run redoes only the images
whose PNG is absent or unreadable (headers are read again, which is fast). Unreadable files are
skipped, counted and listed in ``report.json``; the run goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from smallct.dicom import WINDOWS, get_window, read_header, to_rgb
from smallct import ingest
from smallct.rsna import LABELS, read_rsna_labels

DEFAULT_WINDOWS = ("brain", "subdural", "bone")
PNG_COMPRESS_LEVEL = 1  # zlib level 1: about 3x faster to write than Pillow's default 6, files about 10% larger
MANIFEST_COLUMNS = ("id", "file", *LABELS, "patient", "study", "series", "z")


# --- selection (pure) ----------------------------------------------------------------------------

def parse_windows(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """Three window names, ``"brain,subdural,bone"`` or a list; ``ValueError`` on an unknown name."""
    names = [w.strip() for w in text.split(",")] if isinstance(text, str) else [str(w) for w in text]
    if len(names) != 3:
        raise ValueError(f"--windows {','.join(names)}: expected three windows, one per RGB channel "
                         f"(names among {', '.join([*WINDOWS, 'header'])})")
    for name in names:
        if name != "header":
            get_window(name)  # raises on an unknown name
    return names


def select_images(table: pd.DataFrame, *, limit: int | None = None, balance: bool = False,
                  seed: int = 0) -> pd.DataFrame:
    """The images to prepare: all, a balanced subset, and/or at most ``limit``; deterministic under ``seed``.

    Parameters
    ----------
    table
        One row per image with columns ``ID`` and ``any`` (as :func:`smallct.rsna.read_rsna_labels`).
    limit
        At most this many images, drawn at random (with ``balance``: half positives, half negatives).
    balance
        Every positive (``any`` = 1) and as many negatives drawn at random (fewer when there are
        fewer positives than negatives left, and all negatives when they are the minority).

    Returns
    -------
    pandas.DataFrame
        The chosen rows, sorted by ``ID``.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"--limit {limit}: expected a positive number of images")
    rng = np.random.default_rng(seed)
    table = table.sort_values("ID").reset_index(drop=True)
    if balance:
        pos = np.flatnonzero(table["any"].to_numpy() == 1)
        neg = np.flatnonzero(table["any"].to_numpy() == 0)
        n = min(len(pos), len(neg))
        if limit is not None:
            n = min(n, limit // 2)
        chosen = np.concatenate([rng.choice(pos, n, replace=False), rng.choice(neg, n, replace=False)])
    elif limit is not None and limit < len(table):
        chosen = rng.choice(len(table), limit, replace=False)
    else:
        chosen = np.arange(len(table))
    return table.iloc[np.sort(chosen)].reset_index(drop=True)


# --- workers -------------------------------------------------------------------------------------

def _png_ok(path: Path, size: int | None) -> bool:
    """True when ``path`` is a complete RGB PNG of side ``size`` (any size when None)."""
    if not path.is_file():
        return False
    try:
        image = ingest.open_image(path)
    except ValueError:
        return False
    return image.mode == "RGB" and (size is None or image.size == (size, size))


def _write_png(path: Path, rgb: np.ndarray) -> None:
    """Write atomically: a killed run leaves no half-written PNG behind under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    Image.fromarray(rgb).save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    os.replace(tmp, path)


def _prepare_slice(job: tuple) -> dict:
    """One RSNA slice: header facts, and the windowed PNG unless a good one is there already."""
    image_id, source, target, windows, size, crop = job
    try:
        header = read_header(source)
        status = "kept"
        if not _png_ok(target, size):
            _write_png(target, to_rgb(source, windows, size, crop))
            status = "written"
    except ValueError as err:  # the dicom readers raise ValueError, naming the file, on any bad input
        return {"id": image_id, "status": "failed", "error": str(err)}
    return {"id": image_id, "status": status, "patient": header["PatientID"], "study": header["StudyInstanceUID"],
            "series": header["SeriesInstanceUID"], "z": header["z"]}


def _prepare_picture(job: tuple) -> dict:
    """One PNG-set image: RGB uint8 (resized when ``size`` is given) unless a good one is there."""
    image_id, source, target, size = job
    try:
        status = "kept"
        if not _png_ok(target, size):
            rgb = ingest.to_rgb_uint8(source) if size is None else ingest.prepare(source, size, "pad", crop=True)
            _write_png(target, rgb)
            status = "written"
    except ValueError as err:
        return {"id": image_id, "status": "failed", "error": str(err)}
    return {"id": image_id, "status": status}


def _available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _run_jobs(fn, jobs: list[tuple], workers: int, progress: bool, desc: str) -> list[dict]:
    """``fn`` over ``jobs`` in order: in this process (``workers`` 1) or a pool (0: every core)."""
    if workers < 0:
        raise ValueError(f"--workers {workers}: expected 0 (every core) or a positive number")
    workers = min(workers or _available_cores(), max(len(jobs), 1))
    bar = dict(total=len(jobs), desc=desc, unit="img", disable=not progress, smoothing=0.1)
    if workers == 1:
        return [fn(job) for job in tqdm(jobs, **bar)]
    chunk = max(1, min(32, len(jobs) // (workers * 16)))
    with ProcessPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(fn, jobs, chunksize=chunk), **bar))


# --- the prepared folder -------------------------------------------------------------------------

def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _start_folder(out: Path, info: dict) -> None:
    """Create ``out`` and write ``prepare.json``; refuse a folder prepared with other settings."""
    path = out / "prepare.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read ({err}); delete the folder to start again") from None
        if old.get("kind") != info["kind"] or old.get("settings") != info["settings"]:
            raise ValueError(f"{out}: holds images prepared with other settings ({old.get('kind')}: "
                             f"{old.get('settings')}); use another --out, or delete the folder to start again")
    (out / "images").mkdir(parents=True, exist_ok=True)
    for stale in (out / "images").rglob("*.tmp*"):  # left by a killed run
        stale.unlink(missing_ok=True)
    _atomic_write(path, json.dumps(info, indent=1))


def _finish(out: Path, manifest: pd.DataFrame, rows: list[dict], report: dict, seconds: float, workers: int,
            log) -> dict:
    """Write manifest.csv and report.json; log the one-line summary; return the report."""
    tmp = out / "manifest.csv.tmp"
    manifest.to_csv(tmp, index=False)
    os.replace(tmp, out / "manifest.csv")
    failed = [r for r in rows if r["status"] == "failed"]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("written", "kept", "failed")}
    report.update({
        "images_in_manifest": len(manifest), **counts,
        "failed_files": [{"id": r["id"], "error": r["error"]} for r in failed],
        "seconds": round(seconds, 3),
        "images_per_second": round(len(rows) / seconds, 2) if seconds > 0 else None,
        "workers": workers or _available_cores(),
    })
    _atomic_write(out / "report.json", json.dumps(report, indent=1, default=str))
    skipped = f", {counts['failed']} unreadable and skipped (listed in {out / 'report.json'})" if failed else ""
    log(f"smallct.prepare {report['kind']}: {len(manifest)} images in {out / 'manifest.csv'} "
        f"({counts['written']} written, {counts['kept']} already there{skipped}) in {seconds:.1f} s, "
        f"{report['images_per_second']} images/s")
    return report


def _channels(windows: list[str], size: int, crop: bool) -> str:
    parts = []
    for colour, name in zip("RGB", windows):
        w = get_window(name) if name != "header" else None
        parts.append(f"{colour} {name}" + (f" ({w.center:g}/{w.width:g} HU, centre/width)" if w else
                                           " (the file's own WindowCenter/WindowWidth)"))
    return (f"RGB uint8 PNG, one CT window per channel: {', '.join(parts)}; DICOM read by smallct.dicom.to_rgb "
            f"(HU, RSNA bad-intercept fix, padding to air{', crop to the body' if crop else ''}), "
            f"resized to {size} px keeping the aspect ratio")


def _dicom_files(folder: Path) -> dict[str, Path]:
    """``{image id (file stem): path}`` of the ``.dcm`` files under ``folder``."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".dcm" and p.is_file())
    index: dict[str, Path] = {}
    dup = []
    for path in files:
        if path.stem in index:
            dup.append(str(path))
        index[path.stem] = path
    if dup:
        raise ValueError(f"{folder}: the same image id in several files: {', '.join(dup[:8])}")
    return index


def prepare_rsna(dicom: str | Path, labels: str | Path, out: str | Path, *,
                 windows: list[str] | tuple[str, ...] = DEFAULT_WINDOWS, size: int = 256, crop: bool = True,
                 limit: int | None = None, balance: bool = False, seed: int = 0, workers: int = 0,
                 progress: bool = True, log=print) -> dict:
    """Window RSNA DICOM slices into ``out/images/<id>.png`` and write ``out/manifest.csv``.

    Parameters
    ----------
    dicom
        Folder of ``<image id>.dcm`` files (searched recursively), e.g. ``stage_2_train``.
    labels
        Labels in ``stage_2_train.csv`` long format; only images with both labels and a file are used.
    out
        The prepared folder (created; the same folder resumes).
    windows
        Three window names (R, G, B): presets of :data:`smallct.dicom.WINDOWS` or ``"header"``.
    size
        Side of the square PNGs in px (aspect ratio kept, black padding).
    crop
        Crop to the body (pixels above -500 HU) before resizing. The command line always crops, as
        ``smallct.predict`` does with raw DICOM.
    limit, balance, seed
        Which images: see :func:`select_images`.
    workers
        Processes; 0 uses every core, 1 works in this process.

    Returns
    -------
    dict
        The content of ``report.json``: selection, counts (``written``, ``kept``, ``failed``),
        ``failed_files`` (one message per unreadable file, naming it), seconds and images/s.
    """
    dicom, out = Path(dicom), Path(out)
    windows = parse_windows(windows)
    if size < 8:
        raise ValueError(f"--size {size}: expected a side of at least 8 px")
    table = read_rsna_labels(labels)
    files = _dicom_files(dicom)
    labelled = table[table["ID"].isin(files)]
    without_file = len(table) - len(labelled)
    without_label = len(set(files) - set(table["ID"]))
    if labelled.empty:
        raise ValueError(f"{dicom}: none of its {len(files)} .dcm files has labels in {labels} "
                         "(file names must be the image ids, ID_<hex>.dcm)")
    chosen = select_images(labelled, limit=limit, balance=balance, seed=seed)
    if chosen.empty:
        raise ValueError(f"{labels}: --balance found {int(labelled['any'].sum())} positive and "
                         f"{int((labelled['any'] == 0).sum())} negative images with a file: nothing to balance")
    # run.json records windows, channels and size (as input.prepared_size) for smallct.predict
    meta = {"windows": windows, "channels": _channels(windows, size, crop), "size": size, "crop": crop}
    _start_folder(out, {"kind": "rsna", "settings": {"windows": windows, "size": size, "crop": crop},
                        "task": "multilabel", "class_names": list(LABELS), "meta": meta})

    jobs = [(i, files[i], out / "images" / f"{i}.png", windows, size, crop) for i in chosen["ID"]]
    start = time.perf_counter()
    rows = _run_jobs(_prepare_slice, jobs, workers, progress, "prepare rsna")
    seconds = time.perf_counter() - start

    good = pd.DataFrame([r for r in rows if r["status"] != "failed"],
                        columns=["id", "status", "patient", "study", "series", "z"])
    manifest = chosen.rename(columns={"ID": "id"}).merge(good.drop(columns="status"), on="id")
    manifest["file"] = "images/" + manifest["id"] + ".png"
    manifest = manifest.sort_values(["patient", "study", "series", "z", "id"], na_position="last")
    report = {
        "kind": "rsna", "dicom": str(dicom), "labels": str(labels), "out": str(out),
        "settings": {"windows": windows, "size": size, "crop": crop},
        "selection": {"labelled_images": len(table), "dcm_files": len(files), "labels_without_file": without_file,
                      "files_without_labels": without_label, "limit": limit, "balance": balance, "seed": seed,
                      "selected": len(chosen), "selected_positive": int(chosen["any"].sum())},
    }
    return _finish(out, manifest[list(MANIFEST_COLUMNS)], rows, report, seconds, workers, log)


def prepare_png(src: str | Path, out: str | Path, *, labels: str | Path | None = None, id_col: str | None = None,
                label_col: str | None = None, size: int | None = None, workers: int = 0, progress: bool = True,
                log=print) -> dict:
    """Normalise a labelled PNG (or JPEG, ...) set into ``out/images`` as RGB uint8 PNGs, with a manifest.

    Parameters
    ----------
    src
        An image folder as :func:`smallct.labels.load_dataset` reads it (``labels.csv`` or class folders).
    labels, id_col, label_col
        As for :func:`smallct.labels.load_dataset`.
    size
        None keeps each image's size (only :func:`smallct.ingest.to_rgb_uint8`); a side in px crops
        the dark border and resizes with padding (:func:`smallct.ingest.prepare`).
    workers
        Processes; 0 uses every core, 1 works in this process.

    Returns
    -------
    dict
        The content of ``report.json`` (see :func:`prepare_rsna`).
    """
    from smallct.labels import load_dataset

    src, out = Path(src), Path(out)
    if size is not None and size < 8:
        raise ValueError(f"--size {size}: expected a side of at least 8 px")
    if src.resolve() == out.resolve():
        raise ValueError(f"--out {out}: must differ from --src")
    dataset = load_dataset(src, labels, id_col, label_col)
    targets = [out / "images" / Path(f).relative_to(src).with_suffix(".png") for f in dataset.files]
    clash = pd.Series([str(t) for t in targets]).duplicated(keep=False)
    if clash.any():
        names = sorted({str(f) for f, c in zip(dataset.files, clash) if c})
        raise ValueError(f"{src}: files that would share one PNG name: {', '.join(names[:8])}")
    channels = ("RGB uint8 PNG from smallct.ingest.to_rgb_uint8 (alpha on black)"
                + (f", border cropped and resized to {size} px with padding" if size else ""))
    _start_folder(out, {"kind": "png", "settings": {"size": size}, "task": dataset.task,
                        "class_names": dataset.class_names, "meta": {"windows": None, "channels": channels}})

    jobs = [(i, f, t, size) for i, f, t in zip(dataset.ids, dataset.files, targets)]
    start = time.perf_counter()
    rows = _run_jobs(_prepare_picture, jobs, workers, progress, "prepare png")
    seconds = time.perf_counter() - start

    ok = [r["status"] != "failed" for r in rows]
    manifest = pd.DataFrame({"id": dataset.ids, "file": [str(t.relative_to(out)) for t in targets],
                             "label": dataset.label_names()})[ok]
    report = {"kind": "png", "src": str(src), "labels": str(labels) if labels else None, "out": str(out),
              "settings": {"size": size}, "source": dataset.source, "class_names": dataset.class_names}
    return _finish(out, manifest, rows, report, seconds, workers, log)


# --- command line --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m smallct.prepare",
        description="Write a normalised PNG cache with manifest.csv from a raw image set; "
                    "python -m smallct.cv --data OUT trains on it. A second run with the same --out "
                    "does only what is missing.")
    sub = p.add_subparsers(dest="kind", required=True, metavar="{rsna,png}")
    r = sub.add_parser("rsna", help="RSNA 2019 DICOM slices + stage_2_train.csv -> windowed RGB PNGs",
                       description="Window RSNA 2019 DICOM slices into RGB PNGs (one window per channel) and "
                                   "write manifest.csv (id, file, six labels, patient, study, series, z).")
    r.add_argument("--dicom", type=Path, required=True, help="folder of ID_<hex>.dcm slices (searched recursively)")
    r.add_argument("--labels", type=Path, required=True, help="labels CSV in stage_2_train.csv format (ID,Label)")
    r.add_argument("--out", type=Path, required=True, help="output folder; the same folder resumes")
    r.add_argument("--windows", default=",".join(DEFAULT_WINDOWS),
                   help="three windows for R,G,B, among " + ", ".join([*WINDOWS, "header"])
                        + " (centre/width in HU, see smallct.dicom.WINDOWS; default %(default)s)")
    r.add_argument("--size", type=int, default=256, help="PNG side in px, aspect ratio kept (default %(default)s)")
    r.add_argument("--limit", type=int, help="at most N images, drawn at random with --seed")
    r.add_argument("--balance", action="store_true",
                   help="every positive (any = 1) and as many negatives drawn at random with --seed")
    r.add_argument("--seed", type=int, default=0, help="seed of --limit and --balance draws (default 0)")
    png = sub.add_parser("png", help="a labelled PNG set -> the same normalised RGB PNG cache",
                         description="Normalise a labelled image folder (labels.csv or class sub-folders) "
                                     "into RGB uint8 PNGs and write manifest.csv (id, file, label).")
    png.add_argument("--src", type=Path, required=True, help="image folder with labels.csv or class sub-folders")
    png.add_argument("--out", type=Path, required=True, help="output folder; the same folder resumes")
    png.add_argument("--labels", type=Path, help="labels CSV (default SRC/labels.csv)")
    png.add_argument("--id-col", help="id column of the labels CSV (default: 'id' or the first column)")
    png.add_argument("--label-col", help="label column of the labels CSV (default: the other column)")
    png.add_argument("--size", type=int, help="crop the border and resize to this side in px (default: keep size)")
    for q in (r, png):
        q.add_argument("--workers", type=int, default=0, help="processes (default 0: every core; 1: one core)")
        q.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.kind == "rsna":
            prepare_rsna(args.dicom, args.labels, args.out, windows=args.windows, size=args.size,
                         limit=args.limit, balance=args.balance, seed=args.seed, workers=args.workers,
                         progress=not args.no_progress)
        else:
            prepare_png(args.src, args.out, labels=args.labels, id_col=args.id_col, label_col=args.label_col,
                        size=args.size, workers=args.workers, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished images are kept in {args.out}; run the same command again to resume",
              file=sys.stderr)
        return 130
    except ValueError as err:
        print(f"smallct.prepare: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
