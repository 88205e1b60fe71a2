"""Apply the fold models of cross-validation runs to new images: ``python -m smallct.predict``.

Every fold checkpoint of a cross-validation run is loaded and applied; their probabilities are
averaged (an ensemble), with test-time augmentation (the left-right mirror) where the run evaluated its
test folds with it (``run.json``'s ``tta``, :func:`run_tta`; on by default in smallct.cv), so that a fold model
gives its ``oof.csv`` probabilities again; ``tta=True``/``False`` (``--tta``/``--no-tta``) overrides it.
Several runs (``--run A --run B``, for example resnext50 and seresnet50) are averaged with equal weight per
run, each run's folds first. Images become model inputs exactly as
the run's training images did (:func:`model_inputs`): the size, resize mode, crop, CT windows, mean and
std are read from ``run.json``, never typed again.

The table has one row per image: ``id`` (the file name without suffix, as text: ``000``) and ``file``
(the file name), as in ``oof.csv`` so that the two join on either
(:func:`smallct.datasets.folder.image_ids`), the probabilities in the columns of ``oof.csv``
(``prob`` for a binary task: the probability of the run's positive class, ``class_names[1]``;
``prob_<class>`` otherwise), ``pred`` (class index) and ``pred_class`` (its name) for single-label tasks.
The class names are run.json's. For a multi-label RSNA run, :mod:`smallct.apply.submission` gives the
competition's ``ID,Label`` format. An unreadable DICOM file stops :func:`predict`, or is set aside
(``unreadable=[]``) and then given the training set's label rates in a submission (a row for every image).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from smallct.progress import tqdm

from smallct.data.cache import load_images
from smallct.data.neighbours import Neighbours
from smallct.data.source import BatchSource, MemorySource
from smallct.datasets.classes import class_note
from smallct.datasets.folder import image_ids
from smallct.engine.run_folder import Checkpoint, RunFolder
from smallct.engine.sequence import apply_sequence
from smallct.engine.stacking import model_outputs
from smallct.engine.run_models import Run, load_fold_model, load_run
from smallct.engine.train import predict_proba, resolve_device
from smallct.io.dicom import read_header, to_rgb
from smallct.io.images import IMAGE_SUFFIXES, preprocess
from smallct.io.series import link_dicom_files
from smallct.parallel import parallel_map

DICOM_SUFFIXES = (".dcm", ".dicom")
CHUNK = 2048  # images prepared and predicted at a time (2048 x 3 x 256 x 256 uint8 = 400 MB)


def find_inputs(paths: Iterable[str | Path], workers: int = 0, progress: bool = False, log=print) -> list[Path]:
    """Image and DICOM files named by ``paths`` (:func:`find_series`)."""
    return find_series(paths, workers, progress, log)[0]


def find_series(paths: Iterable[str | Path], workers: int = 0, progress: bool = False,
                log=print) -> tuple[list[Path], Neighbours | None]:
    """Image and DICOM files named by ``paths``, and each one's neighbours in its series (None: no DICOM folder
    was given, so no file is in a series).

    Files are taken as given (each its own neighbour); folders are searched recursively, images sorted by name and
    DICOM slices in series order, as ``smallct.prepare rsna`` orders them, linked to the slices beside them
    (:func:`smallct.io.series.link_dicom_files`: along the slice normal, never by file name). A series with a gap,
    duplicate positions, mixed orientations or missing tags is logged in one line. ``workers`` processes read the
    DICOM headers (0: every core)."""
    files: list[Path] = []
    series = False
    prev: list[np.ndarray] = []
    nxt: list[np.ndarray] = []
    for path in map(Path, paths):
        start = len(files)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + DICOM_SUFFIXES)
            if not found:
                raise ValueError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES + DICOM_SUFFIXES)}) in this folder")
            dicom = [p for p in found if p.suffix.lower() in DICOM_SUFFIXES]
            series = series or bool(dicom)
            slices, before, after, problems = link_dicom_files(dicom, workers, progress)
            # the DICOM files take the DICOM files' places, in series order (and the others keep theirs)
            at = np.array([i for i, p in enumerate(found) if p.suffix.lower() in DICOM_SUFFIXES], dtype=np.int64)
            rows = np.arange(len(found), dtype=np.int64)
            rows_prev, rows_next = rows.copy(), rows.copy()
            rows_prev[at], rows_next[at] = at[before], at[after]
            in_order = iter(slices)
            files += [next(in_order) if p.suffix.lower() in DICOM_SUFFIXES else p for p in found]
            prev.append(start + rows_prev)
            nxt.append(start + rows_next)
            for line in problems:
                log(f"{path}: {line}")
        elif path.is_file():
            files.append(path)
            prev.append(np.array([start]))
            nxt.append(np.array([start]))
        else:
            raise ValueError(f"{path}: no such file or folder")
    if not files:
        raise ValueError("no input images given")
    return files, Neighbours(np.concatenate(prev), np.concatenate(nxt)) if series else None


def _dicom_chw(args) -> np.ndarray | str:
    """One DICOM slice as :func:`model_inputs` makes it, (3, S, S) uint8 (a top-level function: it is pickled);
    with ``skip``, the message naming the file where it cannot be read."""
    path, windows, prepared_size, size, resize, crop, skip = args
    try:
        return preprocess(to_rgb(path, windows, size=prepared_size), size, resize, crop).transpose(2, 0, 1)
    except ValueError as err:  # to_rgb's messages start with the path: truncated pixels, an unreadable header
        if not skip or "decoder" in str(err):  # a decoder missing on this machine is not a broken file
            raise
        return str(err)


def model_inputs(files: Sequence[Path], spec: dict, workers: int = 0, progress: bool = True,
                   cache: bool = True, unreadable: dict[int, str] | None = None) -> torch.Tensor:
    """Images as the run's model input, uint8 (N, 3, S, S), prepared exactly as its training images.

    ``spec`` is ``run.json``'s ``input`` (:attr:`smallct.engine.run_models.Run.input`): ``img_size``,
    ``resize``, ``crop``, ``windows`` and ``prepared_size``. PNG and other image files go through
    :func:`smallct.io.images.preprocess` (through the decoded-image cache unless ``cache`` is False). A
    DICOM file is made what ``smallct.prepare rsna`` made of the training slices,
    :func:`smallct.io.dicom.to_rgb` with the run's CT windows at ``prepared_size`` px (body crop on,
    that command's default), then goes through the same ``preprocess``. ``workers`` processes decode
    (0: every core). An unreadable DICOM file raises ``ValueError`` naming it; where ``unreadable`` (a dict) is
    given, its message goes there under its index in ``files`` instead, and its row is left zero.
    """
    size, resize, crop = int(spec["img_size"]), spec["resize"], bool(spec["crop"])
    files = [Path(f) for f in files]
    dicom = [i for i, f in enumerate(files) if f.suffix.lower() in DICOM_SUFFIXES]
    other = [i for i, f in enumerate(files) if f.suffix.lower() not in DICOM_SUFFIXES]
    out = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    if other:
        out[other] = load_images([files[i] for i in other], size, resize, crop, cache=None if cache else False,
                                 workers=workers, progress=progress)
    if dicom:
        windows = spec.get("windows")
        if not windows:
            raise ValueError(f"{files[dicom[0]]}: a DICOM file, but the run was trained on images without CT "
                             "windows (run.json input.windows is empty); give images made as its training images were")
        jobs = [(files[i], windows, spec.get("prepared_size"), size, resize, crop, unreadable is not None)
                for i in dicom]
        arrays = parallel_map(_dicom_chw, jobs, workers, progress, desc="reading DICOM", unit="file", leave=False)
        for i, arr in zip(dicom, arrays):
            if isinstance(arr, str):
                unreadable[i] = arr
                out[i] = 0
            else:
                out[i] = torch.from_numpy(np.ascontiguousarray(arr))
    return out


def select_checkpoints(run: Run, folds: Sequence[str] | None = None) -> list[Checkpoint]:
    """The run's fold models, or those named in ``folds`` (``r0_f1``); ``ValueError`` when there are none."""
    if folds:
        return [run.checkpoint(name) for name in folds]
    if not run.checkpoints:
        raise ValueError(f"{run.path}: no fold checkpoints yet (checkpoints/r*_f*.pt); finish the run first")
    return list(run.checkpoints)


def load_models(run: Run, checkpoints: Sequence[Checkpoint], device: torch.device | None = None) -> list[nn.Module]:
    """The fold models of ``checkpoints`` in eval mode on ``device``, checked against ``run.json``."""
    models = []
    for ckpt in checkpoints:
        model, info = load_fold_model(ckpt.path, device or torch.device("cpu"))
        if info["arch"] != run.arch or info.get("img_size", run.input["img_size"]) != run.input["img_size"]:
            raise ValueError(f"{ckpt.path}: a {info['arch']} model for {info.get('img_size')} px, but run.json "
                             f"says {run.arch} at {run.input['img_size']} px")
        # a nested run's fold models may come from candidates that prepare images differently
        differ = [k for k in ("resize", "crop", "mean", "std") if k in info and info[k] != run.input.get(k)]
        if differ:
            raise ValueError(f"{ckpt.path}: its {', '.join(differ)} differ from run.json's input; apply this fold "
                             "model with its own run (a nested run's inner/ folder) or choose other folds")
        models.append(model)
    return models


def fold_probabilities(run: Run, x: BatchSource | torch.Tensor, checkpoints: Sequence[Checkpoint] | None = None,
                       tta: bool | None = None, device: torch.device | None = None, batch_size: int = 64,
                       progress: bool = True, models: Sequence[nn.Module] | None = None) -> np.ndarray:
    """Probabilities of each fold model of ``run`` on prepared images ``x``: (K, N, C).

    ``x`` is uint8 (N, 3, S, S) from :func:`model_inputs` with ``run.input`` (or a batch source of such images,
    read batch by batch); the run's mean and
    std normalise it. With ``tta`` each model averages the image and its left-right mirror (None: as the run
    evaluated its test folds, :func:`run_tta`).
    ``models`` (from :func:`load_models`) saves loading the checkpoints again.
    """
    device = device or torch.device("cpu")
    if models is None:
        models = load_models(run, select_checkpoints(run) if checkpoints is None else checkpoints, device)
    mean, std = run.input["mean"], run.input["std"]
    tta = run_tta(run) if tta is None else tta
    return np.stack([predict_proba(m, x, mean, std, run.task, tta, batch_size, device, amp=run.amp)
                     for m in tqdm(models, desc=f"{run.arch} fold models", unit="model", disable=not progress,
                                   leave=False)])


def run_tta(run: Run) -> bool:
    """Whether ``run`` evaluated its test folds with left-right TTA (``run.json``'s ``tta``): what predicting
    with its fold models does by default, so that they give their out-of-fold probabilities again."""
    return run.tta


def check_compatible(runs: Sequence[Run]) -> None:
    """Runs can be averaged when they predict the same task and classes; ``ValueError`` naming the odd one."""
    first = runs[0]
    for run in runs[1:]:
        if run.task != first.task or run.class_names != first.class_names:
            raise ValueError(f"{run.path}: a {run.task} run with classes {run.class_names} cannot be averaged with "
                             f"{first.path} ({first.task}, classes {first.class_names})")


def probability_columns(P: np.ndarray, task: str, class_names: Sequence[str]) -> dict:
    """Columns of probabilities (and predictions) as in ``oof.csv``: ``prob`` or ``prob_<class>``, ``pred``."""
    cols: dict = {}
    if task != "multilabel" and P.shape[1] == 2:
        cols["prob"] = P[:, 1]
    else:
        cols.update({f"prob_{name}": P[:, j] for j, name in enumerate(class_names)})
    if task != "multilabel":
        pred = P.argmax(axis=1)
        cols["pred"] = pred
        cols["pred_class"] = [class_names[i] for i in pred]
    return cols


@dataclass(frozen=True)
class Unreadable:
    """A file :func:`predict` could not read: ``index`` is its place in the files given, which
    :func:`find_inputs` puts in series order, so a slice whose header reads sits between its neighbours (a gap in
    its series); a file whose header does not read comes after every series, with no place in one."""

    file: Path
    id: str
    reason: str
    index: int


def unreadable_id(path: Path) -> str:
    """The image id of an unreadable DICOM file: its SOPInstanceUID where its header reads, else its name without
    the suffix (RSNA names each slice by its SOPInstanceUID, ``ID_<hex>.dcm``)."""
    try:
        return read_header(path)["SOPInstanceUID"] or path.stem
    except ValueError:
        return path.stem


def predict(runs: Sequence[Run | str | Path], files: Sequence[str | Path], tta: bool | None = None,
            folds: Sequence[str] | None = None, device: str = "auto", batch_size: int = 64, workers: int = 0,
            chunk: int = CHUNK, progress: bool = True, log=print,
            unreadable: list[Unreadable] | None = None, neighbours: Neighbours | None = None,
            smooth: int | None = None) -> pd.DataFrame:
    """Ensemble prediction of one or more runs on image or DICOM files: one row per file.

    Each run's fold models (or the ``folds`` named, e.g. ``["r0_f1"]``) are averaged, then the runs
    are averaged with equal weight. ``tta``: left-right TTA for every run; None (default): each run as it
    evaluated its test folds (:func:`run_tta`). Images are prepared ``chunk`` at a time (no disk cache), so a
    large test set never sits in memory whole. See the module docstring for the columns.
    An unreadable DICOM file raises ``ValueError`` naming it; where ``unreadable`` (a list) is given, each such
    file is appended to it as an :class:`Unreadable` instead and has no row
    (:func:`smallct.apply.submission.fill_unreadable` gives it one).

    ``neighbours`` (:func:`find_series`) links each file to the slices beside it in its series: a ``--context`` run
    reads them, and each run's probabilities are smoothed over ``smooth`` slices (None: as the run smoothed its
    reported out-of-fold figures, :attr:`~smallct.engine.run_models.Run.smooth`). An unreadable slice is a gap in its series. A chunk never splits
    a series. A sequence folder (``smallct.sequence``) among ``runs`` stands for its base run's fold models with
    its GRU over each series on top (:func:`smallct.engine.sequence.apply_sequence`; not smoothed again unless
    ``smooth`` says so).
    """
    runs, sequences = resolve_runs(runs)
    if not runs:
        raise ValueError("no run given (--run RUN_DIR)")
    check_compatible(runs)
    log(f"smallct.predict: {class_note(runs[0].task, runs[0].class_names)}")
    files = [Path(f) for f in files]
    dev = resolve_device(device)
    models, names, ttas = [], [], [run_tta(run) if tta is None else tta for run in runs]
    for run, with_tta in zip(runs, ttas):
        checkpoints = select_checkpoints(run, folds)
        names.append([c.name for c in checkpoints])
        said = "as the run was evaluated" if tta is None else "asked for"
        log(f"smallct.predict: {run.path}: {len(checkpoints)} {run.arch} fold models at {run.input['img_size']} px, "
            + (f"with left-right TTA ({said})" if with_tta else f"without TTA ({said})")
            + (f", the sequence model of {sequences[len(names) - 1]} over each series"
               if sequences[len(names) - 1] is not None else ""))
        models.append(load_models(run, checkpoints, dev))
    smooths = [(1 if q is not None else run.smooth) if smooth is None else smooth
               for run, q in zip(runs, sequences)]
    for run, n, q in zip(runs, smooths, sequences):
        if (run.context is not None or n > 1 or q is not None) and neighbours is None:
            what = ("its sequence model" if q is not None else "its --context input" if run.context else
                    f"smoothing over {n} slices")
            raise ValueError(f"{q or run.path}: {what} needs each slice's series: give a DICOM folder (its slices are "
                             "ordered and linked)" + (", or --smooth 1" if what.startswith("smoothing") else ""))
    P, failed = [], {}  # failed: index in files -> message naming the file (only where ``unreadable`` is given)
    bounds = chunk_bounds(len(files), chunk, neighbours)
    for start, stop in tqdm(bounds, desc=f"predicting {len(files)} images", unit="chunk",
                            disable=not progress or len(bounds) == 1, leave=False):
        part, prepared, per_run, bad = files[start:stop], {}, [], {}
        keys = [json.dumps({k: run.input.get(k) for k in ("img_size", "resize", "crop", "windows", "prepared_size")})
                for run in runs]
        for run, key in zip(runs, keys):
            if key not in prepared:  # runs that prepare images alike share them
                prepared[key] = model_inputs(part, run.input, workers, progress, cache=False,
                                             unreadable=None if unreadable is None else bad)
        failed.update({start + i: message for i, message in bad.items()})
        good = [i for i in range(len(part)) if i not in bad]
        if not good:
            continue
        links = None if neighbours is None else neighbours.take(start + np.asarray(good))  # unreadable: a gap
        for run, key, run_models, with_tta, n, q, fold_names in zip(runs, keys, models, ttas, smooths, sequences,
                                                                   names):
            x = MemorySource(prepared[key][good] if bad else prepared[key])
            if run.context is not None:
                x = run.context.source(x, links, str(run.path))
            if q is None:
                p = fold_probabilities(run, x, tta=with_tta, device=dev, batch_size=batch_size, progress=False,
                                       models=run_models).mean(0)
            else:
                p = sequence_probabilities(q, run, dict(zip(fold_names, run_models)), x, links, with_tta, dev)
            per_run.append(p if n == 1 else links.smooth(p, n))
        P.append(np.mean(per_run, axis=0))
    if failed:
        unreadable.extend(Unreadable(files[i], unreadable_id(files[i]), failed[i], i) for i in sorted(failed))
        if not P:
            raise ValueError(f"none of the {len(files)} files can be read ({failed[min(failed)]})")
    P = np.concatenate(P)
    ids, kept = image_ids(files), [i for i in range(len(files)) if i not in failed]
    return pd.DataFrame({"id": [ids[i] for i in kept], "file": [files[i].name for i in kept],
                         **probability_columns(P, runs[0].task, runs[0].class_names)})


def chunk_bounds(n: int, chunk: int, neighbours: Neighbours | None = None) -> list[tuple[int, int]]:
    """``(start, stop)`` of the runs of about ``chunk`` files that :func:`predict` prepares at a time; with
    ``neighbours``, a chunk ends only where a series (a chain of linked slices) does, so that no slice loses its
    neighbours to a chunk's edge."""
    cover = np.zeros(n + 2, dtype=np.int64)  # cover[b] > 0 after the sum: a cut before row b splits a series
    for c in ([] if neighbours is None else neighbours.chains()):
        cover[c.min() + 1] += 1
        cover[c.max() + 1] -= 1
    ends = np.flatnonzero(np.cumsum(cover)[1:n + 1] == 0) + 1
    bounds, start = [], 0
    for stop in ends.tolist():
        if stop - start >= chunk or stop == n:
            bounds.append((start, stop))
            start = stop
    return [b for b in bounds if b[1] > b[0]]


def resolve_runs(paths: Sequence[Run | str | Path]) -> tuple[list[Run], list[Path | None]]:
    """The runs named by ``paths`` (run folders, or sequence folders standing for their base run) and, for each,
    its sequence folder or None."""
    sequences = [sequence_folder(p) for p in paths]
    runs = [load_run(json.loads(RunFolder(q).sequence_json.read_text())["base_run"]) if q is not None
            else p if isinstance(p, Run) else load_run(p) for p, q in zip(paths, sequences)]
    return runs, sequences


def sequence_folder(path) -> Path | None:
    """``path`` when it is a sequence folder (``smallct.sequence``: its ``sequence.json``), else None;
    ``ValueError`` when its folds have not all finished (its GRUs would stand for only some folds)."""
    if isinstance(path, Run) or not RunFolder(Path(path)).sequence_json.is_file():
        return None
    if not RunFolder(Path(path)).results_json.is_file():
        raise ValueError(f"{path}: a sequence folder whose folds have not all finished (no results.json); run the "
                         "same smallct.sequence command again to finish it")
    return Path(path)


def sequence_probabilities(folder: Path, run: Run, models: dict[str, nn.Module], x: BatchSource,
                           links: Neighbours, tta: bool, device: torch.device) -> np.ndarray:
    """(N, 6) probabilities of a sequence folder on top of its base ``run``'s fold ``models`` ({fold name: model}),
    each fold model's outputs on ``x`` (and embeddings, where its features ask) fed to that fold's GRU."""
    features = json.loads(RunFolder(folder).sequence_json.read_text())["features"]
    probs, embeddings = {}, {}
    for name, model in models.items():
        probs[name], z = model_outputs(model, x, run.input["mean"], run.input["std"], tta, features != "logits",
                                       device, run.amp)
        if z is not None:
            embeddings[name] = z
    return apply_sequence(folder, probs, links, embeddings or None)
