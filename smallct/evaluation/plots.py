"""Plots of a run: ROC, confusion matrix, training curves, and figures with intervals against a size.
Each returns the written path. The ROC curve and the confusion matrix name the positive class and the
axes' classes; their title and axis names are also kept in the PNG's text (``Title``, ``Description``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt  # figures are saved and closed: any backend (Agg headless, inline in Jupyter)
import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, roc_curve


def _save(fig, ax, path: Path) -> None:
    """Write ``fig`` with its title and axis names as the PNG's text, and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Title": ax.get_title(),
                                         "Description": f"x: {ax.get_xlabel()}; y: {ax.get_ylabel()}"})
    plt.close(fig)


def roc_plot(oof: pd.DataFrame, path: Path, title: str = "", positive_class: str | None = None) -> Path:
    """Pooled out-of-fold ROC curve (bold) over the per-fold curves (faint), binary tasks.

    ``oof`` has ``label`` (1: the positive class) and ``prob`` (its probability); ``positive_class`` names it
    in the title and on the axes."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for (_, _), g in oof.groupby(["repeat", "fold"]):
        if g["label"].nunique() == 2:
            fpr, tpr, _ = roc_curve(g["label"], g["prob"])
            ax.plot(fpr, tpr, color="tab:blue", alpha=0.25, lw=1)
    fpr, tpr, _ = roc_curve(oof["label"], oof["prob"])
    ax.plot(fpr, tpr, color="tab:blue", lw=2.5, label="pooled out-of-fold")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    named = f", positive class: {positive_class}" if positive_class else ""
    ax.set(xlabel="1 - specificity (false positive rate)",
           ylabel=f"sensitivity (of {positive_class})" if positive_class else "sensitivity",
           title=title or f"ROC{named} (faint: single folds)")
    ax.legend(loc="lower right")
    _save(fig, ax, path)
    return Path(path)


def confusion_plot(y: np.ndarray, pred: np.ndarray, class_names: list[str], path: Path, title: str = "") -> Path:
    """Confusion matrix of pooled out-of-fold predictions, counts in the cells; rows the true class, columns the
    predicted one. Of two classes, ``class_names[1]`` is the positive one (the title says so)."""
    cm = confusion_matrix(y, pred, labels=list(range(len(class_names))))
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(class_names), 1.4 + 1.1 * len(class_names)))
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=13)
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    named = f", positive class: {class_names[1]}" if len(class_names) == 2 else ""
    ax.set(xlabel="predicted class", ylabel="true class",
           title=title or f"confusion (out-of-fold, threshold 0.5{named})")
    _save(fig, ax, path)
    return Path(path)


def curves_plot(history: pd.DataFrame, path: Path) -> Path:
    """Training and test-fold loss and accuracy per epoch, one faint line per fold, mean in bold."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, metric in zip(axes, ("loss", "acc")):
        for col, color in ((f"train_{metric}", "tab:blue"), (f"val_{metric}", "tab:orange")):
            if col not in history:
                continue
            for _, g in history.groupby(["repeat", "fold"]):
                ax.plot(g["epoch"], g[col], color=color, alpha=0.2, lw=1)
            mean = history.groupby("epoch")[col].mean()
            ax.plot(mean.index, mean.values, color=color, lw=2.2,
                    label=col.replace("val_", "test fold ").replace("train_", "train "))
        ax.set(xlabel="epoch", ylabel=metric)
        ax.legend()
    fig.suptitle("training curves (test-fold curves are shown, never used to choose anything)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def interval_plot(summary: pd.DataFrame, x: str, line: str, path: Path, xlabel: str, title: str,
                  metric: str = "accuracy", logx: bool = False) -> Path:
    """Mean ``metric`` with its 95% interval (band) against ``x``, one line per value of ``line``
    (few-shot tables against k, learning curves against n)."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, g in summary.groupby(line, sort=False):
        g = g.sort_values(x)
        ax.plot(g[x], g[f"{metric}_mean"], marker="o", label=str(name))
        ax.fill_between(g[x], g[f"{metric}_ci_low"], g[f"{metric}_ci_high"], alpha=0.15)
    if logx:
        ax.set_xscale("log")
    xs = sorted(summary[x].unique())
    ax.set_xticks(xs, [str(v) for v in xs])
    ax.minorticks_off() if logx else None
    ax.set(xlabel=xlabel, ylabel=f"{metric.replace('_', ' ')} (mean, 95% CI of the mean)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
