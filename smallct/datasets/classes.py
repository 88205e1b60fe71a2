"""Which class is which: the names of a set's classes and, of two, the positive one.

The rules (:func:`name_classes`), so that ``prob``, sensitivity, specificity and the ROC curve never
refer to a class by accident:

* numeric labels (``0``/``1``) keep their order; the positive class of two is the higher label (1).
  ``class_names`` renames them in label order (``--class-names normal,hemorrhage``); without it a
  known set gives its own names (the Kaggle Head CT set: normal, hemorrhage) and any other keeps the digits;
* text labels (class folders, a CSV of words) must be named by ``positive_class`` when there are two:
  their sorted order says nothing. ``class_names`` lists them in the order wanted (all of them);
* the positive class is always index 1, so that probability column 1 is its probability;
* multi-class and multi-label sets have no positive class: every class has its own ``prob_<class>``.

:func:`check_class_sizes` refuses a class with fewer images than a command needs (``--folds``), naming it, its
count and its ids: a stray label would otherwise run as a class of its own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names)


def name_classes(dataset: Any, class_names: Sequence[str] | None = None, positive_class: str | None = None,
                 default: Sequence[str] | None = None) -> Any:
    """``dataset`` (a :class:`smallct.datasets.folder.Dataset`) with its classes named and, of two, the positive one
    at index 1 (labels remapped to match).

    Parameters
    ----------
    class_names
        Numeric labels: their names in label order. Text labels: all of them, in the order wanted.
    positive_class
        Of two classes, the positive one (a name, or the numeric label it renames).
    default
        Names for numeric labels when ``class_names`` is not given (a recognised set's own names).

    Raises
    ------
    ValueError
        One line naming the classes: a wrong count or name, a positive class of a set that has none, or two
        text classes with nothing to say which is positive.
    """
    names, labels, source = [str(n) for n in dataset.class_names], dataset.labels, dataset.source
    if dataset.task == "multilabel":
        if class_names or positive_class:
            raise ValueError(f"--class-names/--positive-class: {source} is a multi-label set; its labels keep their "
                             f"own names ({_listed(names)}) and none of them is a positive class")
        return dataset
    numeric = all(n.isdigit() for n in names)
    digits = list(names)
    if class_names is not None:
        wanted = [str(c).strip() for c in class_names]
        if len(set(wanted)) != len(wanted) or len(wanted) != len(names):
            raise ValueError(f"--class-names {','.join(wanted)}: {source} has {len(names)} classes ({_listed(names)}); "
                             f"give {len(names)} different names, in the order of the labels")
        if numeric:
            names = wanted
        elif set(wanted) != set(names):
            raise ValueError(f"--class-names {','.join(wanted)}: not the classes of {source} ({_listed(names)}); "
                             "text labels keep their names, --class-names only orders them")
        else:
            order = [names.index(w) for w in wanted]
            labels = np.argsort(order)[labels]  # old index -> new index
            names = wanted
    elif default is not None and numeric and len(default) == len(names):
        names = [str(n) for n in default]
    if len(names) != 2:
        if positive_class is not None:
            raise ValueError(f"--positive-class {positive_class}: {source} has {len(names)} classes "
                             f"({_listed(names)}); only a set of two has a positive class (a multi-class set has "
                             "prob_<class> per class)")
        return dataclasses.replace(dataset, class_names=names, labels=labels, positive_class=None)
    if positive_class is not None:
        wanted = str(positive_class).strip()
        if wanted in names:
            positive = names.index(wanted)
        elif numeric and wanted in digits:
            positive = digits.index(wanted)
        else:
            raise ValueError(f"--positive-class {wanted}: not a class of {source} ({names[0]}, {names[1]})")
    elif numeric or dataset.positive_class is not None:
        positive = 1  # the higher label, or the order already decided (a subset of a named set)
    else:
        raise ValueError(f"{source}: two classes, {names[0]!r} and {names[1]!r}, and nothing says which is positive "
                         f"(the one prob, sensitivity and the ROC curve are for): pass --positive-class {names[0]} or "
                         f"--positive-class {names[1]}")
    if positive == 0:
        names, labels = names[::-1], 1 - labels
    return dataclasses.replace(dataset, class_names=names, labels=labels, positive_class=names[1])


def check_class_sizes(dataset: Any, at_least: int, need: str) -> None:
    """``ValueError`` (one line) when a class of ``dataset`` has fewer than ``at_least`` images, naming each such
    class, its count and its ids, and the labels file (``dataset.source``): a stray label (a ``2`` among 0/1)
    would otherwise run as a class of its own. ``need`` ends the line: who needs them and the fix (``--folds 5
    needs ...: correct the labels or ...``). Multi-label sets are not checked (their label combinations are merged, see
    :func:`smallct.data.folds.make_folds`)."""
    labels = np.asarray(dataset.labels)
    if labels.ndim != 1:
        return
    counts = np.bincount(labels, minlength=len(dataset.class_names)).tolist()
    small = [c for c in range(len(counts)) if counts[c] < at_least]
    if not small:
        return

    def ids(c: int) -> str:
        found = [str(dataset.ids[i]) for i in np.flatnonzero(labels == c)]
        return ", ".join(found[:8]) + (f", ... ({len(found)} in all)" if len(found) > 8 else "")

    listed = "; ".join(f"class {dataset.class_names[c]} has {counts[c]} image{'s' * (counts[c] != 1)}"
                       + (f" ({ids(c)})" if counts[c] else "") for c in small)
    raise ValueError(f"{dataset.source}: {listed}; {need}")


def class_note(task: str, class_names: Sequence[str]) -> str:
    """One line saying what the probabilities are for: ``classes: normal = 0, hemorrhage = 1; prob, sensitivity
    and the ROC curve are for the positive class hemorrhage``."""
    if task == "multilabel":
        return f"labels: {_listed(class_names)} (multi-label: no positive class; prob_<label> per label)"
    listed = _listed(f"{n} = {i}" for i, n in enumerate(class_names))
    if len(class_names) == 2:
        return (f"classes: {listed}; prob, sensitivity and the ROC curve are for the positive class "
                f"{class_names[1]}")
    return f"classes: {listed} (multi-class: no positive class; prob_<class> per class)"
