"""Plots of a run: ROC, confusion matrix, training curves, and figures with intervals against a size.

Each plot function returns a :class:`matplotlib.figure.Figure`; :func:`save_figure` writes it as a PNG. In a
notebook the returned figure shows itself (as a cell's last expression, or with ``display(fig)``) and can be
adjusted before it is saved. The figures are made without pyplot, on an Agg canvas: no figure list to close,
and the session's backend (inline in Jupyter, any other) is left alone. Layouts are constrained and long
titles wrapped, so nothing is clipped; the PNG keeps the title and the axis names as text (``Title``,
``Description``). :func:`run_figures` gives the figures of a run folder.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import confusion_matrix, roc_curve

DPI = 110  # resolution of the written PNGs


def new_figure(figsize: tuple[float, float]) -> Figure:
    """An empty figure of ``figsize`` (inches) with a constrained layout, drawn by Agg (no pyplot)."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG at ``path``, with its title (the figure's, else its first axes') and the first
    axes' names as the PNG's text.

    The bounding box is the drawn content (``bbox_inches="tight"``), so a long tick label or title is never cut
    off. Returns the path."""
    ax = fig.axes[0] if fig.axes else None
    title = fig.get_suptitle() or (ax.get_title() if ax else "")
    meta = {"Title": title.replace("\n", " ")}
    if ax is not None:
        meta["Description"] = f"x: {ax.get_xlabel()}; y: {ax.get_ylabel()}"
    fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.08, metadata=meta)
    return Path(path)


def wrap(text: str, width_in: float, fontsize: float) -> str:
    """``text`` broken into lines that fit ``width_in`` inches at ``fontsize`` points (about 0.55 em a char)."""
    chars = max(12, int(width_in * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


def relative_luminance(rgb) -> float:
    """WCAG relative luminance of an sRGB colour (0 black .. 1 white)."""
    c = np.asarray(to_rgb(rgb), float)
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(c @ [0.2126, 0.7152, 0.0722])


def text_colour(background) -> str:
    """Black or white, whichever contrasts more with ``background`` (WCAG contrast ratio, at least 4.5)."""
    lum = relative_luminance(background)
    return "black" if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else "white"


def roc_plot(oof: pd.DataFrame, *, auc: float | None = None, auc_ci95: tuple[float, float] | None = None,
             title: str = "", positive_class: str | None = None) -> Figure:
    """Pooled out-of-fold ROC curve (bold) over the per-fold curves (faint), binary tasks.

    ``oof`` has ``label`` (1: the positive class), ``prob`` (its probability), ``fold`` and ``repeat``;
    ``positive_class`` names it in the title and on the axes. ``auc`` and ``auc_ci95`` are the pooled
    out-of-fold AUC and its 95% interval as the run reports them (``results["pooled_oof"]["roc_auc"]``,
    ``results["pooled_oof_ci95"]["roc_auc"]``); the legend shows them as scikit-learn's ``RocCurveDisplay``
    does, ``AUC = 0.98 [0.96, 0.99]``.
    """
    fig = new_figure((4.6, 4.6))
    ax = fig.subplots()
    n_folds = 0
    for _, g in oof.groupby(["repeat", "fold"]):
        if g["label"].nunique() == 2:  # a fold of one class has no ROC curve; the pooled one still does
            fpr, tpr, _ = roc_curve(g["label"], g["prob"])
            ax.plot(fpr, tpr, color="tab:blue", alpha=0.25, lw=1, label="single folds" if not n_folds else None)
            n_folds += 1
    fpr, tpr, _ = roc_curve(oof["label"], oof["prob"])
    label = "pooled out-of-fold"
    if auc is not None:
        label += f"\nAUC = {auc:.2f}" + (f" [{auc_ci95[0]:.2f}, {auc_ci95[1]:.2f}] (95% CI)" if auc_ci95 else "")
    ax.plot(fpr, tpr, color="tab:blue", lw=2.5, label=label)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal",
           xlabel="1 - specificity (false positive rate)",
           ylabel=f"sensitivity (of {positive_class})" if positive_class else "sensitivity")
    named = f", positive class: {positive_class}" if positive_class else ""
    ax.set_title(wrap(title or f"ROC{named}", 4.2, 11), fontsize=11)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def confusion_plot(y: np.ndarray, pred: np.ndarray, class_names: list[str], *, title: str = "") -> Figure:
    """Confusion matrix of pooled out-of-fold predictions; rows the true class, columns the predicted one.

    Each cell shows its count and its share of the row (the true class): ``45`` over ``(90%)``; the colour
    is that share, so a rare class reads like a common one, and each text is black or white, whichever
    contrasts more with its cell. Of two classes, ``class_names[1]`` is the positive one (the title says so).
    """
    n = len(class_names)
    cm = confusion_matrix(y, pred, labels=list(range(n)))
    totals = cm.sum(axis=1, keepdims=True)
    rates = np.divide(cm, totals, out=np.zeros(cm.shape, float), where=totals > 0)
    side = 1.0 + 1.0 * n
    fig = new_figure((side + 1.8, side + 1.2))
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fontsize = 12 if n <= 4 else 9
    for i in range(n):
        for j in range(n):
            text = f"{cm[i, j]}\n({rates[i, j]:.0%})" if totals[i, 0] else "0"
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                    color=text_colour(image.cmap(image.norm(rates[i, j]))))
    slanted = max(len(c) for c in class_names) > 10  # about what a 1 inch cell holds at 10 pt
    ax.set_xticks(range(n), class_names, rotation=30 if slanted else 0, ha="right" if slanted else "center")
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted class", ylabel="true class")
    bar = fig.colorbar(image, ax=ax, shrink=0.8, format=lambda v, _: f"{v:.0%}")
    bar.set_label("share of the true class (row)", fontsize=8)
    rule = f"threshold 0.5, positive class: {class_names[1]}" if n == 2 else "the most probable class"
    # wrapped to the matrix's own width: a wider title runs into the top label of the colour bar
    ax.set_title(wrap(title or f"confusion (out-of-fold, {rule})", side - 0.2, 10), fontsize=10)
    return fig


def curves_plot(history: pd.DataFrame) -> Figure:
    """Training and test-fold loss and accuracy per epoch, one faint line per fold, mean in bold.

    ``history`` has ``repeat``, ``fold``, ``epoch`` and ``train_loss``, ``train_acc`` (and ``val_loss``,
    ``val_acc`` when the test folds were evaluated per epoch). Epoch ticks are whole numbers."""
    fig = new_figure((9, 3.6))
    axes = fig.subplots(1, 2)
    few = history["epoch"].nunique() <= 12  # markers, so that one or two epochs still show as points
    for ax, metric, name in zip(axes, ("loss", "acc"), ("loss", "accuracy")):
        for col, color in ((f"train_{metric}", "tab:blue"), (f"val_{metric}", "tab:orange")):
            if col not in history:
                continue
            for _, g in history.groupby(["repeat", "fold"]):
                ax.plot(g["epoch"], g[col], color=color, alpha=0.2, lw=1)
            mean = history.groupby("epoch")[col].mean()
            ax.plot(mean.index, mean.values, color=color, lw=2.2, marker="o" if few else None, ms=4,
                    label=col.replace("val_", "test fold ").replace("train_", "train ").replace("acc", "accuracy"))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if history["epoch"].nunique() == 1:  # a view of width 0 would get ticks at fractions of the epoch
            ax.set_xlim(history["epoch"].iloc[0] - 0.5, history["epoch"].iloc[0] + 0.5)
        ax.set(xlabel="epoch", ylabel=name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("training curves (mean in bold, single folds faint; the test-fold curves are shown, never "
                 "used to choose anything)", fontsize=9)
    return fig


def interval_plot(summary: pd.DataFrame, x: str, line: str, xlabel: str, title: str, *,
                  metric: str = "accuracy", logx: bool = False, point: str = "mean",
                  band: str = "95% CI of the mean", interval: str = "ci") -> Figure:
    """``metric`` (column ``{metric}_{point}``: the mean, or the pooled figure) with its 95% interval (a band,
    columns ``{metric}_{interval}_low``/``_high``) against ``x``, one line per value of ``line`` (few-shot tables
    against k, learning curves against n). ``band`` says in the legend what the band is (its unit)."""
    fig = new_figure((6.4, 4.4))
    ax = fig.subplots()
    # an interval can pass 0 or 1 (a t interval over few folds); accuracy and AUC cannot: the band stops there
    low, high = (0.0, 1.0) if "loss" not in metric else (None, None)
    for name, g in summary.groupby(line, sort=False):
        g = g.sort_values(x)
        ax.plot(g[x], g[f"{metric}_{point}"], marker="o", label=str(name))
        ax.fill_between(g[x], g[f"{metric}_{interval}_low"].clip(low, high),
                        g[f"{metric}_{interval}_high"].clip(low, high), alpha=0.15)
    ax.fill_between([], [], [], color="grey", alpha=0.3,  # the band's key in the legend, unit included
                    label=textwrap.fill(f"band: {band}", 45, break_on_hyphens=False))
    if logx:
        ax.set_xscale("log")
    xs = sorted(summary[x].unique())
    ax.set_xticks(xs, [str(v) for v in xs])
    if logx:
        ax.minorticks_off()
    what = "mean" if point == "mean" else f"{point} out-of-fold" if point == "pooled" else point
    ax.set(xlabel=xlabel, ylabel=f"{metric.replace('_', ' ')} ({what}, 95% interval)")
    ax.set_title(wrap(title, 6.0, 11), fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def run_figures(results: dict, oof: pd.DataFrame, history: pd.DataFrame | None = None) -> dict[str, Figure]:
    """The figures of a run folder, by name: ``curves`` (when there is a history), ``roc`` (two classes) and
    ``confusion`` (not multi-label), from its ``results.json`` content, ``oof.csv`` and ``history.csv`` tables.

    The ROC legend's AUC and interval are the run's pooled out-of-fold figures, as ``results.json`` has them
    (none for an unfinished run)."""
    figures = {}
    if history is not None and len(history):
        figures["curves"] = curves_plot(history)
    if results["task"] == "multilabel":
        return figures
    names = results["class_names"]
    if len(names) == 2:
        figures["roc"] = roc_plot(oof, auc=results.get("pooled_oof", {}).get("roc_auc"),
                                  auc_ci95=results.get("pooled_oof_ci95", {}).get("roc_auc"),
                                  positive_class=results.get("positive_class") or names[1])
    figures["confusion"] = confusion_plot(oof["label"].to_numpy(), oof["pred"].to_numpy(), names)
    return figures


__all__ = ["DPI", "confusion_plot", "curves_plot", "interval_plot", "new_figure", "relative_luminance",
           "roc_plot", "run_figures", "save_figure", "text_colour", "wrap"]
