"""Helpers of the tutorials and labs in ``notebooks/``: their settings, their data, their figures and
the checks that tell a student whether an exercise is answered.

Everything a notebook needs beyond the library's own API sits here, so that no logic lives only in
a notebook:

* **Settings** (:func:`quick`, :func:`choose`): ``SMALLCT_QUICK=1`` picks the small settings every
  notebook runs with in CI (a minute or less on a 2-core CPU); without it, the full settings.
* **Data** (:func:`data_dir`, :func:`rsna_dicom`): the real Kaggle Head CT set when
  ``SMALLCT_HEAD_CT`` names its folder, else the synthetic phantom set written once into
  :func:`smallct.io.files.cache_dir`; a small synthetic RSNA-format DICOM set.
* **Figures** (:func:`montage`): a grid of images as a matplotlib ``Figure`` (no pyplot, so the
  library's ``Agg`` backend does not hide it; the last expression of a cell displays it).
* **Checks** (:func:`check`): ``check(name, answer, **given)`` compares an answer with what the
  library computes from ``given`` and prints ``correct`` or ``not yet: <hint>``. An unanswered
  exercise (``answer is None``) prints ``not yet`` and its hint. With ``SMALLCT_LABCHECK_STRICT=1``
  (set by the tests) a given but wrong answer raises ``AssertionError``, so a tutorial whose answer
  no longer matches the library fails CI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from optuna.trial import TrialState
from PIL import Image

from smallct.datasets.folder import phantom_dataset, read_labelled_folder
from smallct.datasets.synthetic_dicom import write_synthetic_rsna
from smallct.engine.run_models import load_run
from smallct.evaluation.multilabel import weighted_log_loss
from smallct.io.files import cache_dir
from smallct.io.images import crop_to_content
from smallct.io.windows import hu_to_rgb, window
from smallct.models.weights import resolve_weights

QUICK_ENV = "SMALLCT_QUICK"
HEAD_CT_ENV = "SMALLCT_HEAD_CT"
STRICT_ENV = "SMALLCT_LABCHECK_STRICT"
_TRUE = ("1", "true", "yes", "on")


# --- settings --------------------------------------------------------------------------------------

def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def quick() -> bool:
    """True when ``SMALLCT_QUICK`` is set to 1 (true, yes, on): the notebooks' small settings."""
    return _flag(QUICK_ENV)


def choose(quick_value: Any, full_value: Any) -> Any:
    """``quick_value`` in quick mode (``SMALLCT_QUICK=1``), else ``full_value``."""
    return quick_value if quick() else full_value


# --- data ------------------------------------------------------------------------------------------

def out_dir(name: str) -> Path:
    """Where a notebook writes its runs: ``runs/quick/<name>`` or ``runs/full/<name>`` under the working
    folder (quick and full runs never share a folder, so one never resumes the other)."""
    folder = Path("runs") / ("quick" if quick() else "full") / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pretrained_or_none(arch: str, log=print) -> str:
    """``"imagenet"`` when ImageNet weights of ``arch`` are on this machine (or downloaded now, on first use), else
    ``"none"``, saying why.

    The library itself never falls back to random weights; a tutorial may, as long as it says so.
    """
    try:
        resolve_weights(arch, "imagenet")
    except ValueError as err:
        log(f"weights: {err}\n-> this notebook trains {arch} from random initialisation (weights='none'); "
            "its figures are then not those of transfer learning")
        return "none"
    log(f"weights: ImageNet weights of {arch} ready")
    return "imagenet"


def head_ct_given() -> bool:
    """True when ``SMALLCT_HEAD_CT`` names a folder: the notebooks then use the real Head CT set."""
    return bool(os.environ.get(HEAD_CT_ENV, "").strip())


def data_dir(n: int | None = None, seed: int = 0, log=print) -> Path:
    """The image folder the notebooks work on (``000.png``... and ``labels.csv``).

    The folder named by ``SMALLCT_HEAD_CT`` (the real Kaggle Head CT set, used whole); else the
    synthetic phantom set of ``n`` images (default 32 in quick mode, 200 otherwise) that
    :func:`smallct.datasets.folder.phantom_dataset` writes once into the cache folder. Says which one it is.
    ``ValueError`` when ``SMALLCT_HEAD_CT`` names no folder.
    """
    if head_ct_given():
        folder = Path(os.environ[HEAD_CT_ENV]).expanduser()
        if not folder.is_dir():
            raise ValueError(f"{HEAD_CT_ENV}={folder}: no such folder (the folder holding 000.png..199.png "
                             "and labels.csv)")
        log(f"data: the Head CT set in {folder} ({HEAD_CT_ENV})")
        return folder
    n = n if n is not None else choose(32, 200)
    dataset = phantom_dataset(n, seed, log=lambda *_: None)
    folder = Path(dataset.files[0]).parent
    log(f"data: SYNTHETIC phantom set of {n} images in {folder}; set {HEAD_CT_ENV}=DIR for the real Head CT set")
    return folder


def rsna_dicom(n_patients: int = 6, slices_per_series: int = 5, size: int = 64, seed: int = 0) -> dict:
    """A small synthetic RSNA-format DICOM set (``labels.csv`` in ``stage_2_train.csv`` form), written
    into the cache folder by :func:`smallct.datasets.synthetic_dicom.write_synthetic_rsna`; returns its dict
    (``root``, ``labels``, ``files``, ``corrupt``, ``quirk``, ``formats``, ``series``)."""
    folder = cache_dir() / f"synthetic-rsna-p{n_patients}-s{slices_per_series}-{size}px-seed{seed}"
    return write_synthetic_rsna(folder, n_patients, slices_per_series, seed, size)


# --- figures ---------------------------------------------------------------------------------------

def montage(images, titles=None, ncols: int = 4, size: float = 2.2, cmap: str | None = None,
            suptitle: str = ""):
    """A grid of images as a matplotlib ``Figure`` (display it as a cell's last expression).

    ``images``: arrays (H, W), (H, W, 3) uint8 or (3, H, W) tensors; ``titles``: one string per image.
    """
    images = [np.asarray(im.permute(1, 2, 0)) if hasattr(im, "permute") and im.ndim == 3 else np.asarray(im)
              for im in images]
    if not images:
        raise ValueError("montage: no images")
    ncols = max(1, min(ncols, len(images)))
    nrows = -(-len(images) // ncols)
    fig = Figure(figsize=(size * ncols, size * nrows + (0.3 if suptitle else 0)))
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for k, ax in enumerate(axes):
        ax.axis("off")
        if k < len(images):
            ax.imshow(images[k], cmap=cmap or ("gray" if images[k].ndim == 2 else None), interpolation="nearest")
            if titles is not None:
                ax.set_title(str(titles[k]), fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig


# --- checks ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Exercise:
    """A lab exercise: how to compute the expected answer from what the check is given, and a hint."""

    name: str
    expected: Callable[..., Any]
    hint: str
    rtol: float = 1e-6
    atol: float = 1e-9


EXERCISES: dict[str, Exercise] = {}


def exercise(name: str, hint: str, rtol: float = 1e-6, atol: float = 1e-9):
    """Register the function computing the expected answer of exercise ``name``."""
    def deco(fn):
        EXERCISES[name] = Exercise(name, fn, hint, rtol, atol)
        return fn
    return deco


def _plain(value: Any) -> Any:
    """Numbers, arrays, dicts and strings from numpy/pandas/torch values, for comparison."""
    if hasattr(value, "to_dict") and not isinstance(value, dict):  # pandas Series
        value = value.to_dict()
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and value and not isinstance(value[0], str):
        return np.asarray(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def same(answer: Any, expected: Any, rtol: float = 1e-6, atol: float = 1e-9) -> bool:
    """True when ``answer`` equals ``expected``: numbers and arrays within tolerance, shapes equal,
    dicts key by key (keys compared as text), everything else with ``==``."""
    a, e = _plain(answer), _plain(expected)
    if isinstance(e, dict):
        return isinstance(a, dict) and set(a) == set(e) and all(same(a[k], e[k], rtol, atol) for k in e)
    if isinstance(e, bool) or isinstance(a, bool):
        return isinstance(a, (bool, np.bool_)) and bool(a) == bool(e)
    if isinstance(e, (int, float, np.ndarray)):
        if isinstance(a, (str, bytes, dict)) or a is None:
            return False
        try:
            a_arr, e_arr = np.asarray(a, dtype=float), np.asarray(e, dtype=float)
        except (TypeError, ValueError):
            return False
        return a_arr.shape == e_arr.shape and bool(np.allclose(a_arr, e_arr, rtol=rtol, atol=atol, equal_nan=True))
    return a == e


class Verdict:
    """What :func:`check` returns: true when correct. Shows nothing in a notebook (the verdict is printed)."""

    def __init__(self, name: str, correct: bool):
        self.name, self.correct = name, correct

    def __bool__(self) -> bool:
        return self.correct

    def __repr__(self) -> str:
        return f"Verdict({self.name!r}, correct={self.correct})"

    def _ipython_display_(self) -> None:
        pass


def check(name: str, answer: Any, **given) -> Verdict:
    """Check the answer of exercise ``name`` against the library's own figure; print the verdict.

    ``given`` holds what the expected answer is computed from (a folder, a run, an array). Returns
    a :class:`Verdict`, true when correct. ``answer is None`` means not answered yet. With
    ``SMALLCT_LABCHECK_STRICT=1`` a wrong answer raises ``AssertionError``.
    """
    if name not in EXERCISES:
        raise ValueError(f"exercise {name!r}: unknown; known: {', '.join(sorted(EXERCISES))}")
    ex = EXERCISES[name]
    if answer is None:
        print(f"not yet ({name}): {ex.hint}")
        return Verdict(name, False)
    expected = ex.expected(**given)
    if same(answer, expected, ex.rtol, ex.atol):
        print(f"correct ({name})")
        return Verdict(name, True)
    plain = _plain(answer)
    shown = answer if np.ndim(plain) == 0 or isinstance(plain, dict) else f"an array {np.shape(answer)}"
    print(f"not yet ({name}): {shown!r} is not the expected answer. Hint: {ex.hint}")
    if _flag(STRICT_ENV):
        raise AssertionError(f"exercise {name}: answer {shown!r}, expected {_plain(expected)!r}")
    return Verdict(name, False)


# --- the exercises of the notebooks, in notebook order ----------------------------------------------

@exercise("rgba_count", "count the rows of the describe() table whose mode is 'RGBA' (an int)")
def _rgba_count(folder):
    count = 0
    for f in read_labelled_folder(folder).files:
        with Image.open(f) as im:
            count += im.mode == "RGBA"
    return count


@exercise("median_width_by_class", "group the describe() table by 'label' and take the median of 'width' "
                                   "(a pandas Series or a dict {class: median})")
def _median_width(folder):
    dataset = read_labelled_folder(folder)  # labels as describe() shows them
    widths: dict[str, list[int]] = {}
    for f, name in zip(dataset.files, dataset.label_names()):
        with Image.open(f) as im:
            widths.setdefault(name, []).append(im.size[0])
    return {k: float(np.median(v)) for k, v in widths.items()}


@exercise("brain_window_by_hand", "v = clip((HU - (c - w/2)) / w, 0, 1) * 255, rounded, as uint8, with c=40, w=80")
def _brain_window(hu):
    return window(hu, 40, 80)


@exercise("three_windows_as_rgb", "np.dstack of the brain, subdural and bone windows of hu, in that order "
                                  "(shape (H, W, 3), uint8)")
def _three_windows(hu):
    return hu_to_rgb(hu, ("brain", "subdural", "bone"))


@exercise("cropped_shape", "bright = img.max(axis=2) > 10; the first and last row and column holding a bright "
                           "pixel, 2 px more on each side, clipped to the image; a tuple (height, width, 3)")
def _cropped_shape(rgb):
    return tuple(crop_to_content(rgb).shape)


def _oof_of(run):
    oof = load_run(run).oof()
    return oof[oof["repeat"] == 0]


def _results_of(run) -> dict:
    return load_run(run).results()


@exercise("pooled_accuracy", "the share of rows of oof.csv where 'pred' equals 'label'")
def _pooled_accuracy(run):
    return _results_of(run)["pooled_oof"]["accuracy"]


@exercise("pooled_sensitivity", "of the images whose label is 1, the share predicted 1 (TP / (TP + FN))")
def _pooled_sensitivity(run):
    return _results_of(run)["pooled_oof"]["sensitivity"]


@exercise("best_lr", "study.best_params holds the settings of the best trial; take its 'lr'")
def _best_lr(study):
    return study.best_params["lr"]


@exercise("n_pruned", "count the trials whose state is TrialState.PRUNED (study.get_trials(states=...))")
def _n_pruned(study):
    return len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))


@exercise("n_misclassified", "count the rows of oof.csv (repeat 0) where 'pred' differs from 'label'")
def _n_misclassified(run):
    oof = _oof_of(run)
    return int((oof["pred"] != oof["label"]).sum())


@exercise("weighted_log_loss_by_hand", "per image: the binary log loss of each label, weighted 2 for 'any' and 1 "
                                       "per subtype, divided by the weight sum (7); then the mean over images; clip "
                                       "p to [1e-15, 1 - 1e-15] first")
def _wll(y, p):
    return weighted_log_loss(y, p)


@exercise("folds_per_patient", "for every patient, the number of distinct folds its slices are in; the largest "
                               "such number (an int)")
def _folds_per_patient(run):
    r = load_run(run)
    dataset = r.dataset(log=lambda *_: None)
    folds = np.asarray(r.record["folds"]["assignment"])[0]
    groups = dataset.groups if dataset.groups is not None else np.asarray(dataset.ids)
    return max(len(set(folds[groups == g])) for g in np.unique(groups))


@exercise("auc_difference", "B - A: the pooled out-of-fold roc_auc of run B (results.json, 'pooled_oof') minus "
                            "that of run A")
def _auc_difference(a, b):
    return _results_of(b)["pooled_oof"]["roc_auc"] - _results_of(a)["pooled_oof"]["roc_auc"]


@exercise("size_shortcut_margin", "the audit's accuracy of the 'size' feature set minus its 'chance' figure")
def _size_margin(result):
    return result["feature_sets"]["size"]["accuracy"] - result["chance"]
