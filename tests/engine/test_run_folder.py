"""The run folder (smallct.engine.run_folder): the names of its files, run.json, resume checks and fold files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from smallct.engine.run_models import load_run


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


def test_another_context_input_is_not_resumed_into_a_run(tmp_path):
    """--context and its recipe are top-level settings of CVConfig (not data's or train's): a folder whose finished
    folds read single slices must not take folds of a --context 1 run (3 channels too: the checkpoints would load
    alike). Mutant caught: check_resume comparing only SETTINGS_THAT_CHANGE_RESULTS (0.6 as first written)."""
    from smallct.data.context import Context
    from smallct.engine.run_folder import RunFolder

    folder = RunFolder(tmp_path / "run")
    plain = {"config": {"arch": "a"}, "folds": {"assignment": [[0, 1]]}, "input": {"context": None}}
    folder.start(plain, resuming=False)
    folder.write_fold(0, 0, {"repeat": 0, "fold": 0})
    assert folder.check_resume({**plain, "input": {}}) is True  # a run.json of smallct <= 0.5: no context
    for ctx in (Context(1), Context(1, window="subdural"), Context(1, "all")):
        with pytest.raises(ValueError, match=r"other settings \(the 2.5D input \(--context"):
            folder.check_resume({**plain, "input": {"context": ctx.record()}})


def test_an_unweighted_rsna_run_is_not_resumed_with_the_metrics_weights(tmp_path):
    # a 0.5 RSNA run (no label_weights in run.json: trained unweighted) must not take folds trained with any x2;
    # a binary run (None both ways) resumes. Mutant caught: check_resume without the label_weights comparison.
    from smallct.engine.run_folder import RunFolder

    folder = RunFolder(tmp_path / "run")
    old = {"config": {"arch": "a"}, "folds": {"assignment": [[0, 1]]}, "input": {}}
    folder.start(old, resuming=False)
    folder.write_fold(0, 0, {"repeat": 0, "fold": 0})
    assert folder.check_resume({**old, "label_weights": None}) is True
    with pytest.raises(ValueError, match=r"the loss's label weights \(None there, \[2.0"):
        folder.check_resume({**old, "label_weights": [2.0, 1.0, 1.0, 1.0, 1.0, 1.0]})


def test_a_run_is_resumed_only_with_the_processes_that_trained_each_fold(tmp_path):
    # torchrun: 2 processes training each fold together (DDP) give other figures than 1 (their batches, their
    # BatchNorm statistics); a fold-parallel run trains each fold in one process, as a sequential run does, so the two
    # resume each other. A run.json of smallct <= 0.6 has no world_size: one process. Mutant caught: world_size left
    # out of MACHINE_THAT_CHANGES_RESULTS.
    from smallct.engine.run_folder import RunFolder

    folder = RunFolder(tmp_path / "run")
    ddp = {"config": {"arch": "a"}, "folds": {"assignment": [[0, 1]]}, "input": {}, "world_size": 2}
    folder.start(ddp, resuming=False)
    folder.write_fold(0, 0, {"repeat": 0, "fold": 0})
    assert folder.check_resume({**ddp, "processes": 2}) is True
    with pytest.raises(ValueError, match=r"2 processes trained each fold there \(torchrun\), 1 now: resume with "
                                         r"torchrun and 2 processes in all"):
        folder.check_resume({**ddp, "world_size": 1, "fold_parallel": True})
    old = {k: v for k, v in ddp.items() if k != "world_size"}
    folder.start(old, resuming=False)
    assert folder.check_resume({**old, "world_size": 1}) is True  # a 0.6 run: resumed by one process
    with pytest.raises(ValueError, match=r"one process trained each fold there, 2 now: resume without torchrun, or "
                                         r"under torchrun with --fold-parallel"):
        folder.check_resume({**old, "world_size": 2})  # ... and never by two (a mutant reading only keys present)
