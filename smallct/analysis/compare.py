"""Paired comparison of two cross-validation runs: ``python -m smallct.compare RUN_A RUN_B``.

Two cross-validation runs (:mod:`smallct.engine.cv`) on the same images, labels and fold assignment (same
data, ``--folds``, ``--repeats`` and ``--seed``) give two out-of-fold predictions for every image. Their difference
is judged on the pairs, which is far more sensitive than comparing two separate intervals:

* a paired percentile bootstrap over the units the folds keep whole (near-duplicate groups,
  patients; images when there are none): each resample draws units once and applies them to both
  runs; with repeats, a figure is the mean over repeats (as in ``results.json``);
* with repeated cross-validation, also the corrected resampled t-test of Nadeau and Bengio
  (2003, "Inference for the generalization error", Machine Learning 52:239-281) over the
  per-fold differences: the variance of the mean difference is ``(1/J + n_test/n_train) s^2``,
  where ``J`` is the number of folds over all repeats, because the training sets overlap.

A difference is called clear only with repeated CV, when both intervals exclude 0: on one fold draw
the bootstrap ignores the variation from retraining, so its verdict is "weak evidence" at most.
Differences are always ``B - A``. :func:`compare_runs` is the library API (:func:`compare_predictions` of
predictions already read, which :mod:`smallct.analysis.ensemble` uses too); :func:`write_comparison` writes
``compare.json`` and ``compare.png``, and the command prints :func:`summary_lines`, ending in one plain sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from smallct.data.folds import Folds, scheme_note
from smallct.engine.run_folder import RunFolder
from smallct.evaluation.intervals import bootstrap_indices, nadeau_bengio, percentile_interval
from smallct.evaluation.metrics import roc_auc
from smallct.evaluation.plots import new_figure, save_figure, wrap
from smallct.io.files import atomic_json

COMPARED = ("accuracy", "roc_auc")  # the figures compared
NAMES = {"accuracy": "accuracy", "roc_auc": "AUC"}


@dataclass
class RunPredictions:
    """Out-of-fold predictions of one run, in the order of its ``run.json`` ids.

    ``P`` is (repeats, N, C) class probabilities; ``assignment`` (repeats, N) test-fold indices.
    """

    path: Path
    record: dict
    ids: list[str]
    labels: np.ndarray
    P: np.ndarray
    assignment: np.ndarray

    @property
    def label(self) -> str:
        weights = self.record.get("weights", {}).get("kind", "?")
        init = {"none": "random init", "package": "imagenet", "torchvision": "imagenet", "timm": "imagenet",
                "file": "weights file"}.get(weights, weights)
        return f"{self.path.name} ({self.record.get('arch', '?')}, {init})"


def read_predictions(path: str | Path) -> RunPredictions:
    """The out-of-fold predictions of a finished binary or multi-class run (its ``run.json`` and ``oof.csv``)."""
    folder = RunFolder(Path(path))
    record = folder.read_record()
    if record.get("task") == "multilabel":
        raise ValueError(f"{folder.path}: a multi-label run; smallct.compare compares binary and multi-class runs")
    labels, P = folder.read_oof_matrix(record)
    ids = [str(i) for i in record["folds"]["ids"]]
    assignment = np.asarray(record["folds"]["assignment"], dtype=np.int64)
    return RunPredictions(folder.path, record, ids, labels, P, assignment)


def check_paired(a: RunPredictions, b: RunPredictions) -> None:
    """``ValueError`` unless both runs hold the same images, labels and fold assignment."""
    where = f"{a.path} and {b.path}"
    if a.ids != b.ids:
        raise ValueError(f"{where}: the runs are on different images; compare runs on the same data")
    if a.record.get("class_names") != b.record.get("class_names"):
        raise ValueError(f"{where}: different classes ({a.record.get('class_names')} vs {b.record.get('class_names')})")
    if not np.array_equal(a.labels, b.labels):
        raise ValueError(f"{where}: the labels differ for {int((a.labels != b.labels).sum())} images")
    if a.assignment.shape != b.assignment.shape or not np.array_equal(a.assignment, b.assignment):
        note = scheme_note(a.record, b.record, (a.path.name, b.path.name))
        if note:  # same flags, other smallct: changing --folds/--repeats/--seed would not help
            raise ValueError(f"{where}: different fold assignments ({note}); rerun the older run with this smallct "
                             "and the same flags")
        ca, cb = a.record.get("config", {}), b.record.get("config", {})
        da, db = ca.get("data", {}), cb.get("data", {})
        # the near-duplicate groups come from one canonical thumbnail per file: only these settings move the folds
        differ = [f"{k} {ca.get(k)} vs {cb.get(k)}" for k in ("folds", "repeats", "seed") if ca.get(k) != cb.get(k)]
        differ += [f"group_similar {da.get('group_similar')} vs {db.get('group_similar')}"
                   ] if da.get("group_similar") != db.get("group_similar") else []
        why = ", ".join(differ) or ("same settings; a run of an older smallct grouped near-duplicates on its own "
                                    "--resize and --crop")
        raise ValueError(f"{where}: different fold assignments ({why}); rerun one "
                         "of them with the other's --folds, --repeats, --seed and --group-similar")


def _figures(y: np.ndarray, P: np.ndarray, correct: np.ndarray, idx: np.ndarray) -> tuple[float, float]:
    """Accuracy and AUC of images ``idx``, each the mean over repeats of P (repeats, N, C)."""
    acc = float(correct[:, idx].mean())
    yy = y[idx]
    if P.shape[2] == 2:
        auc = float(np.mean([roc_auc(yy, P[r, idx, 1]) for r in range(len(P))]))
    else:
        # macro one-vs-rest AUC (as multiclass_metrics), with the fast rank AUC
        auc = float(np.mean([np.mean([roc_auc(yy == c, P[r, idx, c]) for c in range(P.shape[2])])
                             for r in range(len(P))]))
    return acc, auc


def _correct(y: np.ndarray, P: np.ndarray) -> np.ndarray:
    """(repeats, N) 1 where the prediction is right: threshold 0.5 (binary) or argmax, as in results.json."""
    pred = (P[:, :, 1] >= 0.5).astype(int) if P.shape[2] == 2 else P.argmax(2)
    return (pred == y[None]).astype(float)


def _per_fold(ra: RunPredictions, rb: RunPredictions, ca: np.ndarray, cb: np.ndarray) -> list[dict]:
    """Both runs' accuracy and AUC on each test fold."""
    rows, folds = [], Folds(ra.assignment)
    for r in range(folds.repeats):
        for k, _, idx in folds.split(r):
            fa = _figures(ra.labels, ra.P[r:r + 1], ca[r:r + 1], idx)
            fb = _figures(ra.labels, rb.P[r:r + 1], cb[r:r + 1], idx)
            rows.append({"repeat": r, "fold": k, "n_test": len(idx), "accuracy_a": fa[0], "accuracy_b": fb[0],
                         "roc_auc_a": fa[1], "roc_auc_b": fb[1]})
    return rows


def compare_runs(a: str | Path, b: str | Path, n_boot: int = 2000, seed: int = 0) -> dict:
    """Paired comparison of two cross-validation runs on the same folds; differences are ``B - A``.

    Parameters
    ----------
    a, b
        Run folders of :mod:`smallct.engine.cv` (``run.json`` and ``oof.csv`` are read).
    n_boot
        Bootstrap resamples of the units the folds keep whole (the same resample for both runs).
    seed
        Seed of the bootstrap.

    Returns
    -------
    dict
        ``accuracy`` and ``roc_auc``: each run's pooled figure, the difference, its paired 95%
        bootstrap interval and the share of resamples favouring B; ``nadeau_bengio`` (repeated CV
        only); ``per_fold``; ``sentence``: the plain verdict.

    Raises
    ------
    ValueError
        When the runs differ in images, labels or fold assignment, or one is unfinished.
    """
    check_resamples(n_boot)
    ra, rb = read_predictions(a), read_predictions(b)
    check_paired(ra, rb)
    return compare_predictions(ra, rb, n_boot, seed)


def check_resamples(n_boot: int, default: int = 2000) -> None:
    """``ValueError`` for fewer than 100 bootstrap resamples (``default``: the command's, named in the message)."""
    if n_boot < 100:
        raise ValueError(f"--n-boot {n_boot}: use at least 100 resamples (default {default})")


def compare_predictions(ra: RunPredictions, rb: RunPredictions, n_boot: int = 2000, seed: int = 0) -> dict:
    """:func:`compare_runs` of predictions already read and paired (:func:`check_paired`): ``B - A``, with the
    paired bootstrap over the units of A's folds (those of B's, the folds being the same)."""
    check_resamples(n_boot)
    y = ra.labels
    repeats, n = ra.assignment.shape
    ca, cb = _correct(y, ra.P), _correct(y, rb.P)
    everything = np.arange(n)
    point_a, point_b = _figures(y, ra.P, ca, everything), _figures(y, rb.P, cb, everything)

    units = RunFolder(ra.path).resampling_units(ra.record)  # the same folds, so the same groups as B's
    boot = []
    for idx in bootstrap_indices(units, n_boot, seed):  # the same units for both runs: a paired bootstrap
        fa, fb = _figures(y, ra.P, ca, idx), _figures(y, rb.P, cb, idx)
        boot.append([fb[0] - fa[0], fb[1] - fa[1]])
    boot = np.asarray(boot)

    out = {"run_a": {"path": str(ra.path), "label": ra.label, "arch": ra.record.get("arch")},
           "run_b": {"path": str(rb.path), "label": rb.label, "arch": rb.record.get("arch")},
           "n_images": n, "folds": int(ra.assignment.max()) + 1, "repeats": repeats, "difference": "B - A"}
    for m, (va, vb, d) in zip(COMPARED, zip(point_a, point_b, boot.T)):
        d = d[np.isfinite(d)]
        out[m] = {"a": va, "b": vb, "difference": vb - va, "ci95": list(percentile_interval(d, 0.95)),
                  "share_of_resamples_b_better": float((d > 0).mean())}

    per_fold = _per_fold(ra, rb, ca, cb)
    out["per_fold"] = per_fold
    if repeats > 1:
        n_test = n / out["folds"]
        out["nadeau_bengio"] = {
            m: nadeau_bengio(np.array([f[f"{m}_b"] - f[f"{m}_a"] for f in per_fold
                                       if np.isfinite(f[f"{m}_b"] - f[f"{m}_a"])]), n - n_test, n_test)
            for m in COMPARED}
    else:
        out["nadeau_bengio"] = None
        out["nadeau_bengio_note"] = ("not computed: one repeat; run both with --repeats 5 (or more) for the "
                                     "corrected resampled t-test")
    out["ci_resampled"] = units.record()
    out["method"] = (f"paired {units.describe(n_boot)}, the same units for both runs; with repeats each figure is "
                     "the mean over repeats; accuracy at threshold 0.5"
                     + ("; Nadeau-Bengio corrected resampled t-test over per-fold differences" if repeats > 1 else ""))
    out["sentence"] = verdict(out)
    return out


def describe_difference(m: str, res: dict) -> str:
    scale, unit = (100, " points") if m == "accuracy" else (1, "")
    fmt = ".1f" if m == "accuracy" else ".3f"
    lo, hi = (v * scale for v in res["ci95"])
    return (f"{NAMES[m]} {res['b'] * scale:{fmt}} vs {res['a'] * scale:{fmt}}, difference "
            f"{res['difference'] * scale:+{fmt}}{unit} (95% paired CI {lo:+{fmt}} to {hi:+{fmt}})")


def summary_lines(result: dict) -> list[str]:
    """What the command prints of a comparison: each difference with its paired interval, the Nadeau-Bengio
    test (repeated CV), and the plain sentence."""
    lines = [describe_difference(m, result[m]) for m in COMPARED]
    for m in COMPARED:
        t = (result["nadeau_bengio"] or {}).get(m)  # repeated CV only
        if t is None:
            continue
        lines.append(f"Nadeau-Bengio corrected t-test, {NAMES[m]}: mean per-fold difference "
                     f"{t['mean_difference']:+.3f}, t = {t['t']:.2f}, df = {t['df']}, p = {t['p_value']:.3f}")
    return lines + [result["sentence"]]


def _direction(lo: float, hi: float) -> str | None:
    return "B" if lo > 0 else "A" if hi < 0 else None


def verdict(result: dict) -> str:
    """One plain sentence: can these data tell the two runs apart?

    A metric counts as a clear difference when the paired bootstrap interval excludes 0 and the
    Nadeau-Bengio interval of repeated CV does too. When only the bootstrap does (or there is one
    repeat, so no such test), the evidence is called weak: the bootstrap ignores the variation from
    retraining on other folds, and one fold draw moves accuracy 2-5 points on 200 images.
    """
    names = {"A": result["run_a"]["label"], "B": result["run_b"]["label"]}
    nb = result.get("nadeau_bengio")
    clear, weak = {}, {}
    for m in COMPARED:
        boot = _direction(*result[m]["ci95"])
        if boot and (not nb or _direction(*nb[m]["ci95"]) != boot):
            weak[m] = boot
        elif boot:
            clear[m] = boot
    details = "; ".join(describe_difference(m, result[m]) for m in COMPARED)
    if len(set(clear.values())) == 2:
        return (f"{names['B']} (B) and {names['A']} (A) differ, but not in one direction: {details}. "
                "Decide by the figure that matters for the use.")
    if clear:
        w = next(iter(clear.values()))
        which = " and ".join(NAMES[m] for m in clear)
        return (f"{names[w]} is better than {names['A' if w == 'B' else 'B']} in {which} (the paired interval "
                f"excludes 0): B against A, {details}.")
    if weak and not nb:
        m, w = next(iter(weak.items()))
        return (f"Weak evidence that {names[w]} is better than {names['A' if w == 'B' else 'B']} in {NAMES[m]}: "
                f"the paired bootstrap interval excludes 0, but on one fold draw, and the bootstrap does not count "
                f"the variation from retraining on other folds; run both with --repeats 5 (same --seed) for the "
                f"corrected t-test. B against A, {details}.")
    if weak:
        m, w = next(iter(weak.items()))
        return (f"Weak evidence that {names[w]} is better than {names['A' if w == 'B' else 'B']} in {NAMES[m]}: "
                f"the paired bootstrap interval excludes 0, but the Nadeau-Bengio corrected t-test, "
                f"which also counts the variation from retraining, does not (p = {nb[m]['p_value']:.2f}). "
                f"B against A, {details}.")
    return (f"The data cannot tell {names['B']} (B) and {names['A']} (A) apart: {details}. Both intervals "
            f"include 0, so with {result['n_images']} images a difference of this size may be chance.")


def compare_plot(result: dict) -> Figure:
    """Per-fold paired differences (dots) and the pooled difference with its paired bootstrap interval
    (and the Nadeau-Bengio interval, with repeats), one panel per compared figure; returns the figure."""
    fig = new_figure((9, 3.6))
    axes = fig.subplots(1, 2)
    rng = np.random.default_rng(0)
    nb = result.get("nadeau_bengio")
    for ax, m in zip(axes, COMPARED):
        scale = 100 if m == "accuracy" else 1
        d = np.array([f[f"{m}_b"] - f[f"{m}_a"] for f in result["per_fold"]]) * scale
        ax.scatter(d, 2 + rng.uniform(-0.15, 0.15, len(d)), color="tab:grey", alpha=0.7, s=22)
        rows = [(1, result[m]["difference"], result[m]["ci95"], "tab:blue")]
        if nb:
            rows.append((0, nb[m]["mean_difference"], nb[m]["ci95"], "tab:orange"))
        for y, mid, (lo, hi), color in rows:
            mid, lo, hi = mid * scale, lo * scale, hi * scale
            ax.errorbar(mid, y, xerr=[[mid - lo], [hi - mid]], fmt="o", color=color, capsize=5, lw=2)
        ax.axvline(0, color="k", lw=0.8, ls="--")
        unit = (result.get("ci_resampled") or {}).get("unit", "images")
        labels = (["single folds", f"all images\n(paired bootstrap\nof {unit})"]
                  + (["Nadeau-Bengio\n(corrected t)"] if nb else []))
        ax.set_yticks([2, 1, 0][:len(labels)], labels, fontsize=8)
        ax.set_ylim(-0.6 if nb else 0.4, 2.5)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # AUC differences have many decimals: few ticks
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel(f"B - A, {NAMES[m]}" + (" (points)" if m == "accuracy" else "") + ", 95% intervals")
    fig.suptitle(wrap(f"B = {result['run_b']['label']}\nA = {result['run_a']['label']}", 8.8, 8), fontsize=8)
    return fig


def write_comparison(result: dict, out: Path) -> None:
    atomic_json(out / "compare.json", result)
    save_figure(compare_plot(result), out / "compare.png")
