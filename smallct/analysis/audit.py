"""Shortcut audit: ``python -m smallct.audit --data DIR``.

How well is the label predicted from image metadata alone, without looking at the anatomy? In
small sets collected from several sources, the file often gives the class away: on the Kaggle
Head CT set the hemorrhage images are larger (median width 428 px against 262 px) and only
normal images are RGBA, so a random forest on width, height, aspect ratio and mode reaches about
70% cross-validated accuracy. A network can learn that instead of the blood.

The audit fits a random forest (fixed settings, seeded) on three nested feature sets under the
same cross-validation as smallct.cv (:func:`smallct.data.folds.make_folds`: the same ``--folds``,
``--repeats``, ``--seed`` and near-duplicate grouping ``--group-similar``; or exactly the folds of a run
folder, ``--run``), and reports the pooled out-of-fold accuracy and AUC
with a percentile bootstrap interval over the groups the folds keep whole, against chance (the majority-class rate):

``size``       width, height, aspect ratio, PIL mode: the shortcut to look for first
``file``       + channels, bits per sample, file size in bytes
``intensity``  + mean and standard deviation of the grey values of the whole image

It writes ``audit.json``, ``features.csv`` and ``audit.png``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.ensemble import RandomForestClassifier
from smallct.progress import tqdm

from smallct.analysis.compare import check_resamples
from smallct.config.run import GROUP_SIMILAR
from smallct.data.folds import Folds, make_folds
from smallct.data.seeds import fit_seed
from smallct.data.similar import Grouping
from smallct.datasets.folder import Dataset
from smallct.engine.run_folder import RunFolder
from smallct.evaluation.intervals import Units, over_repeats, pooled_figures
from smallct.evaluation.metrics import classification_metrics
from smallct.evaluation.plots import new_figure, save_figure
from smallct.io.files import atomic_csv, atomic_json
from smallct.io.images import describe_image, to_rgb_uint8

SIZE_FEATURES = ["width", "height", "aspect", "mode"]
FEATURE_SETS: dict[str, list[str]] = {
    "size": SIZE_FEATURES,
    "file": SIZE_FEATURES + ["channels", "bits", "bytes"],
    "intensity": SIZE_FEATURES + ["channels", "bits", "bytes", "grey_mean", "grey_std"],
}
AUDITED = ("accuracy", "balanced_accuracy", "roc_auc")  # the figures of each feature set
DESCRIPTIONS = {
    "size": "width, height, aspect ratio and mode",
    "file": "size, mode, channels, bit depth and file size",
    "intensity": "file metadata and mean/std of grey values",
}


def metadata_features(files: list[Path], progress: bool = True) -> pd.DataFrame:
    """One row per file: width, height (px), aspect (width/height), mode, channels, bits, bytes,
    grey_mean and grey_std (0..255, of the RGB uint8 image from :func:`smallct.io.images.to_rgb_uint8`)."""
    rows = []
    for path in tqdm(files, desc="reading metadata", unit="image", disable=not progress, leave=False):
        d = describe_image(path)
        grey = to_rgb_uint8(path).mean(axis=2)
        rows.append({"file": d["file"], "width": d["width"], "height": d["height"],
                     "aspect": d["width"] / d["height"], "mode": d["mode"], "channels": d["channels"],
                     "bits": 8 * np.dtype(d["dtype"]).itemsize, "bytes": d["bytes"],
                     "grey_mean": float(grey.mean()), "grey_std": float(grey.std())})
    return pd.DataFrame(rows)


def design_matrix(features: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Numeric matrix of ``columns``; ``mode`` becomes one 0/1 column per mode present."""
    parts = []
    for c in columns:
        if c == "mode":
            modes = sorted(features["mode"].unique())
            parts += [(features["mode"] == m).to_numpy(float) for m in modes]
        else:
            parts.append(features[c].to_numpy(float))
    return np.column_stack(parts)


def _forest(seed: int) -> RandomForestClassifier:
    return RandomForestClassifier(n_estimators=200, min_samples_leaf=2, random_state=seed, n_jobs=1)


def cross_validated_probs(X: np.ndarray, y: np.ndarray, folds: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """(repeats, N, C) out-of-fold class probabilities of a random forest on ``X``."""
    P, split = np.zeros((len(folds), len(y), n_classes)), Folds(np.asarray(folds))
    for r in range(split.repeats):
        for k, train, test in split.split(r):
            model = _forest(fit_seed(seed, r, k)).fit(X[train], y[train])
            P[r][np.ix_(test, model.classes_)] = model.predict_proba(X[test])
    return P


def by_class(features: pd.DataFrame, dataset: Dataset) -> dict:
    """Per class: number of images, median width/height/aspect/bytes, and counts per mode."""
    table = features.assign(label=dataset.label_names())
    out = {}
    for name, g in table.groupby("label"):
        out[str(name)] = {"n": len(g), **{f"median_{c}": float(g[c].median()) for c in
                                           ("width", "height", "aspect", "bytes")},
                          "modes": {str(m): int(v) for m, v in g["mode"].value_counts().items()}}
    return out


def audit_folds(dataset: Dataset, folds: int = 5, repeats: int = 1, seed: int = 0,
                group_similar: float | None = GROUP_SIMILAR, progress: bool = True) -> Folds:
    """The folds smallct.cv makes with these settings (default crop and pad), with the groups they keep whole."""
    return make_folds(dataset, folds, repeats, seed, group_similar, progress=progress, log=lambda *args: None)


def run_folds(run: str | Path, dataset: Dataset) -> Folds:
    """The folds recorded in a smallct.cv run folder (assignment and groups), checked against ``dataset``."""
    folder = RunFolder(Path(run))
    units = folder.resampling_units()
    return Folds(folder.recorded_folds(dataset.ids), Grouping(units.groups, unit=units.name))


def audit(dataset: Dataset, folds: int = 5, repeats: int = 1, seed: int = 0, n_boot: int = 1000,
          progress: bool = True, group_similar: float | None = GROUP_SIMILAR,
          assignment: np.ndarray | None = None) -> dict:
    """Cross-validated accuracy of predicting the label from metadata alone, per feature set.

    Parameters
    ----------
    dataset
        A binary or multi-class :class:`~smallct.datasets.folder.Dataset` of image files.
    folds, repeats, seed, group_similar
        The cross-validation of :mod:`smallct.engine.cv` (same values give the same folds, see
        :func:`audit_folds`).
    n_boot
        Bootstrap resamples for the 95% intervals (at least 100); they resample the groups the folds keep whole.
    assignment
        Folds to use instead: :func:`run_folds` of a cv run (with its groups), or a bare assignment
        (repeats, N), whose intervals then resample images.

    Returns
    -------
    dict
        ``chance`` (majority-class rate), ``feature_sets`` (per set: accuracy, balanced accuracy,
        AUC, their intervals, ``above_chance``), ``by_class``, ``warning`` (None when no set is
        clearly above chance) and, under the key ``features``, the per-image table (a DataFrame).
    """
    check_resamples(n_boot, default=1000)  # as compare and ensemble: checked before any work, nothing written
    if dataset.task == "multilabel":
        raise ValueError(f"{dataset.source}: a multi-label set; smallct.audit audits binary and multi-class labels")
    y = np.asarray(dataset.labels)
    n_classes = len(dataset.class_names)
    if assignment is None:
        assignment = audit_folds(dataset, folds, repeats, seed, group_similar, progress)
        folds_from = (f"smallct.cv's folds for --folds {folds} --repeats {repeats} --seed {seed} --group-similar "
                      f"{group_similar or 0}")
    else:
        folds_from = "the given fold assignment"
    if isinstance(assignment, Folds):
        units, assignment = assignment.units, assignment.assignment
    else:
        units = Units(len(y))
    repeats, folds = len(assignment), int(assignment.max()) + 1
    features = metadata_features(dataset.files, progress)
    chance = float(np.bincount(y, minlength=n_classes).max() / len(y))
    sets = {}
    for name, columns in FEATURE_SETS.items():
        P = cross_validated_probs(design_matrix(features, columns), y, assignment, n_classes, seed)
        # as in smallct.cv's results.json: each figure the mean over repeats of its pooled out-of-fold value
        point, ci = pooled_figures(over_repeats(classification_metrics, y, P, AUDITED), units, AUDITED,
                                   n_boot=n_boot, seed=seed)
        sets[name] = {"features": columns, "description": DESCRIPTIONS[name], **point, "ci95": ci,
                      "above_chance": bool(ci["accuracy"][0] > chance)}
    result = {"data": dataset.source, "n_images": len(y), "class_names": dataset.class_names,
              "folds": folds, "repeats": repeats, "seed": seed, "folds_from": folds_from, "chance": chance,
              "model": "random forest (200 trees, min_samples_leaf 2, seeded), one fit per fold",
              "ci_method": f"{units.describe(n_boot)} of pooled out-of-fold predictions",
              "ci_resampled": units.record(),
              "feature_sets": sets, "by_class": by_class(features, dataset),
              "fold_assignment": {"ids": dataset.ids, "assignment": assignment.tolist()}}
    result["warning"] = warning(result)
    result["features"] = features
    return result


def warning(result: dict) -> str | None:
    """A plain warning when metadata alone predicts the label clearly above chance, else None."""
    flagged = [n for n, s in result["feature_sets"].items() if s["above_chance"]]
    if not flagged:
        return None
    name = "size" if "size" in flagged else flagged[0]
    s = result["feature_sets"][name]
    lo, hi = s["ci95"]["accuracy"]
    text = (f"WARNING: {s['description']} alone predict the label with {s['accuracy']:.0%} cross-validated "
            f"accuracy (95% CI {lo:.0%}-{hi:.0%}; chance {result['chance']:.0%}). A network can learn this "
            "shortcut instead of the anatomy. ")
    if name == "size":
        text += ("Padding to a square keeps the aspect ratio visible (black bars) and the field of view differs "
                 "by class, so report this baseline beside the model's accuracy, compare against it, and where "
                 "possible collect images of both classes from the same source.")
    else:
        text += "Report this baseline beside the model's accuracy and compare against it."
    return text


def audit_plot(result: dict, dataset: Dataset) -> Figure:
    """Width against height per class (the shortcut made visible), and accuracy per feature set vs chance;
    returns the figure."""
    features = result["features"]
    names = np.asarray(dataset.label_names())
    fig = new_figure((9, 3.8))
    ax, bx = fig.subplots(1, 2)
    markers = dict(zip(sorted(features["mode"].unique()), "os^vDP*X"))
    for c, color in zip(dataset.class_names, matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]):
        for mode, marker in markers.items():
            sel = (names == c) & (features["mode"].to_numpy() == mode)
            if sel.any():
                ax.scatter(features["width"][sel], features["height"][sel], s=16, alpha=0.7, color=color,
                           marker=marker, label=f"{c} ({mode})")
    ax.set(xlabel="width (px)", ylabel="height (px)", title="image size by class")
    ax.legend(fontsize=7)
    sets = result["feature_sets"]
    acc = [sets[n]["accuracy"] for n in sets]
    err = np.array([[a - sets[n]["ci95"]["accuracy"][0], sets[n]["ci95"]["accuracy"][1] - a]
                    for n, a in zip(sets, acc)]).T
    bx.bar(list(sets), acc, yerr=err, capsize=6, color=["tab:red" if sets[n]["above_chance"] else "tab:grey"
                                                         for n in sets])
    bx.axhline(result["chance"], color="k", ls="--", lw=1, label="chance (majority class)")
    bx.set(ylim=(0, 1), ylabel="cross-validated accuracy", title="label from metadata alone (95% CI)")
    bx.legend(fontsize=7, loc="lower right")
    return fig


def write_audit(result: dict, dataset: Dataset, out: Path) -> None:
    atomic_csv(out / "features.csv", result["features"].assign(label=dataset.label_names()))
    atomic_json(out / "audit.json", {k: v for k, v in result.items() if k != "features"})
    save_figure(audit_plot(result, dataset), out / "audit.png")


def format_report(result: dict) -> str:
    lines = [f"{'features':<10} {'accuracy':>9} {'95% CI':>13} {'AUC':>6}   ({result['n_images']} images, "
             f"{result['folds']} folds x {result['repeats']} repeats, chance {result['chance']:.2f})"]
    for name, s in result["feature_sets"].items():
        lo, hi = s["ci95"]["accuracy"]
        lines.append(f"{name:<10} {s['accuracy']:>9.3f} {lo:>6.3f}-{hi:<6.3f} {s['roc_auc']:>6.3f}   "
                     f"{s['description']}")
    for c, s in result["by_class"].items():
        modes = ", ".join(f"{m} {v}" for m, v in s["modes"].items())
        lines.append(f"class {c}: {s['n']} images, median {s['median_width']:.0f} x {s['median_height']:.0f} px, "
                     f"{s['median_bytes'] / 1000:.0f} kB; modes {modes}")
    lines.append(f"intervals: {result['ci_method']}")
    lines.append(result["warning"] or "No feature set predicts the label clearly above chance (every 95% interval "
                                      "reaches chance): no metadata shortcut found.")
    return "\n".join(lines)
