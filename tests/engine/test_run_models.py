"""A run read back (smallct.engine.run_models): record, config, checkpoint list, oof table, data check, and fold
models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from smallct.data.cache import load_images
from smallct.config.run import CVConfig
from smallct.engine.run_models import load_fold_model, load_run
from smallct.engine.train import predict_proba


def _copy_record(small_run: Path, folder: Path, change=None) -> Path:
    """A run folder holding only a copy of ``small_run``'s run.json (optionally changed)."""
    folder.mkdir()
    record = json.loads((small_run / "run.json").read_text())
    if change:
        change(record)
    (folder / "run.json").write_text(json.dumps(record))
    return folder


def test_record_and_config_are_those_of_the_run(small_run, phantom_dir):
    run = load_run(small_run)
    cfg = run.config
    assert isinstance(cfg, CVConfig) and cfg.arch == run.arch == "resnet18" and cfg.folds == 2
    assert cfg.data.data == phantom_dir and isinstance(cfg.data.data, Path)  # a Path again, not text
    assert cfg.out == small_run and cfg.train.epochs == 1 and cfg.train.tta is False
    assert run.amp is True and run.class_names == ["0", "1"]
    assert run.input["resize"] == cfg.data.resize and len(run.input["mean"]) == 3
    oof = run.oof()
    assert len(oof) == 40 and all(isinstance(i, str) for i in oof["id"])  # ids read as text, as recorded
    assert sorted(oof["id"]) == sorted(run.record["folds"]["ids"])
    assert {"id", "label", "prob", "pred", "fold", "repeat"} <= set(oof.columns)
    assert run.checkpoint("r0_f1").path == small_run / "checkpoints" / "r0_f1.pt"
    assert list(run.dataset(log=lambda *_: None).ids) == run.record["folds"]["ids"]


def test_checkpoints_are_sorted_by_number_and_strays_ignored(small_run, tmp_path):
    folder = _copy_record(small_run, tmp_path / "run")
    (folder / "checkpoints").mkdir()
    for name in ("r1_f0.pt", "r0_f10.pt", "r0_f2.pt", "notes.pt", "r0_f1.pt.bak", "rX_f1.pt", "r0_f3.pth"):
        (folder / "checkpoints" / name).touch()
    run = load_run(folder)
    assert [c.name for c in run.checkpoints] == ["r0_f2", "r0_f10", "r1_f0"]  # numeric, not text order
    assert (run.checkpoints[1].repeat, run.checkpoints[1].fold) == (0, 10)
    with pytest.raises(ValueError, match=r"no fold model 'r0_f1' \(there are: r0_f2, r0_f10, r1_f0\)"):
        run.checkpoint("r0_f1")
    # a run whose folds have not finished: no checkpoints, no oof.csv yet
    shutil.rmtree(folder / "checkpoints")
    run = load_run(folder)
    assert run.checkpoints == []
    with pytest.raises(ValueError, match="oof.csv: no out-of-fold predictions"):
        run.oof()


def test_a_folder_that_is_not_a_run_is_a_clear_error(small_run, tmp_path):
    with pytest.raises(ValueError, match="not a smallct.cv run folder"):
        load_run(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"run.json: cannot read"):
        load_run(tmp_path)
    folder = _copy_record(small_run, tmp_path / "old", change=lambda r: (r.pop("input"), r.pop("task")))
    with pytest.raises(ValueError, match=r"run.json: no task, input; not written by this smallct.cv"):
        load_run(folder)


def test_dataset_refuses_data_that_changed_since_the_run(small_run, tmp_path):
    def drop_one(record):
        record["folds"]["ids"] = record["folds"]["ids"][:-1]

    run = load_run(_copy_record(small_run, tmp_path / "run", change=drop_one))
    with pytest.raises(ValueError, match=r"not those of the run \(40 now, 39 in run.json\)"):
        run.dataset(log=lambda *_: None)


def test_fold_models_reproduce_their_out_of_fold_probabilities(small_run):
    run = load_run(small_run)
    dataset = run.dataset(log=lambda *_: None)
    oof = run.oof().set_index("id")
    x_all = load_images(dataset.files, run.input["img_size"], run.input["resize"], run.input["crop"],
                        workers=1, progress=False)
    for ckpt in run.checkpoints:
        model, info = load_fold_model(ckpt.path)
        assert not model.training and (info["repeat"], info["fold"]) == (ckpt.repeat, ckpt.fold)
        assert info["mean"] == run.input["mean"] and info["img_size"] == run.input["img_size"]
        rows = oof[(oof["fold"] == ckpt.fold) & (oof["repeat"] == ckpt.repeat)]
        index = [dataset.ids.index(i) for i in rows.index]
        probs = predict_proba(model, x_all[index], info["mean"], info["std"], info["task"], tta=run.record["tta"])
        np.testing.assert_allclose(probs[:, 1], rows["prob"], atol=1e-5)
        assert (probs.argmax(1) == rows["pred"].to_numpy()).all()


def test_load_fold_model_refuses_files_that_are_not_fold_checkpoints(small_run, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: cannot read checkpoint"):
        load_fold_model(junk)
    state = torch.load(small_run / "checkpoints" / "r0_f0.pt", weights_only=True)["model"]
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)  # a bare state dict: the architecture is unknown
    with pytest.raises(ValueError, match="plain.pt: not a smallct fold checkpoint"):
        load_fold_model(plain)


def test_a_run_json_from_before_class_names_and_padded_ids_still_loads(small_run, tmp_path):
    # smallct 0.1.0 wrote no positive_class, no class_names/positive_class settings and the CSV's ids (0, not 000)
    def older(record):
        del record["positive_class"]
        for key in ("class_names", "positive_class"):
            del record["config"]["data"][key]
        record["folds"]["ids"] = [str(int(i)) for i in record["folds"]["ids"]]

    folder = _copy_record(small_run, tmp_path / "old", older)
    shutil.copy(small_run / "oof.csv", folder / "oof.csv")
    run = load_run(folder)
    assert run.class_names == ["0", "1"] and run.positive_class == "1"
    assert run.config.data.class_names is None and run.config.data.positive_class is None
    dataset = run.dataset(log=lambda *_: None)
    assert dataset.ids == run.record["folds"]["ids"] and dataset.ids[0] == "0"  # the run's own ids, as recorded
    assert dataset.class_names == ["0", "1"] and dataset.positive_class == "1"
    assert load_run(small_run).positive_class == "1" and load_run(small_run).record["folds"]["ids"][0] == "000"
