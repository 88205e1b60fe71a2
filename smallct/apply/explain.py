"""Grad-CAM heat maps of a run's fold models (``python -m smallct.explain``).

Where did a model look when it decided? Grad-CAM (Selvaraju et al. 2017, computed by the
``grad-cam`` package, :mod:`pytorch_grad_cam`) weighs the feature maps of the last convolutional
stage by the gradient of one class score and shows the result over the input, side by side with it.

Two uses:

* without ``--data``: the run's own images that its out-of-fold predictions got wrong (or all with
  ``--all``), each explained by the fold model that did not see it in training, the very model whose
  out-of-fold prediction is in ``oof.csv``;
* with ``--data``: new images, explained by every fold model of the run, maps averaged (the
  ensemble that :mod:`smallct.apply.predict` applies).

The map is for one class per image: ``--class NAME``, or by default the predicted class
(multi-label runs: ``any`` when there is one, else the first label). Maps have the model input's
size (S, S), values 0..1 (each map scaled to its own maximum, as the package does). The layer looked at is
the architecture's last feature map (:func:`smallct.models.registry.feature_layer`) unless ``--layer`` names
another.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from smallct.progress import tqdm

from smallct.apply.predict import (fold_probabilities, image_ids, load_models, model_inputs, probability_columns,
                                   select_checkpoints)
from smallct.data.transforms import normalize
from smallct.engine.run_folder import fold_name
from smallct.engine.run_models import Run
from smallct.engine.train import resolve_device
from smallct.evaluation.plots import new_figure, save_figure, wrap
from smallct.models.registry import feature_layer, get_architecture

def grad_cam(model: nn.Module, x: torch.Tensor, mean, std, classes: Sequence[int],
             layer: str | nn.Module | None = None, batch_size: int = 16) -> np.ndarray:
    """Grad-CAM maps of uint8 images ``x`` (N, 3, S, S) for one class index per image: float32 (N, S, S) in 0..1.

    ``mean`` and ``std`` normalise as in training (:func:`smallct.data.transforms.normalize`). ``layer`` is a
    module or a module name of ``model``; default :func:`smallct.models.registry.feature_layer`. The model's
    device is used.
    """
    if len(classes) != len(x):
        raise ValueError(f"{len(classes)} target classes for {len(x)} images: give one per image")
    device = next(model.parameters()).device
    if not isinstance(layer, nn.Module):
        layer = feature_layer(model, x.shape[-1], layer)[1]
    maps = []
    with GradCAM(model=model, target_layers=[layer]) as cam:
        for i in range(0, len(x), batch_size):
            xb = normalize(x[i:i + batch_size].to(device), mean, std)
            targets = [ClassifierOutputTarget(int(c)) for c in classes[i:i + batch_size]]
            maps.append(cam(input_tensor=xb, targets=targets))
    model.eval()
    return np.concatenate(maps).astype(np.float32)


def _layer(run: Run, model: nn.Module, img_size: int, name: str | None, log) -> nn.Module:
    """The Grad-CAM layer of a run's model; says so when its map is too coarse to locate anything."""
    found, module, shape = get_architecture(run.arch).feature_layer(model, img_size, name)
    if shape[-1] < 4:
        hint = "" if name else "; name an earlier stage with --layer (layer3 of a ResNet) for a finer one"
        log(f"smallct.explain: {found} gives a {shape[-1]}x{shape[-1]} map at {img_size} px, too coarse to locate "
            f"much{hint}")
    return module


def class_index(run: Run, name: str) -> int:
    """Index of class ``name`` of ``run`` (a class name, else a number as index); ``ValueError`` otherwise."""
    if name in run.class_names:
        return run.class_names.index(name)
    if name.isdigit() and int(name) < len(run.class_names):
        return int(name)
    raise ValueError(f"--class {name}: not a class of {run.path} ({', '.join(run.class_names)})")


def _quiet(*_args) -> None:
    pass


def _default_class(run: Run) -> int | None:
    """None: the predicted class of each image; for multi-label runs ``any`` (or the first label)."""
    if run.task != "multilabel":
        return None
    return run.class_names.index("any") if "any" in run.class_names else 0


def _oof_probs(oof: pd.DataFrame, run: Run) -> np.ndarray:
    if "prob" in oof.columns:
        return np.stack([1 - oof["prob"].to_numpy(), oof["prob"].to_numpy()], axis=1)
    return oof[[f"prob_{n}" for n in run.class_names]].to_numpy()


def _targets(run: Run, P: np.ndarray, target: str | None) -> np.ndarray:
    fixed = class_index(run, target) if target is not None else _default_class(run)
    return np.full(len(P), fixed) if fixed is not None else P.argmax(axis=1)


def _wrong(run: Run, P: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Misclassified: predicted class != label; multi-label: wrong at 0.5 on the target label."""
    if run.task == "multilabel":
        rows = np.arange(len(P))
        return (P[rows, classes] >= 0.5) != labels[rows, classes].astype(bool)
    return P.argmax(axis=1) != labels


def explain_oof(run: Run, everything: bool = False, ids: Sequence[str] | None = None, target: str | None = None,
                repeat: int = 0, limit: int | None = 100, layer: str | None = None, device: str = "auto",
                progress: bool = True, log=print) -> tuple[pd.DataFrame, torch.Tensor, np.ndarray]:
    """Grad-CAM of the run's own images, each by the fold model that held it out (repeat ``repeat``).

    By default the images misclassified out of fold (the first ``limit`` of them); ``everything``
    takes all, ``ids`` those named. Returns ``(table, images (N, 3, S, S) uint8, maps (N, S, S))``;
    the table has id, file, label, the probabilities, pred, target_class, fold and model.
    """
    dataset = run.dataset(log=log)
    oof = run.oof()
    oof = oof[oof["repeat"] == repeat].reset_index(drop=True)
    if oof.empty:
        raise ValueError(f"{run.path}: no out-of-fold predictions of repeat {repeat}")
    index = {i: k for k, i in enumerate(dataset.ids)}
    rows = np.array([index[i] for i in oof["id"]])
    P = _oof_probs(oof, run)
    classes = _targets(run, P, target)
    if ids:
        unknown = [i for i in ids if i not in set(oof["id"])]
        if unknown:
            raise ValueError(f"{run.path}: no images with ids {', '.join(unknown[:5])} in oof.csv")
        keep = oof["id"].isin(ids).to_numpy()
    elif everything:
        keep = np.ones(len(oof), bool)
    else:
        keep = _wrong(run, P, dataset.labels[rows], classes)
    chosen = np.flatnonzero(keep)
    if limit and len(chosen) > limit:
        log(f"smallct.explain: {len(chosen)} images chosen; drawing the first {limit} (--limit 0 for all)")
        chosen = chosen[:limit]
    table = oof.iloc[chosen].reset_index(drop=True).drop(columns="file", errors="ignore")  # a name; here the path
    table.insert(1, "file", [str(dataset.files[rows[k]]) for k in chosen])
    table["target_class"] = [run.class_names[c] for c in classes[chosen]]
    spec = run.input
    size = int(spec["img_size"])
    images = torch.empty((len(chosen), 3, size, size), dtype=torch.uint8)
    maps = np.zeros((len(chosen), size, size), np.float32)
    if not len(chosen):
        return table, images, maps
    # read from the run's own cache (one batch source for the whole set), never a cache of the chosen few; a 2.5D
    # run's model reads each slice with its neighbours, and its map is drawn over the slice itself
    slices, inputs = run.images(dataset, progress=progress, log=log)
    images[:] = slices.read(rows[chosen])
    x = inputs.read(rows[chosen])
    table["model"] = [fold_name(repeat, fold) for fold in table["fold"]]
    dev = resolve_device(device)
    for k, name in enumerate(tqdm(sorted(table["model"].unique()), desc="Grad-CAM per fold", unit="model",
                                  disable=not progress, leave=False)):
        at = np.flatnonzero(table["model"].to_numpy() == name)
        model = load_models(run, [run.checkpoint(name)], dev)[0]
        module = _layer(run, model, size, layer, log if k == 0 else _quiet)
        maps[at] = grad_cam(model, x[at], spec["mean"], spec["std"], classes[chosen][at], module)
    return table, images, maps


def explain_images(run: Run, files: Sequence[str | Path], target: str | None = None, layer: str | None = None,
                   device: str = "auto", progress: bool = True,
                   log=print) -> tuple[pd.DataFrame, torch.Tensor, np.ndarray]:
    """Grad-CAM of new images by every fold model of ``run``, maps averaged over the models.

    The class is ``target`` or the ensemble's predicted class. Returns ``(table, images, maps)`` as
    :func:`explain_oof`, the table with id, file, the ensemble's probabilities, target_class. The probabilities
    (and so the predicted class) follow the run's TTA, as ``smallct predict`` does
    (:func:`smallct.apply.predict.run_tta`: the left-right mirror average where the run evaluated its test folds
    with it); the maps are of the images as given, never mirrored.
    """
    files = [Path(f) for f in files]
    spec = run.input
    if run.context is not None:
        raise ValueError(f"{run.path}: a --context {run.context.k} run reads each slice with its neighbours, which new "
                         "files do not give here; explain the run's own slices (smallct explain RUN), or use "
                         "smallct.predict on a DICOM folder")
    images = model_inputs(files, spec, progress=progress, cache=False)
    dev = resolve_device(device)
    models = load_models(run, select_checkpoints(run), dev)
    P = fold_probabilities(run, images, device=dev, progress=False, models=models).mean(0)
    classes = _targets(run, P, target)
    maps = np.zeros((len(files), *images.shape[-2:]), np.float32)
    for k, model in enumerate(tqdm(models, desc="Grad-CAM per fold", unit="model", disable=not progress,
                                   leave=False)):
        module = _layer(run, model, images.shape[-1], layer, log if k == 0 else _quiet)
        maps += grad_cam(model, images, spec["mean"], spec["std"], classes, module) / len(models)
    table = pd.DataFrame({"id": image_ids(files), "file": [str(f) for f in files],
                          **probability_columns(P, run.task, run.class_names),
                          "target_class": [run.class_names[c] for c in classes],
                          "model": f"mean of {len(models)} fold models"})
    return table, images, maps


CAM_WEIGHT = 0.4  # share of the heat map's colour in the overlay (the input's: 0.6, as the grad-cam package)
CONSTANT_WHY = "a 1x1 feature map at this input size, or no positive evidence for the class"
CONSTANT_FIX = "an earlier layer (--layer layer3 of a ResNet) or a larger --img-size gives a map that varies"


def is_constant(cam: np.ndarray) -> bool:
    """Whether a map (H, W) is flat: upsampled from a 1x1 feature map, or all zero. Scaled to 0..1 it would
    be drawn as one colour (all blue), which looks like an answer and is none."""
    return float(np.ptp(cam)) < 1e-3


def cam_figure(image: np.ndarray, cam: np.ndarray, title: str = "", heat_title: str = "Grad-CAM") -> Figure:
    """The input (H, W, 3) uint8 beside its heat map (H, W) in 0..1 over it, with a colour bar; returns the
    figure (:func:`smallct.evaluation.plots.save_figure` writes it).

    A constant map (:func:`is_constant`) is not drawn: its panel holds a note saying why instead."""
    fig = new_figure((7.4, 3.9))
    ax, bx = fig.subplots(1, 2)
    ax.imshow(image, interpolation="nearest")
    ax.set_title("input", fontsize=9)
    bx.set_title(wrap(heat_title, 3.0, 9), fontsize=9)
    for a in (ax, bx):
        a.axis("off")
    if is_constant(cam):
        note = f"No heat map: the Grad-CAM map is constant, so it points nowhere ({CONSTANT_WHY}); {CONSTANT_FIX}."
        bx.text(0.5, 0.5, wrap(note, 2.8, 8), ha="center", va="center", fontsize=8, transform=bx.transAxes)
    else:
        jet = colormaps["jet"]
        overlay = (1 - CAM_WEIGHT) * image.astype(np.float32) / 255 + CAM_WEIGHT * jet(cam)[..., :3]
        bx.imshow(overlay.clip(0, 1), interpolation="nearest")
        bar = fig.colorbar(ScalarMappable(Normalize(0, 1), jet), ax=bx, shrink=0.85)
        bar.set_label("Grad-CAM (1: the map's maximum)", fontsize=8)
    fig.suptitle(wrap(title, 7.0, 10), fontsize=10)
    return fig


def _describe(row: pd.Series, run: Run) -> tuple[str, str]:
    """The figure's title (id, true label(s), predicted class) and the heat map's (class, probability, model)."""
    parts = [f"id {row['id']}"]
    if "label" in row:
        parts.append(f"true: {run.class_names[int(row['label'])]}")
    elif all(n in row for n in run.class_names):
        parts.append("true: " + ("|".join(n for n in run.class_names if row[n]) or "none"))
    if "pred" in row:
        parts.append(f"predicted: {run.class_names[int(row['pred'])]}")
    prob = row.get("prob", row.get(f"prob_{row['target_class']}"))
    if "prob" in row and run.class_names.index(row["target_class"]) == 0:
        prob = 1 - prob
    return ", ".join(parts), f"Grad-CAM for {row['target_class']} (p = {prob:.2f}), {row['model']}"


def write_explanations(run: Run, table: pd.DataFrame, images: torch.Tensor, maps: np.ndarray, out: str | Path,
                       progress: bool = True, log=print) -> pd.DataFrame:
    """One side-by-side PNG per image (:func:`cam_figure`), ``cams.npz`` (ids, maps float16) and ``explain.csv``
    (the table with ``figure`` and ``map_constant``: no heat map drawn) in ``out``; says how many maps are
    constant."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures, constant = [], []
    for k, row in tqdm(table.iterrows(), total=len(table), desc="figures", unit="img", disable=not progress,
                       leave=False):
        name = re.sub(r"[^\w.-]+", "_", f"{row['id']}_{row['target_class']}") + ".png"
        title, heat_title = _describe(row, run)
        save_figure(cam_figure(images[k].permute(1, 2, 0).numpy(), maps[k], title, heat_title), out / name)
        figures.append(name)
        constant.append(is_constant(maps[k]))
    if any(constant):
        log(f"smallct.explain: {sum(constant)} of {len(constant)} maps are constant ({CONSTANT_WHY}): their "
            f"figures show the input and a note, no heat map; {CONSTANT_FIX}")
    table = table.assign(figure=figures, map_constant=constant)
    table.to_csv(out / "explain.csv", index=False)
    np.savez_compressed(out / "cams.npz", ids=table["id"].to_numpy(dtype=str), cams=maps.astype(np.float16))
    return table
