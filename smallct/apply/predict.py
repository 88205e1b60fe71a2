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
The class names are run.json's. For a multi-label RSNA run, :func:`rsna_submission` gives the
competition's ``ID,Label`` format.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from smallct.progress import tqdm

from smallct.data.cache import load_images
from smallct.data.source import BatchSource
from smallct.datasets.classes import class_note
from smallct.datasets.folder import image_ids
from smallct.engine.run_folder import Checkpoint
from smallct.engine.run_models import Run, load_fold_model, load_run
from smallct.engine.train import predict_proba, resolve_device
from smallct.io.dicom import to_rgb
from smallct.io.images import IMAGE_SUFFIXES, preprocess
from smallct.io.series import order_dicom_files
from smallct.parallel import parallel_map

DICOM_SUFFIXES = (".dcm", ".dicom")
CHUNK = 2048  # images prepared and predicted at a time (2048 x 3 x 256 x 256 uint8 = 400 MB)


def find_inputs(paths: Iterable[str | Path], workers: int = 0, progress: bool = False, log=print) -> list[Path]:
    """Image and DICOM files named by ``paths``: files as given; folders searched recursively, images sorted by
    name and DICOM slices in series order, as ``smallct.prepare rsna`` orders them
    (:func:`smallct.io.series.order_dicom_files`: along the slice normal, never by file name). A series with a
    gap, duplicate positions, mixed orientations or missing tags is logged in one line. ``workers`` processes
    read the DICOM headers (0: every core)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + DICOM_SUFFIXES)
            if not found:
                raise ValueError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES + DICOM_SUFFIXES)}) in this folder")
            slices, problems = order_dicom_files([p for p in found if p.suffix.lower() in DICOM_SUFFIXES],
                                                 workers, progress)
            in_order = iter(slices)  # the DICOM files take the DICOM files' places, in series order
            files += [next(in_order) if p.suffix.lower() in DICOM_SUFFIXES else p for p in found]
            for line in problems:
                log(f"{path}: {line}")
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"{path}: no such file or folder")
    if not files:
        raise ValueError("no input images given")
    return files


def _dicom_chw(args) -> np.ndarray:
    """One DICOM slice as :func:`model_inputs` makes it, (3, S, S) uint8 (a top-level function: it is pickled)."""
    path, windows, prepared_size, size, resize, crop = args
    return preprocess(to_rgb(path, windows, size=prepared_size), size, resize, crop).transpose(2, 0, 1)


def model_inputs(files: Sequence[Path], spec: dict, workers: int = 0, progress: bool = True,
                   cache: bool = True) -> torch.Tensor:
    """Images as the run's model input, uint8 (N, 3, S, S), prepared exactly as its training images.

    ``spec`` is ``run.json``'s ``input`` (:attr:`smallct.engine.run_models.Run.input`): ``img_size``,
    ``resize``, ``crop``, ``windows`` and ``prepared_size``. PNG and other image files go through
    :func:`smallct.io.images.preprocess` (through the decoded-image cache unless ``cache`` is False). A
    DICOM file is made what ``smallct.prepare rsna`` made of the training slices,
    :func:`smallct.io.dicom.to_rgb` with the run's CT windows at ``prepared_size`` px (body crop on,
    that command's default), then goes through the same ``preprocess``. ``workers`` processes decode
    (0: every core).
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
        jobs = [(files[i], windows, spec.get("prepared_size"), size, resize, crop) for i in dicom]
        arrays = parallel_map(_dicom_chw, jobs, workers, progress, desc="reading DICOM", unit="file", leave=False)
        for i, arr in zip(dicom, arrays):
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


def predict(runs: Sequence[Run | str | Path], files: Sequence[str | Path], tta: bool | None = None,
            folds: Sequence[str] | None = None, device: str = "auto", batch_size: int = 64, workers: int = 0,
            chunk: int = CHUNK, progress: bool = True, log=print) -> pd.DataFrame:
    """Ensemble prediction of one or more runs on image or DICOM files: one row per file.

    Each run's fold models (or the ``folds`` named, e.g. ``["r0_f1"]``) are averaged, then the runs
    are averaged with equal weight. ``tta``: left-right TTA for every run; None (default): each run as it
    evaluated its test folds (:func:`run_tta`). Images are prepared ``chunk`` at a time (no disk cache), so a
    large test set never sits in memory whole. See the module docstring for the columns.
    """
    runs = [r if isinstance(r, Run) else load_run(r) for r in runs]
    if not runs:
        raise ValueError("no run given (--run RUN_DIR)")
    check_compatible(runs)
    log(f"smallct.predict: {class_note(runs[0].task, runs[0].class_names)}")
    files = [Path(f) for f in files]
    dev = resolve_device(device)
    models, ttas = [], [run_tta(run) if tta is None else tta for run in runs]
    for run, with_tta in zip(runs, ttas):
        checkpoints = select_checkpoints(run, folds)
        said = "as the run was evaluated" if tta is None else "asked for"
        log(f"smallct.predict: {run.path}: {len(checkpoints)} {run.arch} fold models at {run.input['img_size']} px, "
            + (f"with left-right TTA ({said})" if with_tta else f"without TTA ({said})"))
        models.append(load_models(run, checkpoints, dev))
    P = []
    for start in tqdm(range(0, len(files), chunk), desc=f"predicting {len(files)} images", unit="chunk",
                      disable=not progress or len(files) <= chunk, leave=False):
        part, prepared, per_run = files[start:start + chunk], {}, []
        for run, run_models, with_tta in zip(runs, models, ttas):
            key = json.dumps({k: run.input.get(k) for k in ("img_size", "resize", "crop", "windows", "prepared_size")})
            if key not in prepared:  # runs that prepare images alike share them
                prepared[key] = model_inputs(part, run.input, workers, progress, cache=False)
            per_run.append(fold_probabilities(run, prepared[key], tta=with_tta, device=dev, batch_size=batch_size,
                                              progress=False, models=run_models).mean(0))
        P.append(np.mean(per_run, axis=0))
    P = np.concatenate(P)
    return pd.DataFrame({"id": image_ids(files), "file": [f.name for f in files],
                         **probability_columns(P, runs[0].task, runs[0].class_names)})


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
