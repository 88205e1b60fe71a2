"""Helpers shared by the analysis tests."""

import json

import numpy as np
import pandas as pd


def write_multiclass_run(folder, ids, y, P, assignment) -> None:
    """A hand-made finished three-class run (classes p, q, r): ``run.json`` with the folds and ``oof.csv`` of P."""
    folder.mkdir()
    assignment = np.asarray(assignment)
    (folder / "run.json").write_text(json.dumps({
        "arch": "resnet18", "task": "multiclass", "class_names": ["p", "q", "r"], "weights": {"kind": "none"},
        "config": {}, "folds": {"ids": ids, "assignment": assignment.tolist()}}))
    pd.DataFrame({"id": ids, "label": y, **{f"prob_{c}": P[:, j] for j, c in enumerate("pqr")},
                  "pred": P.argmax(1), "fold": assignment[0], "repeat": 0}).to_csv(folder / "oof.csv", index=False)
