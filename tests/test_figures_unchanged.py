"""Figures, files and folds of fixed-seed runs of every command equal ``tests/expected/``.

``tests/expected_runs.py`` runs the commands and holds the comparison; regenerate the expected files
with ``python tests/expected_runs.py --write`` only for a change that is meant to move figures (and
list the difference). Numbers may differ by 0.02 at most, which another CPU's kernels (other rounding
of the same sums) stay well inside; any change of a fold, an id, a class, a seed or a training
setting moves some of the hundreds of probabilities compared here further than that.
"""

from __future__ import annotations

import json
import warnings

import pytest

from tests import expected_runs

ATOL = 0.02


def test_expected_outputs_cover_every_command():
    expected = expected_runs.read()
    assert {"cv_head_ct.oof.csv", "cv_rsna.folds.json", "nested.results.json", "tune.trials.csv", "fewshot.csv",
            "curve_folds.csv", "audit.json", "compare.json", "predictions.csv"} <= set(expected)
    head_ct = expected["cv_head_ct.folds.json"]
    assert len(head_ct["folds"]["ids"]) == 200 and len(head_ct["similar_images"]["pairs"]) == 49


def test_comparison_catches_a_moved_figure_or_fold():
    expected = expected_runs.read()
    oof = expected["cv_head_ct.oof.csv"].copy()
    assert expected_runs.compare({"cv_head_ct.oof.csv": oof}, {"cv_head_ct.oof.csv": oof}, ATOL) == []
    moved = oof.copy()
    moved.loc[3, "prob"] += 0.05
    before, after = float(oof.loc[3, "prob"]), float(moved.loc[3, "prob"])
    assert expected_runs.compare({"x": moved}, {"x": oof}, ATOL) == [f"x.prob[3]: {before!r} expected, got {after!r}"]
    refolded = oof.copy()
    refolded.loc[0, "fold"] = (refolded.loc[0, "fold"] + 1) % 3
    assert expected_runs.compare({"x": refolded}, {"x": oof}, ATOL)  # an integer moves by 1 > ATOL


@pytest.mark.timeout(1200)
def test_fixed_seed_runs_give_the_expected_outputs(tmp_path, head_ct_dir, monkeypatch):
    monkeypatch.setenv("SMALLCT_CACHE", str(tmp_path / "cache"))
    found = expected_runs.collect(expected_runs.run_commands(tmp_path, head_ct_dir))
    same, line = expected_runs.same_machine()
    if not same:  # said, not silent: the trained numbers are machine-bound (see expected_runs)
        warnings.warn(line)
    print(line)
    problems = expected_runs.compare(found, expected_runs.read(), atol=ATOL, trained=same)
    assert not problems, "\n".join(problems[:30])


def test_another_machine_still_checks_folds_ids_and_untrained_figures():
    expected = expected_runs.read()
    oof, fewshot = expected["cv_head_ct.oof.csv"], expected["fewshot.csv"]
    moved = oof.copy()
    moved["prob"] = 1 - moved["prob"]  # a trained number: machine-bound
    assert expected_runs.compare({"cv_head_ct.oof.csv": moved}, {"cv_head_ct.oof.csv": oof}, ATOL, trained=False) == []
    assert expected_runs.compare({"cv_head_ct.oof.csv": moved}, {"cv_head_ct.oof.csv": oof}, ATOL, trained=True)
    refolded = oof.copy()
    refolded.loc[0, "fold"] = (refolded.loc[0, "fold"] + 1) % 3
    assert expected_runs.compare({"cv_head_ct.oof.csv": refolded}, {"cv_head_ct.oof.csv": oof}, ATOL, trained=False)
    renamed = oof.copy()
    renamed.loc[0, "id"] = "x"
    assert expected_runs.compare({"cv_head_ct.oof.csv": renamed}, {"cv_head_ct.oof.csv": oof}, ATOL, trained=False)
    results = expected["cv_head_ct.results.json"]
    regrouped = json.loads(json.dumps(results))
    regrouped["ci_resampled"]["n_units"] += 1
    assert expected_runs.compare({"cv_head_ct.results.json": regrouped}, {"cv_head_ct.results.json": results}, ATOL,
                                 trained=False)
    frozen = fewshot.copy()  # few-shot on frozen embeddings is compared on any machine, fine-tuning is not
    trained_rows = frozen["method"] == "finetune"
    assert trained_rows.any() and (~trained_rows).any()
    figure = next(c for c in frozen.columns if frozen[c].dtype.kind == "f")
    frozen.loc[trained_rows, figure] += 0.5
    assert expected_runs.compare({"fewshot.csv": frozen}, {"fewshot.csv": fewshot}, ATOL, trained=False) == []
    frozen.loc[~trained_rows, figure] += 0.5
    assert expected_runs.compare({"fewshot.csv": frozen}, {"fewshot.csv": fewshot}, ATOL, trained=False)
