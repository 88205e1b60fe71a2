"""Per-slice features of a run's fold models for a second stage (smallct.engine.stacking): which model describes
which slice, embeddings, and what is kept. On the session's permuted-label RSNA runs (tests/conftest.py)."""

import numpy as np
import pytest

from smallct.engine import stacking
from smallct.engine.run_folder import RunFolder
from smallct.engine.run_models import load_fold_model, load_run
from smallct.engine.sequence import SequenceConfig, apply_sequence, run_sequence
from smallct.engine.stacking import SliceFeatures, logit
from smallct.models.embeddings import compute_embeddings

QUIET = {"progress": False, "log": lambda *a: None}


def test_each_slice_is_described_by_the_fold_model_that_never_trained_on_it(rsna_permuted_runs, tmp_path):
    runs = rsna_permuted_runs
    # mutant caught: features of a test slice from another fold's model (which trained on it)
    run = load_run(runs["permuted"])
    dataset = run.dataset(log=lambda *a: None)
    features = SliceFeatures(run, dataset, "logits", RunFolder(tmp_path / "seq"), progress=False)
    x = features.of_fold(0, 1, "stacking")
    leaky = features.of_fold(0, 1, "in_fold")
    for j in range(3):
        fold = run.folder.read_fold(0, j)
        rows = np.asarray(fold["test_index"])
        assert np.allclose(x[rows], logit(np.asarray(fold["probs"])), atol=1e-5)
        assert not np.allclose(leaky[rows], x[rows], atol=1e-2)


def test_embeddings_are_each_fold_models_own_kept_and_needed_to_apply(rsna_permuted_runs, tmp_path, monkeypatch):
    runs = rsna_permuted_runs
    # mutants caught: embeddings of a slice by another fold's model; the kept features not read back
    run = load_run(runs["tiny"])
    dataset = run.dataset(log=lambda *a: None)
    folder = RunFolder(tmp_path / "seq")
    features = SliceFeatures(run, dataset, "both", folder, progress=False)
    x = features.of_fold(0, 0, "stacking")
    assert x.shape == (len(dataset), 6 + 512)  # six logits, then resnet18's pooled 512
    images = run.images(dataset, progress=False, log=lambda *a: None)[1]
    for j in range(3):
        fold = run.folder.read_fold(0, j)
        rows = np.asarray(fold["test_index"])
        assert np.allclose(x[rows, :6], logit(np.asarray(fold["probs"])), atol=1e-5)
        model, info = load_fold_model(run.folder.checkpoint_file(0, j))
        z = compute_embeddings(model, images.take(rows), info["mean"], info["std"], flip=run.tta, progress=False)
        assert np.allclose(x[rows, 6:], z, atol=1e-4)
    assert len(list(folder.features_dir.glob("*-both.npz"))) == 3
    monkeypatch.setattr(stacking, "load_fold_model", lambda *a, **k: pytest.fail("computed again"))
    again = SliceFeatures(run, dataset, "both", folder, progress=False).of_fold(0, 1, "stacking")
    assert np.array_equal(again, x)  # the same slices by the same models, read back from features/
    monkeypatch.undo()

    cfg = SequenceConfig(run=runs["tiny"], out=tmp_path / "seq", features="both", epochs=2, n_boot=100)
    run_sequence(cfg, **QUIET)
    fold = run.folder.read_fold(0, 2)
    rows = np.asarray(fold["test_index"])
    with pytest.raises(ValueError, match="--features both: no embeddings given"):
        apply_sequence(cfg.out, {f"r0_f{k}": np.asarray(fold["probs"]) for k in range(3)},
                       dataset.neighbours.take(rows))
