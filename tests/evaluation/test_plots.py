"""Run plots: each function returns a Figure that is readable once drawn (texts that contrast with their cells,
titles inside the figure, the AUC in the legend, whole epochs), and save_figure writes it as a PNG."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from smallct.evaluation.plots import (confusion_plot, curves_plot, interval_plot, roc_plot, run_figures,
                                      save_figure)

TAB_BLUE, TAB_ORANGE = (31, 119, 180), (255, 127, 14)


def _read(path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        return np.array(img.convert("RGB")).astype(int)


def _has_colour(a: np.ndarray, rgb, tol: int = 12) -> bool:
    return bool((np.abs(a - np.array(rgb)).max(-1) <= tol).sum() > 50)


def _luminance(rgb) -> float:
    """WCAG 2 relative luminance, written out here rather than taken from the module under test."""
    c = np.asarray(rgb[:3], float)
    c = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]


def _contrast(a, b) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def _inside(fig: Figure, artist) -> bool:
    """Whether ``artist``'s drawn extent lies within the figure's canvas (1 px of slack)."""
    box, canvas = artist.get_window_extent(fig.canvas.get_renderer()), fig.bbox
    return (box.x0 >= canvas.x0 - 1 and box.x1 <= canvas.x1 + 1 and box.y0 >= canvas.y0 - 1
            and box.y1 <= canvas.y1 + 1)


def _oof(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = np.arange(n) % 2
    return pd.DataFrame({"label": label, "prob": np.clip(0.3 * label + rng.uniform(0, 0.7, n), 0, 1),
                         "fold": np.arange(n) // 2 % 4, "repeat": 0})  # both classes in every fold


def _history(epochs: int = 3, validation: bool = True) -> pd.DataFrame:
    rows = [{"repeat": 0, "fold": k, "epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e,
             "train_acc": 0.5 + 0.1 * e, "val_acc": 0.45 + 0.1 * e} for k in range(2) for e in range(1, epochs + 1)]
    history = pd.DataFrame(rows)
    return history if validation else history.drop(columns=["val_loss", "val_acc"])


def _confusion(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions whose confusion matrix is ``rows`` (true class by row)."""
    y, pred = [], []
    for i, row in enumerate(rows):
        for j, count in enumerate(row):
            y += [i] * count
            pred += [j] * count
    return np.array(y), np.array(pred)


def test_every_plot_returns_a_figure_outside_pyplot_and_keeps_the_backend(tmp_path):
    # a notebook shows and adjusts the returned figure; the library neither switches the backend (inline in
    # Jupyter) nor leaves figures open in pyplot's list
    import matplotlib.pyplot as plt

    before, open_before = matplotlib.get_backend(), plt.get_fignums()
    matplotlib.use("svg")
    try:
        summary = pd.DataFrame({"k": [1, 5], "method": "proto", "accuracy_mean": [0.6, 0.7],
                                "accuracy_ci_low": [0.5, 0.6], "accuracy_ci_high": [0.7, 0.8]})
        figures = [roc_plot(_oof()), confusion_plot(*_confusion([[3, 1], [2, 4]]), ["no", "yes"]),
                   curves_plot(_history()), interval_plot(summary, "k", "method", "k", "few-shot")]
        assert all(isinstance(f, Figure) for f in figures)
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == open_before
        for k, fig in enumerate(figures):
            assert save_figure(fig, tmp_path / f"{k}.png") == tmp_path / f"{k}.png"
            assert _read(tmp_path / f"{k}.png").shape[0] > 200
    finally:
        matplotlib.use(before)


def test_confusion_cells_show_the_count_and_the_share_of_the_true_class():
    fig = confusion_plot(*_confusion([[45, 5], [3, 7]]), ["normal", "hemorrhage"])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["45\n(90%)", "5\n(10%)", "3\n(30%)", "7\n(70%)"]
    # the colour is the row share, not the count: 7 of 10 hemorrhages (70%) is near 45 of 50 normals (90%)
    image = fig.axes[0].images[0]
    assert image.get_array()[1, 1] == pytest.approx(0.7) and image.get_array()[0, 0] == pytest.approx(0.9)


def test_confusion_of_a_class_that_never_occurs_shows_zero_without_a_rate():
    fig = confusion_plot(np.array([0, 0, 2]), np.array([0, 2, 2]), ["a", "b", "c"])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts[3:6] == ["0", "0", "0"]  # no image of class b: no share to give
    assert texts[0] == "1\n(50%)" and texts[8] == "1\n(100%)"


@pytest.mark.parametrize("correct", range(0, 21))
def test_every_confusion_text_contrasts_with_its_cell(correct):
    # row shares from 0% to 100% in steps of 5%: the old rule (white above half the largest count) put black
    # on dark blue and white on pale blue near the middle
    fig = confusion_plot(*_confusion([[correct, 20 - correct], [3, 17]]), ["normal", "hemorrhage"])
    fig.canvas.draw()
    ax = fig.axes[0]
    image = ax.images[0]
    for text in ax.texts:
        j, i = (round(v) for v in text.get_position())
        cell = image.to_rgba(image.get_array()[i, j])
        assert _contrast(matplotlib.colors.to_rgba(text.get_color()), cell) >= 4.5, (text.get_text(), cell)


def test_confusion_title_and_class_names_stay_inside_the_figure(tmp_path):
    names = ["no hemorrhage", "intraparenchymal", "subarachnoid"]
    y, pred = _confusion([[20, 3, 1], [2, 15, 4], [0, 5, 12]])
    fig = confusion_plot(y, pred, names)
    fig.canvas.draw()
    ax = fig.axes[0]
    assert "most probable class" in ax.get_title()
    for artist in [ax.title, *ax.get_xticklabels(), *ax.get_yticklabels(), ax.xaxis.label, ax.yaxis.label]:
        assert _inside(fig, artist), artist
    two = confusion_plot(*_confusion([[9, 1], [2, 8]]), ["normal", "hemorrhage"])
    two.canvas.draw()
    assert "positive class: hemorrhage" in two.axes[0].get_title().replace("\n", " ")
    assert _inside(two, two.axes[0].title)
    renderer = two.canvas.get_renderer()
    title, bar = two.axes[0].title.get_window_extent(renderer), two.axes[1].get_tightbbox(renderer)
    assert title.x1 <= bar.x0 or title.y0 >= bar.y1, "the title runs into the colour bar"
    with Image.open(save_figure(fig, tmp_path / "c.png")) as img:
        assert "most probable class" in img.text["Title"] and "predicted class" in img.text["Description"]


def test_roc_legend_shows_the_pooled_auc_with_its_interval():
    fig = roc_plot(_oof(), auc=0.9812, auc_ci95=(0.961, 0.993), positive_class="hemorrhage")
    legend = " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())
    assert "AUC = 0.98 [0.96, 0.99]" in legend and "single folds" in legend
    assert "hemorrhage" in fig.axes[0].get_title() and "hemorrhage" in fig.axes[0].get_ylabel()
    plain = roc_plot(_oof())
    assert "AUC" not in " ".join(t.get_text() for t in plain.axes[0].get_legend().get_texts())


def test_roc_plot_skips_a_fold_with_one_class(tmp_path):
    oof = _oof()
    fig = roc_plot(oof)
    assert len([line for line in fig.axes[0].lines if line.get_alpha() == 0.25]) == 4
    oof.loc[oof["fold"] == 0, "label"] = 1  # a fold's ROC is undefined; the pooled curve is not
    fig = roc_plot(oof)
    faint = [line for line in fig.axes[0].lines if line.get_alpha() == 0.25]
    assert len(faint) == 3
    assert _has_colour(_read(save_figure(fig, tmp_path / "roc.png")), TAB_BLUE)


def test_run_figures_take_the_auc_and_interval_from_the_results():
    oof = _oof().assign(pred=lambda d: (d["prob"] >= 0.5).astype(int))
    results = {"task": "binary", "class_names": ["normal", "hemorrhage"], "positive_class": "hemorrhage",
               "pooled_oof": {"roc_auc": 0.9123}, "pooled_oof_ci95": {"roc_auc": [0.871, 0.949]}}
    figures = run_figures(results, oof, _history())
    assert list(figures) == ["curves", "roc", "confusion"]
    legend = " ".join(t.get_text() for t in figures["roc"].axes[0].get_legend().get_texts())
    assert "AUC = 0.91 [0.87, 0.95]" in legend
    unfinished = {k: v for k, v in results.items() if not k.startswith("pooled")}  # no pooled figures yet
    assert "AUC" not in " ".join(t.get_text() for t in
                                 run_figures(unfinished, oof)["roc"].axes[0].get_legend().get_texts())
    assert list(run_figures({**results, "class_names": ["a", "b", "c"]}, oof.assign(pred=0))) == ["confusion"]
    assert list(run_figures({**results, "task": "multilabel"}, oof, _history())) == ["curves"]


@pytest.mark.parametrize("epochs", [1, 2, 3, 7])
def test_curves_epoch_ticks_are_whole_numbers(epochs):
    fig = curves_plot(_history(epochs))
    fig.canvas.draw()
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert all("." not in s for s in labels), labels


def test_curves_plot_draws_train_and_test_fold_lines(tmp_path):
    a = _read(save_figure(curves_plot(_history()), tmp_path / "curves.png"))
    assert _has_colour(a, TAB_BLUE) and _has_colour(a, TAB_ORANGE)
    # a history without test-fold columns (no validation) still plots the training curves only
    b = _read(save_figure(curves_plot(_history(validation=False)), tmp_path / "train.png"))
    assert _has_colour(b, TAB_BLUE) and not _has_colour(b, TAB_ORANGE)
    fig = curves_plot(_history(1))  # one epoch: the mean is a marked point, not an invisible line
    assert all(line.get_marker() == "o" for ax in fig.axes for line in ax.lines if line.get_linewidth() > 2)


def test_interval_plot_ticks_at_the_sizes_and_keeps_a_long_title_inside():
    summary = pd.DataFrame({"n": [10, 20, 40, 80], "series": "probe / imagenet",
                            "accuracy_mean": [0.6, 0.7, 0.75, 0.8], "accuracy_ci_low": [0.5, 0.6, 0.7, 0.75],
                            "accuracy_ci_high": [0.7, 0.8, 0.8, 0.85]})
    title = "learning curve: tf_efficientnet_lite0 with a rather long description, 5-fold CV x 3 repeats"
    fig = interval_plot(summary, "n", "series", "training images per fold", title, logx=True)
    fig.canvas.draw()
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [10, 20, 40, 80]
    assert _inside(fig, ax.title) and ax.get_title().replace("\n", " ") == title


def test_interval_plot_draws_the_named_point_and_band_and_says_the_unit_in_the_legend():
    # curve.png draws the pooled figure with its bootstrap band, fewshot.png the mean with the new-pool band; the
    # legend names what the band resamples (a plot that drew the mean, or the t interval, would fail here)
    summary = pd.DataFrame({"n": [10, 40], "series": "probe / imagenet", "accuracy_mean": [0.6, 0.7],
                            "accuracy_pooled": [0.62, 0.74], "accuracy_ci_low": [0.5, 0.65],
                            "accuracy_ci_high": [0.72, 0.83], "accuracy_new_pool_ci_low": [0.3, 0.4],
                            "accuracy_new_pool_ci_high": [0.9, 0.95]})
    band = "95% CI, percentile bootstrap over 158 near-duplicate groups of 200 images (1000 resamples)"
    fig = interval_plot(summary, "n", "series", "n", "learning curve", point="pooled", band=band)
    ax = fig.axes[0]
    assert list(ax.lines[0].get_ydata()) == [0.62, 0.74]
    legend = " ".join(t.get_text().replace("\n", " ") for t in ax.get_legend().get_texts())
    assert f"band: {band}" in legend and "pooled out-of-fold" in ax.get_ylabel()
    top = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert top.min() == pytest.approx(0.5) and top.max() == pytest.approx(0.83)
    wide = interval_plot(summary, "n", "series", "n", "few-shot", interval="new_pool_ci", band="a new pool").axes[0]
    assert list(wide.lines[0].get_ydata()) == [0.6, 0.7] and "(mean, 95% interval)" in wide.get_ylabel()
    top = wide.collections[0].get_paths()[0].vertices[:, 1]
    assert top.min() == pytest.approx(0.3) and top.max() == pytest.approx(0.95)
