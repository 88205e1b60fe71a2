"""Prepared folders: a raw image set made once into normalised PNGs with a manifest (``python -m smallct.prepare``).

"Prepare" means this in smallct, and only this. :func:`prepare_rsna` reads RSNA 2019 DICOM slices and
their ``stage_2_train.csv``-style labels and writes one RGB PNG per slice, one CT window per channel
(:func:`smallct.io.dicom.to_rgb`: HU, bad-intercept fix, padding to air, crop to the body, resize keeping
the aspect ratio). :func:`prepare_png` writes the same folder for a PNG set
(:func:`smallct.io.images.to_rgb_uint8`). The prepared folder:

``prepare.json``  settings and the Dataset ``meta`` (written first; other settings in the same
                  folder are refused, so a folder never mixes two windowings)
``images/``       one PNG per image, each written atomically (``<id>.png`` for RSNA)
``manifest.csv``  one row per prepared image: ``id, file``, the six labels in
                  :data:`smallct.datasets.rsna.LABELS` order, ``patient, study, series``, ImagePositionPatient
                  ``x, y, z`` and ImageOrientationPatient ``rx, ry, rz, cx, cy, cz``, ``position`` (mm along
                  the slice normal) and ``prev, next`` (the manifest rows of the slice's neighbours in its
                  series; itself at an end or across a gap), rows by patient, study, series, then along the
                  normal (:func:`smallct.io.series.order_slices`; RSNA); ``id, file, label`` (PNG)
``report.json``   the last run: selection, counts, every skipped file with its reason, one line per series
                  with a gap, duplicate positions, mixed orientations or missing tags (``series_problems``), time

:func:`smallct.datasets.folder.load_dataset` reads such a folder (:func:`~smallct.datasets.folder.read_manifest`), so
``python -m smallct.cv --data OUT`` trains on it. Runs resume: a second run redoes only the images
whose PNG is absent or unreadable (headers are read again, which is fast). Unreadable files are
skipped, counted and listed in ``report.json``; the run goes on. Several processes or machines prepare one
folder in shards of whole series (``--shard K/N``, then ``merge``): :mod:`smallct.datasets.shards`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from smallct.datasets.folder import read_labelled_folder
from smallct.datasets.rsna import LABELS, read_rsna_labels
from smallct.io.dicom import read_header, to_rgb
from smallct.io.files import atomic_csv, atomic_json, atomic_write
from smallct.io.images import open_image, preprocess, to_rgb_uint8
from smallct.io.series import ORIENTATION, POSITION, order_slices
from smallct.io.windows import DEFAULT_WINDOWS, WINDOWS, get_window
from smallct.parallel import available_cores, parallel_map

PNG_COMPRESS_LEVEL = 1  # zlib level 1: about 3x faster to write than Pillow's default 6, files about 10% larger
MANIFEST_COLUMNS = ("id", "file", *LABELS, "patient", "study", "series", *POSITION, *ORIENTATION, "position",
                    "prev", "next")


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
        One row per image with columns ``ID`` and ``any`` (as :func:`smallct.datasets.rsna.read_rsna_labels`).
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
        image = open_image(path)
    except ValueError:
        return False
    return image.mode == "RGB" and (size is None or image.size == (size, size))


def _write_png(path: Path, rgb: np.ndarray) -> None:
    """Write atomically: a killed run leaves no half-written PNG behind under the final name."""
    with atomic_write(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def prepare_slice(job: tuple) -> dict:
    """One RSNA slice: header facts, and the windowed PNG unless a good one is there already.

    A 7th item of ``job``, the header facts read already (a shard's header pass), spares reading them again.
    """
    image_id, source, target, windows, size, crop, *known = job
    try:
        header = known[0] if known else read_header(source)
        status = "kept"
        if not _png_ok(target, size):
            _write_png(target, to_rgb(source, windows, size, crop))
            status = "written"
    except ValueError as err:  # the dicom readers raise ValueError, naming the file, on any bad input
        return {"id": image_id, "status": "failed", "error": str(err)}
    return {"id": image_id, "status": status, "patient": header["PatientID"], "study": header["StudyInstanceUID"],
            "series": header["SeriesInstanceUID"], **{k: header[k] for k in (*POSITION, *ORIENTATION)}}


def _prepare_picture(job: tuple) -> dict:
    """One PNG-set image: RGB uint8 (resized when ``size`` is given) unless a good one is there."""
    image_id, source, target, size = job
    try:
        status = "kept"
        if not _png_ok(target, size):
            rgb = to_rgb_uint8(source) if size is None else preprocess(source, size, "pad", crop=True)
            _write_png(target, rgb)
            status = "written"
    except ValueError as err:
        return {"id": image_id, "status": "failed", "error": str(err)}
    return {"id": image_id, "status": status}


def run_jobs(fn, jobs: list[tuple], workers: int, progress: bool, desc: str) -> list[dict]:
    """``fn`` over ``jobs`` in order, in this process (``workers`` 1) or on every core (0)."""
    return list(parallel_map(fn, jobs, workers, progress, desc=desc, unit="img", chunk_divisor=16, max_chunk=32))


# --- the prepared folder -------------------------------------------------------------------------

def image_path(out: Path, image_id: str) -> Path:
    """Where the PNG of RSNA slice ``image_id`` goes in the prepared folder ``out``."""
    return out / "images" / f"{image_id}.png"


def read_prepare_json(out: Path, fix: str) -> dict | None:
    """The ``prepare.json`` of ``out`` (None when there is none); ``ValueError`` naming it and ``fix`` when it is
    unreadable."""
    path = out / "prepare.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read ({err}); {fix}") from None


def start_folder(out: Path, info: dict, clean: bool = True) -> None:
    """Create ``out`` and write ``prepare.json``; refuse a folder prepared with other settings.

    ``clean`` removes the temporary files a killed run left in ``images/`` (a shard removes only its own:
    another shard may be writing beside it).
    """
    path = out / "prepare.json"
    old = read_prepare_json(out, "delete the folder to start again")
    if old is not None:
        if old.get("kind") != info["kind"] or old.get("settings") != info["settings"]:
            raise ValueError(f"{out}: holds images prepared with other settings ({old.get('kind')}: "
                             f"{old.get('settings')}); use another --out, or delete the folder to start again")
    (out / "images").mkdir(parents=True, exist_ok=True)
    for stale in (out / "images").rglob("*.tmp*") if clean else ():  # left by a killed run
        stale.unlink(missing_ok=True)
    atomic_json(path, info)


def finish_folder(out: Path, manifest: pd.DataFrame, rows: list[dict], report: dict, seconds: float, workers: int,
            log, names: tuple[str, str] = ("manifest.csv", "report.json")) -> dict:
    """Write manifest.csv and report.json (``names``, relative to ``out``); log the one-line summary; return the
    report."""
    manifest_path, report_path = out / names[0], out / names[1]
    atomic_csv(manifest_path, manifest)
    failed = [r for r in rows if r["status"] == "failed"]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("written", "kept", "failed")}
    report.update({
        "images_in_manifest": len(manifest), **counts,
        "failed_files": [{"id": r["id"], "error": r["error"]} for r in failed],
        "seconds": round(seconds, 3),
        "images_per_second": round(len(rows) / seconds, 2) if seconds > 0 else None,
        "workers": workers or available_cores(),
    })
    atomic_json(report_path, report, default=str)
    skipped = f", {counts['failed']} unreadable and skipped (listed in {report_path})" if failed else ""
    series = report.get("series_problems")
    if series:
        skipped += (f", {len(series)} series with a gap, duplicate positions, mixed orientations or missing tags "
                    f"(series_problems in {report_path})")
    log(f"smallct.prepare {report['kind']}: {len(manifest)} images in {manifest_path} "
        f"({counts['written']} written, {counts['kept']} already there{skipped}) in {seconds:.1f} s, "
        f"{report['images_per_second']} images/s")
    return report


def _channels(windows: list[str], size: int, crop: bool) -> str:
    parts = []
    for colour, name in zip("RGB", windows):
        w = get_window(name) if name != "header" else None
        parts.append(f"{colour} {name}" + (f" ({w.center:g}/{w.width:g} HU, centre/width)" if w else
                                           " (the file's own WindowCenter/WindowWidth)"))
    return (f"RGB uint8 PNG, one CT window per channel: {', '.join(parts)}; DICOM read by smallct.io.dicom.to_rgb "
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
        Three window names (R, G, B): presets of :data:`smallct.io.windows.WINDOWS` or ``"header"``.
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
    files, chosen, info, report = select_rsna(dicom, labels, out, windows=windows, size=size, crop=crop,
                                              limit=limit, balance=balance, seed=seed)
    start_folder(out, info)
    windows = info["settings"]["windows"]
    jobs = [(i, files[i], image_path(out, i), windows, size, crop) for i in chosen["ID"]]
    start = time.perf_counter()
    rows = run_jobs(prepare_slice, jobs, workers, progress, "prepare rsna")
    seconds = time.perf_counter() - start
    manifest, report["series_problems"] = rsna_manifest(chosen, rows)
    return finish_folder(out, manifest, rows, report, seconds, workers, log)


def select_rsna(dicom: Path, labels: str | Path, out: Path, *, windows, size: int, crop: bool, limit: int | None,
                balance: bool, seed: int) -> tuple[dict[str, Path], pd.DataFrame, dict, dict]:
    """What :func:`prepare_rsna` (or a shard of it) prepares: ``(files, chosen, info, report)``.

    ``files`` maps each image id to its ``.dcm``, ``chosen`` is :func:`select_images`' table, ``info`` the
    content of ``prepare.json`` and ``report`` the start of ``report.json`` (paths, settings, selection).
    """
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
    info = {"kind": "rsna", "settings": {"windows": windows, "size": size, "crop": crop},
            "task": "multilabel", "class_names": list(LABELS), "meta": meta}
    report = {
        "kind": "rsna", "dicom": str(dicom), "labels": str(labels), "out": str(out),
        "settings": {"windows": windows, "size": size, "crop": crop},
        "selection": {"labelled_images": len(table), "dcm_files": len(files), "labels_without_file": without_file,
                      "files_without_labels": without_label, "limit": limit, "balance": balance, "seed": seed,
                      "selected": len(chosen), "selected_positive": int(chosen["any"].sum())},
    }
    return files, chosen, info, report


def rsna_manifest(chosen: pd.DataFrame, rows: list[dict]) -> tuple[pd.DataFrame, list[str]]:
    """The manifest of the prepared slices among ``chosen`` (``rows`` of :func:`prepare_slice`), in series
    order, and the series problems (:func:`order_manifest`)."""
    good = pd.DataFrame([r for r in rows if r["status"] != "failed"],
                        columns=["id", "status", "patient", "study", "series", *POSITION, *ORIENTATION])
    manifest = chosen.rename(columns={"ID": "id"}).merge(good.drop(columns="status"), on="id")
    manifest["file"] = "images/" + manifest["id"] + ".png"
    return order_manifest(manifest)


def order_manifest(manifest: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Rows by patient, study, series, then along the normal, with ``position``, ``prev`` and ``next`` (rows of
    the returned table), in :data:`MANIFEST_COLUMNS`; and one problem line per series (:func:`order_slices`)."""
    order = order_slices(manifest, keys=("patient", "study"))  # never by file name or InstanceNumber
    manifest = manifest.iloc[order.order].reset_index(drop=True)
    manifest["position"], manifest["prev"], manifest["next"] = order.position, order.prev, order.next
    return manifest[list(MANIFEST_COLUMNS)], order.problems


def prepare_png(src: str | Path, out: str | Path, *, labels: str | Path | None = None, id_col: str | None = None,
                label_col: str | None = None, size: int | None = None, workers: int = 0, progress: bool = True,
                log=print) -> dict:
    """Normalise a labelled PNG (or JPEG, ...) set into ``out/images`` as RGB uint8 PNGs, with a manifest.

    Parameters
    ----------
    src
        An image folder as :func:`smallct.datasets.folder.load_dataset` reads it (``labels.csv`` or class
        folders).
    labels, id_col, label_col
        As for :func:`smallct.datasets.folder.load_dataset`.
    size
        None keeps each image's size (only :func:`smallct.io.images.to_rgb_uint8`); a side in px crops
        the dark border and resizes with padding (:func:`smallct.io.images.preprocess`).
    workers
        Processes; 0 uses every core, 1 works in this process.

    Returns
    -------
    dict
        The content of ``report.json`` (see :func:`prepare_rsna`).
    """
    src, out = Path(src), Path(out)
    if size is not None and size < 8:
        raise ValueError(f"--size {size}: expected a side of at least 8 px")
    if src.resolve() == out.resolve():
        raise ValueError(f"--out {out}: must differ from --src")
    dataset = read_labelled_folder(src, labels, id_col, label_col)  # the classes as found
    targets = [out / "images" / Path(f).relative_to(src).with_suffix(".png") for f in dataset.files]
    clash = pd.Series([str(t) for t in targets]).duplicated(keep=False)
    if clash.any():
        names = sorted({str(f) for f, c in zip(dataset.files, clash) if c})
        raise ValueError(f"{src}: files that would share one PNG name: {', '.join(names[:8])}")
    channels = ("RGB uint8 PNG from smallct.io.images.to_rgb_uint8 (alpha on black)"
                + (f", border cropped and resized to {size} px with padding" if size else ""))
    start_folder(out, {"kind": "png", "settings": {"size": size}, "task": dataset.task,
                        "class_names": dataset.class_names, "meta": {"windows": None, "channels": channels}})

    jobs = [(i, f, t, size) for i, f, t in zip(dataset.ids, dataset.files, targets)]
    start = time.perf_counter()
    rows = run_jobs(_prepare_picture, jobs, workers, progress, "prepare png")
    seconds = time.perf_counter() - start

    ok = [r["status"] != "failed" for r in rows]
    manifest = pd.DataFrame({"id": dataset.ids, "file": [str(t.relative_to(out)) for t in targets],
                             "label": dataset.label_names()})[ok]
    report = {"kind": "png", "src": str(src), "labels": str(labels) if labels else None, "out": str(out),
              "settings": {"size": size}, "source": dataset.source, "class_names": dataset.class_names}
    return finish_folder(out, manifest, rows, report, seconds, workers, log)
