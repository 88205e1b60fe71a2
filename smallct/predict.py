"""Apply the fold models of cross-validation runs to new images: ``python -m smallct.predict``.

Every fold checkpoint of a :mod:`smallct.cv` run is loaded and applied; their probabilities are
averaged (an ensemble), optionally with test-time augmentation (the left-right mirror, as in
training's evaluation). Several runs (``--run A --run B``, for example resnext50 and seresnet50)
are averaged with equal weight per run, each run's folds first. Images are prepared exactly as the
run's training images were (:func:`prepare_inputs`): the size, resize mode, crop, CT windows,
mean and std are read from ``run.json``, never typed again.

The table has one row per image: ``id`` (the file name without suffix), ``file``, the
probabilities in the columns of ``oof.csv`` (``prob`` for a binary task, ``prob_<class>``
otherwise), ``pred`` (class index) and ``pred_class`` (its name) for single-label tasks. For a
multi-label RSNA run, :func:`rsna_submission` gives the competition's ``ID,Label`` format.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from smallct.cache import default_workers, load_images
from smallct.ingest import IMAGE_SUFFIXES, prepare
from smallct.run import Checkpoint, Run, load_fold_model, load_run
from smallct.train import predict_proba, resolve_device

DICOM_SUFFIXES = (".dcm", ".dicom")
CHUNK = 2048  # images prepared and predicted at a time (2048 x 3 x 256 x 256 uint8 = 400 MB)


def find_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Image and DICOM files named by ``paths``: files as given, folders searched recursively (sorted)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + DICOM_SUFFIXES)
            if not found:
                raise ValueError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES + DICOM_SUFFIXES)}) in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"{path}: no such file or folder")
    if not files:
        raise ValueError("no input images given")
    return files


def image_ids(files: Sequence[Path]) -> list[str]:
    """The id of each file: its name without suffix, or its path without suffix where names repeat."""
    count = Counter(f.stem for f in files)
    return [str(f.with_suffix("")) if count[f.stem] > 1 else f.stem for f in files]


def _dicom_chw(args) -> np.ndarray:
    """One DICOM slice as :func:`prepare_inputs` makes it, (3, S, S) uint8 (a top-level function: it is pickled)."""
    from smallct.dicom import to_rgb

    path, windows, prepared_size, size, resize, crop = args
    return prepare(to_rgb(path, windows, size=prepared_size), size, resize, crop).transpose(2, 0, 1)


def prepare_inputs(files: Sequence[Path], spec: dict, workers: int = 0, progress: bool = True,
                   cache: bool = True) -> torch.Tensor:
    """Images as the run's model input, uint8 (N, 3, S, S), prepared exactly as its training images.

    ``spec`` is ``run.json``'s ``input`` (:attr:`smallct.run.Run.input`): ``img_size``, ``resize``,
    ``crop``, ``windows`` and ``prepared_size``. PNG and other image files go through
    :func:`smallct.ingest.prepare` (through the decoded-image cache unless ``cache`` is False). A
    DICOM file is made what ``smallct.prepare rsna`` made of the training slices,
    :func:`smallct.dicom.to_rgb` with the run's CT windows at ``prepared_size`` px (body crop on,
    that command's default), then goes through the same ``prepare``. ``workers`` processes decode
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
        workers = min(workers or default_workers(), len(jobs))
        parallel = workers > 1 and len(jobs) >= 16
        with ProcessPoolExecutor(workers) if parallel else nullcontext() as pool:
            arrays = (pool.map(_dicom_chw, jobs, chunksize=max(1, len(jobs) // (workers * 8))) if parallel
                      else map(_dicom_chw, jobs))
            for i, arr in zip(dicom, tqdm(arrays, total=len(jobs), desc="reading DICOM", unit="file",
                                          disable=not progress, leave=False)):
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


def fold_probabilities(run: Run, x: torch.Tensor, checkpoints: Sequence[Checkpoint] | None = None,
                       tta: bool = False, device: torch.device | None = None, batch_size: int = 64,
                       progress: bool = True, models: Sequence[nn.Module] | None = None) -> np.ndarray:
    """Probabilities of each fold model of ``run`` on prepared images ``x``: (K, N, C).

    ``x`` is uint8 (N, 3, S, S) from :func:`prepare_inputs` with ``run.input``; the run's mean and
    std normalise it. With ``tta`` each model averages the image and its left-right mirror.
    ``models`` (from :func:`load_models`) saves loading the checkpoints again.
    """
    device = device or torch.device("cpu")
    if models is None:
        models = load_models(run, select_checkpoints(run) if checkpoints is None else checkpoints, device)
    mean, std = run.input["mean"], run.input["std"]
    return np.stack([predict_proba(m, x, mean, std, run.task, tta, batch_size, device, amp=run.amp)
                     for m in tqdm(models, desc=f"{run.arch} fold models", unit="model", disable=not progress,
                                   leave=False)])


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


def predict(runs: Sequence[Run | str | Path], files: Sequence[str | Path], tta: bool = False,
            folds: Sequence[str] | None = None, device: str = "auto", batch_size: int = 64, workers: int = 0,
            chunk: int = CHUNK, progress: bool = True, log=print) -> pd.DataFrame:
    """Ensemble prediction of one or more runs on image or DICOM files: one row per file.

    Each run's fold models (or the ``folds`` named, e.g. ``["r0_f1"]``) are averaged, then the runs
    are averaged with equal weight. Images are prepared ``chunk`` at a time (no disk cache), so a
    large test set never sits in memory whole. See the module docstring for the columns.
    """
    runs = [r if isinstance(r, Run) else load_run(r) for r in runs]
    if not runs:
        raise ValueError("no run given (--run RUN_DIR)")
    check_compatible(runs)
    files = [Path(f) for f in files]
    dev = resolve_device(device)
    models = []
    for run in runs:
        checkpoints = select_checkpoints(run, folds)
        log(f"smallct.predict: {run.path}: {len(checkpoints)} {run.arch} fold models at {run.input['img_size']} px"
            + (" with left-right TTA" if tta else ""))
        models.append(load_models(run, checkpoints, dev))
    P = []
    for start in tqdm(range(0, len(files), chunk), desc=f"predicting {len(files)} images", unit="chunk",
                      disable=not progress or len(files) <= chunk, leave=False):
        part, prepared, per_run = files[start:start + chunk], {}, []
        for run, run_models in zip(runs, models):
            key = json.dumps({k: run.input.get(k) for k in ("img_size", "resize", "crop", "windows", "prepared_size")})
            if key not in prepared:  # runs that prepare images alike share them
                prepared[key] = prepare_inputs(part, run.input, workers, progress, cache=False)
            per_run.append(fold_probabilities(run, prepared[key], tta=tta, device=dev, batch_size=batch_size,
                                              progress=False, models=run_models).mean(0))
        P.append(np.mean(per_run, axis=0))
    P = np.concatenate(P)
    return pd.DataFrame({"id": image_ids(files), "file": [str(f) for f in files],
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m smallct.predict",
        description="Predict new images with the fold models of one or more smallct.cv runs (their average). "
                    "Image size, windows and normalisation are read from each run.")
    p.add_argument("--run", action="append", required=True, type=Path, metavar="RUN_DIR",
                   help="a smallct.cv run folder; repeat to average several runs (e.g. two architectures)")
    p.add_argument("--data", nargs="+", action="extend", required=True, type=Path, metavar="PATH",
                   help="image or DICOM files, or folders (searched recursively)")
    p.add_argument("--out", type=Path, default=Path("predictions.csv"),
                   help="CSV with one row per image (default predictions.csv)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=False,
                   help="also average each model over the left-right mirror of every image (default off)")
    p.add_argument("--fold", action="append", metavar="NAME",
                   help="use only this fold model, e.g. r0_f1 (repeatable; default every fold model)")
    p.add_argument("--submission", type=Path, metavar="CSV",
                   help="multi-label RSNA runs: also write the competition format ID_<image>_<subtype>,Label")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (0: every core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        runs = [load_run(r) for r in args.run]
        if args.submission is not None and runs[0].task != "multilabel":
            raise ValueError(f"{runs[0].path}: --submission needs a multi-label RSNA run, this one is {runs[0].task}")
        table = predict(runs, find_inputs(args.data), tta=args.tta, folds=args.fold, device=args.device,
                        batch_size=args.batch_size, workers=args.workers, progress=not args.no_progress)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
        print(f"wrote {len(table)} predictions to {args.out}")
        if args.submission is not None:
            sub = rsna_submission(table, runs[0].class_names)
            args.submission.parent.mkdir(parents=True, exist_ok=True)
            sub.to_csv(args.submission, index=False)
            print(f"wrote {len(sub)} submission rows to {args.submission}")
    except (ValueError, FileNotFoundError) as err:
        print(f"smallct.predict: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
