"""A run folder read back: record, config, checkpoint list, oof table, data check, and fold models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from smallct.data.cache import load_images
from smallct.config.run import CVConfig
from smallct.engine.run_folder import load_fold_model, load_run
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


def test_the_run_folder_names_every_file(tmp_path):
    from smallct.engine.run_folder import RunFolder, fold_name, parse_fold_name

    assert fold_name(2, 11) == "r2_f11" and parse_fold_name("r2_f11") == (2, 11)
    assert parse_fold_name("r2_f11.bak") is None and parse_fold_name("notes") is None
    folder = RunFolder(tmp_path / "run")
    assert folder.fold_file(0, 3) == tmp_path / "run" / "folds" / "r0_f3.json"
    assert folder.checkpoint_file(1, 0) == tmp_path / "run" / "checkpoints" / "r1_f0.pt"
    assert folder.inner_run(0, 2, "lite0").path == tmp_path / "run" / "inner" / "r0_f2" / "lite0"
    assert not folder.has_record() and folder.count_done() == 0
    record = {"config": {"arch": "a"}, "folds": {"ids": ["x", "y"], "assignment": [[0, 1]]}}
    assert folder.check_resume(record) is False
    folder.start(record, resuming=False)
    assert folder.read_record() == record and folder.check_resume(record) is True
    for k in (1, 0):
        folder.write_fold(0, k, {"repeat": 0, "fold": k})
    assert folder.is_done(0, 1) and folder.count_done() == 2
    assert [f["fold"] for f in folder.read_folds()] == [0, 1]  # by name
    assert folder.recorded_folds(["x", "y"]).tolist() == [[0, 1]]
    with pytest.raises(ValueError, match="other images than --data"):
        folder.recorded_folds(["x"])
    with pytest.raises(ValueError, match=r"holds a run with other settings \(arch\)"):
        folder.check_resume({**record, "config": {"arch": "b"}})


def test_one_resume_rule_judges_what_a_caller_found_different(tmp_path):
    """smallct.nested hands its differences (candidates, choice rules) to RunFolder.check_resume: the run folder's
    one rule decides (restart while nothing finished, refuse after), as for a cv run's settings. Mutant: a second,
    inverted rule (True for "restart") where nested kept its own."""
    from smallct.engine.run_folder import RunFolder

    folder = RunFolder(tmp_path / "run")
    record = {"config": {"arch": "a"}, "folds": {"ids": ["x", "y"], "assignment": [[0, 1]]}}
    assert folder.check_resume(record, ["candidates (a, b there)"]) is False  # no run there: a new run
    folder.start(record, resuming=False)
    assert folder.check_resume(record, []) is True  # the same run: resume
    assert folder.check_resume(record, ["candidates (a, b there)"]) is False  # nothing finished: start again
    folder.write_fold(0, 0, {"repeat": 0, "fold": 0})
    with pytest.raises(ValueError, match=r"other settings \(candidates \(a, b there\), arch\); use another --out"):
        folder.check_resume({**record, "config": {"arch": "b"}}, ["candidates (a, b there)"])


def test_run_json_records_the_device_and_thread_count(small_run):
    record = load_run(small_run).record
    assert record["device"] == "cpu" and record["threads"] == 1  # the test session runs at one torch thread
    assert record["config"]["threads"] is None  # not asked for: torch's own count, recorded above


def _resumed_with(run: Path, **changes) -> None:
    from dataclasses import replace

    from smallct.engine.cv import run_cv

    cfg = load_run(run).config
    run_cv(replace(cfg, out=run, **changes), progress=False, log=lambda *a: None)


def test_resume_refuses_another_thread_count_or_device(small_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    before = (run / "run.json").read_text()
    with pytest.raises(ValueError, match=r"other settings \(threads 1 there, 2 now: resume with --threads 1\)"):
        _resumed_with(run, threads=2)
    assert torch.get_num_threads() == 1  # --threads holds for the run only
    record = json.loads(before)
    record["device"] = "cuda"
    (run / "run.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"device cuda there, cpu now: resume with --device cuda"):
        _resumed_with(run, threads=1)
    (run / "run.json").write_text(before)
    _resumed_with(run, threads=1)  # the same thread count and device: resumed (every fold done, nothing trained)
    assert (run / "run.json").read_text() == before


def test_a_run_none_of_whose_folds_finished_starts_again_with_new_settings(tmp_path):
    from smallct.engine.run_folder import RunFolder

    folder = RunFolder(tmp_path / "run")
    old = {"config": {"arch": "a"}, "folds": {"ids": ["x", "y"], "assignment": [[0, 1]]}, "threads": 2}
    folder.start(old, resuming=False)
    (folder.checkpoints_dir / "r0_f0.pt").write_bytes(b"left by a fold that never finished")
    new = {**old, "config": {"arch": "b"}, "threads": 1}
    assert folder.check_resume(new) is False  # nothing finished: a new run, not an error
    folder.start(new, resuming=False)
    assert folder.read_record() == new and folder.checkpoints() == []  # the stale checkpoint is gone
    folder.write_fold(0, 0, {"repeat": 0, "fold": 0})
    with pytest.raises(ValueError, match=r"other settings \(arch, threads 1 there, 2 now"):
        folder.check_resume({**old, "config": {"arch": "a"}})
    inner = folder.inner_run(0, 1, "c")
    assert folder.has_finished_folds() and not inner.has_finished_folds()
    inner.folds_dir.mkdir(parents=True)
    inner.write_fold(0, 0, {"repeat": 0, "fold": 0})
    folder.fold_file(0, 0).unlink()
    assert folder.has_finished_folds()  # an inner run's finished fold counts too (a nested run)


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


def test_a_run_json_from_before_the_rsna_ingredients_still_resumes(small_run, tmp_path):
    # run.json written before vflip ... ema, flat_share existed: absent keys are their defaults, the old behaviour
    from dataclasses import fields, replace

    from smallct.config.run import TrainConfig
    from smallct.engine.run_folder import RunFolder

    new_keys = ["flat_share", "vflip", "brightness", "contrast", "gauss_noise", "salt_pepper", "erase", "mixup",
                "cutmix", "ema"]
    assert set(new_keys) <= {f.name for f in fields(TrainConfig)}
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    record = json.loads((run / "run.json").read_text())
    for key in new_keys:
        del record["config"]["train"][key]
    (run / "run.json").write_text(json.dumps(record))
    before = (run / "run.json").read_text()
    _resumed_with(run, threads=1)  # every fold done: resumed, nothing trained, run.json kept
    assert (run / "run.json").read_text() == before
    cfg = load_run(run).config
    assert cfg.train == TrainConfig(**json.loads(before)["config"]["train"])  # defaults filled in
    now = json.loads(before)
    now["config"]["train"]["mixup"] = 0.2
    with pytest.raises(ValueError, match=r"other settings \(train\)"):
        RunFolder(run).check_resume(now)
    with pytest.raises(ValueError, match=r"other settings \(train\)"):
        _resumed_with(run, train=replace(cfg.train, ema=0.99), threads=1)


def test_run_json_records_its_fold_scheme_and_a_one_repeat_run_of_scheme_1_still_resumes(small_run, tmp_path):
    assert load_run(small_run).record["folds_scheme"] == 2  # smallct.data.seeds.FOLDS_SCHEME
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    record = json.loads((run / "run.json").read_text())
    del record["folds_scheme"]  # as smallct <= 0.3 wrote it: one repeat, the folds every scheme draws
    (run / "run.json").write_text(json.dumps(record))
    _resumed_with(run, threads=1)  # resumed (every fold done, nothing trained), not refused
    assert json.loads((run / "run.json").read_text()) == record


def test_resuming_a_repeated_run_of_fold_scheme_1_names_the_scheme(tmp_path):
    from smallct.data.folds import fold_assignment
    from smallct.engine.run_folder import RunFolder

    labels = np.tile([0, 1], 10)
    ids = [f"{i:03d}" for i in range(20)]
    now = fold_assignment(labels, 2, 2, seed=0)
    then = [now[0].tolist(), fold_assignment(labels, 2, 1, seed=1)[0].tolist()]  # 0.3's repeat 1: seed 0 + 1
    assert then[1] != now[1].tolist()
    folder = RunFolder(tmp_path / "run")
    old = {"config": {"arch": "a", "folds": 2, "repeats": 2, "seed": 0}, "folds": {"ids": ids, "assignment": then}}
    folder.start(old, resuming=False)
    folder.write_fold(1, 0, {"repeat": 1, "fold": 0})
    new = {**old, "folds": {"ids": ids, "assignment": now.tolist()}, "folds_scheme": 2}
    with pytest.raises(ValueError) as err:
        folder.check_resume(new)
    message = str(err.value)
    assert "the run there was made by fold scheme 1, smallct <= 0.3, this run by fold scheme 2" in message
    assert "fold assignment (data)" not in message and "--seed" not in message  # the flags are not the cause
