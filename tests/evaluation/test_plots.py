"""Run plots: each function writes a PNG of the expected size with something drawn on it."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from smallct.evaluation.plots import interval_plot
from smallct.evaluation.plots import confusion_plot, curves_plot, roc_plot

DPI = 110  # the plots' savefig resolution
TAB_BLUE, TAB_ORANGE = (31, 119, 180), (255, 127, 14)


def _read(path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        return np.array(img.convert("RGB")).astype(int)


def _has_colour(a: np.ndarray, rgb, tol: int = 12) -> bool:
    return bool((np.abs(a - np.array(rgb)).max(-1) <= tol).sum() > 50)


def _oof(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = np.arange(n) % 2
    return pd.DataFrame({"label": label, "prob": np.clip(0.3 * label + rng.uniform(0, 0.7, n), 0, 1),
                         "fold": np.arange(n) % 4, "repeat": 0})


def test_roc_plot_writes_the_curves(tmp_path):
    path = roc_plot(_oof(), tmp_path / "roc.png", title="phantom")
    assert path == tmp_path / "roc.png"
    a = _read(path)
    assert a.shape == (round(4.5 * DPI), round(4.5 * DPI), 3)
    assert _has_colour(a, TAB_BLUE)


def test_roc_plot_skips_a_fold_with_one_class(tmp_path):
    oof = _oof()
    oof.loc[oof["fold"] == 0, "label"] = 1  # a fold's ROC is undefined; the pooled curve is not
    assert _has_colour(_read(roc_plot(oof, tmp_path / "roc.png")), TAB_BLUE)


def test_confusion_plot_grows_with_the_classes(tmp_path):
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0, 2])
    two = _read(confusion_plot(y % 2, pred % 2, ["no", "yes"], tmp_path / "c2.png"))
    three = _read(confusion_plot(y, pred, ["a", "b", "c"], tmp_path / "c3.png", title="three"))
    assert two.shape[:2] == (round((1.4 + 2.2) * DPI), round((1.6 + 2.2) * DPI))
    assert three.shape[:2] == (round((1.4 + 3.3) * DPI), round((1.6 + 3.3) * DPI))
    assert (three.min(-1) < 100).any() and (three.max(-1) > 250).any()  # dark cells and white background


def test_curves_plot_draws_train_and_test_fold_lines(tmp_path):
    rows = [{"repeat": 0, "fold": k, "epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e,
             "train_acc": 0.5 + 0.1 * e, "val_acc": 0.45 + 0.1 * e} for k in range(2) for e in range(1, 4)]
    a = _read(curves_plot(pd.DataFrame(rows), tmp_path / "curves.png"))
    assert a.shape[:2] == (round(3.6 * DPI), round(9 * DPI))
    assert _has_colour(a, TAB_BLUE) and _has_colour(a, TAB_ORANGE)
    # a history without test-fold columns (no validation) still plots the training curves only
    train_only = pd.DataFrame(rows).drop(columns=["val_loss", "val_acc"])
    b = _read(curves_plot(train_only, tmp_path / "train.png"))
    assert _has_colour(b, TAB_BLUE) and not _has_colour(b, TAB_ORANGE)


def test_plotting_leaves_the_matplotlib_backend_alone(tmp_path):
    # a notebook's inline backend must survive the library's plots (no matplotlib.use("Agg") inside smallct)
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        roc_plot(_oof(), tmp_path / "roc.png")
        summary = pd.DataFrame({"k": [1, 5], "method": "proto", "accuracy_mean": [0.6, 0.7],
                                "accuracy_ci_low": [0.5, 0.6], "accuracy_ci_high": [0.7, 0.8]})
        interval_plot(summary, "k", "method", tmp_path / "k.png", "k", "few-shot")  # plots inside other modules
        assert matplotlib.get_backend() == "svg"
        assert (tmp_path / "roc.png").stat().st_size > 0 and (tmp_path / "k.png").stat().st_size > 0
    finally:
        matplotlib.use(before)
