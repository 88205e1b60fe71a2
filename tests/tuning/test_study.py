"""Tests of smallct.tune: the search space, a study's storage, pruning, failed trials, resuming,
two workers on one storage, and best_params.json read back by smallct.cv.

Every study is tiny: 24 phantom images at 32 px, resnet18 from random weights, 1 epoch, 2 folds.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from smallct import cv, tune
from smallct.cli.commands.tune import config_from_argv
from smallct.config.studies import TuneConfig
from smallct.tuning.report import summarize
from smallct.config.schema import build
from smallct.tuning.space import INGREDIENTS, default_space, parse_search_option, parse_space, suggest
from smallct.tuning.storage import default_storage, make_storage
from smallct.tuning.study import run_study
from smallct.config.run import CVConfig, DataConfig, TrainConfig
from smallct.datasets.folder import data_fingerprint, load_dataset
from smallct.datasets.phantom import write_phantom_png_set

REPO = Path(__file__).resolve().parents[1]
SPACE = {"lr": {"low": 1e-3, "high": 1e-2, "log": True}, "momentum": {"low": 0.85, "high": 0.95},
         "schedule": "constant", "optimizer": "sgd", "batch_size": 8}


def _base(data: Path, out: Path, epochs: int = 1) -> CVConfig:
    return CVConfig(arch="resnet18", weights="none", folds=2, seed=0, out=out, workers=1,
                    data=DataConfig(data=data, img_size=32), train=TrainConfig(epochs=epochs, tta=False))


def _flags(data: Path, out: Path) -> list[str]:
    return ["--data", str(data), "--img-size", "32", "--weights", "none", "--epochs", "1", "--folds", "2",
            "--workers", "1", "--no-tta", "--out", str(out), "--no-progress"]


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    return write_phantom_png_set(tmp_path_factory.mktemp("tune-data"), n=24, seed=0)


@pytest.fixture(scope="module")
def study_dir(tiny_set, tmp_path_factory) -> Path:
    """A finished study of 2 trials (no pruning) in the default SQLite storage."""
    out = tmp_path_factory.mktemp("study")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMALLCT_CACHE", str(tmp_path_factory.getbasetemp() / "smallct-cache"))
        cfg = TuneConfig(base=_base(tiny_set, out), space=parse_space(SPACE), trials=2, pruner="none",
                              startup_trials=2)
        run_study(cfg, progress=False, log=lambda *a: None)
    return out


def _load(out: Path, name: str = "smallct") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=default_storage(out))


# --- search space (no training) ---------------------------------------------------------------------


def test_space_values_are_typed_like_the_cv_flags():
    space = parse_space({"lr": {"low": "1e-4", "high": "1e-2", "log": True}, "step_size": {"low": 2, "high": 5},
                              "schedule": ["step", "cosine"], "tta": "false", "momentum": None})
    assert space["lr"] == {"low": 1e-4, "high": 1e-2, "log": True}  # YAML reads 1e-4 as text
    assert isinstance(space["step_size"]["low"], int) and space["tta"] is False and space["momentum"] is None
    with pytest.raises(ValueError, match="folds"):
        parse_space({"folds": [3, 5]})  # the objective's own settings are not searchable
    with pytest.raises(ValueError, match="not one of"):
        parse_space({"optimizer": ["sgd", "lion"]})
    with pytest.raises(ValueError, match="low"):
        parse_space({"lr": {"low": 0.0, "high": 0.1, "log": True}})


def test_search_option_narrows_keeps_log_scale_and_fixes():
    defaults = default_space(20)
    assert parse_search_option("lr=1e-3:1e-2", defaults) == ("lr", {"low": "1e-3", "high": "1e-2", "log": True})
    assert parse_search_option("gamma=0.1:0.3", defaults)[1]["log"] is False
    assert parse_search_option("schedule=step,cosine", defaults) == ("schedule", ["step", "cosine"])
    assert parse_search_option("weight-decay=0", defaults) == ("weight_decay", "0")


def test_the_rsna_ingredients_are_off_unless_asked_for_and_then_sampled():
    assert not set(INGREDIENTS) & set(config_from_argv([]).space)  # not searched by default
    asked = [f"--search={k.replace('_', '-')}" for k in INGREDIENTS if k != "cutmix"]
    cfg = config_from_argv([*asked, "--search", "optimizer", "--search", "schedule=cosine,flat_cos", "--cutmix", "1"])
    assert "cutmix" not in cfg.space and cfg.base.train.cutmix == 1.0  # a cv flag fixes a dimension
    assert cfg.space["optimizer"] == ["sgd", "adam", "adamw", "radam"]  # a bare choice setting: all its choices
    assert cfg.space["mixup"] == [0.0, 0.2, 0.4] and cfg.space["gauss_noise"] == {"low": 0.0, "high": 10.0,
                                                                                  "log": False}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = []
    for _ in range(30):
        trial = study.ask()
        params = suggest(trial, cfg.space, cfg.base)
        train = build(CVConfig, params, base=cfg.base).train  # a valid config
        assert ("flat_share" in params) == (params["schedule"] == "flat_cos")  # only where it applies
        drawn.append(params)
        study.tell(trial, 0.5)
    for key, spec in INGREDIENTS.items():
        if key == "cutmix":
            continue
        values = {p[key] for p in drawn if key in p}
        if isinstance(spec, list):
            assert values == set(spec), key
        else:
            assert min(values) >= spec["low"] and max(values) <= spec["high"] and len(values) > 10, key
    assert train.cutmix == 1.0 and {p["optimizer"] for p in drawn} >= {"radam"}
    with pytest.raises(ValueError, match="--search batch_size: no stock range"):
        parse_search_option("batch_size", default_space(20))


def test_conditional_settings_are_drawn_only_when_they_apply():
    space = parse_space({"optimizer": ["sgd", "adamw"], "momentum": {"low": 0.8, "high": 0.9},
                              "schedule": ["step", "cosine"], "step_size": {"low": 1, "high": 5}})
    base = CVConfig()
    drawn = suggest(optuna.trial.FixedTrial({"optimizer": "adamw", "schedule": "step", "step_size": 3}),
                         space, base)
    assert drawn == {"optimizer": "adamw", "schedule": "step", "step_size": 3}  # no momentum for AdamW
    drawn = suggest(optuna.trial.FixedTrial({"optimizer": "sgd", "momentum": 0.85, "schedule": "cosine"}),
                         space, base)
    assert drawn == {"optimizer": "sgd", "momentum": 0.85, "schedule": "cosine"}  # no step size for cosine


def test_cli_flags_fix_settings_and_bad_input_is_one_line(tmp_path, capsys):
    cfg = config_from_argv(["--lr", "0.01", "--search", "momentum=0.9:0.95"])
    assert "lr" not in cfg.space and cfg.base.train.lr == 0.01
    assert cfg.space["momentum"] == {"low": 0.9, "high": 0.95, "log": False} and cfg.space["optimizer"] == "sgd"
    assert tune.main(["--search", "folds=3,5", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("smallct.tune: error: --search folds=3,5: 'folds' cannot be searched") and "\n" not in err


# --- studies ----------------------------------------------------------------------------------------


def test_storage_holds_the_trials_with_their_settings_and_fold_figures(study_dir):
    study = _load(study_dir)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for t in study.trials:
        assert set(t.params) == {"lr", "momentum"}
        assert 1e-3 <= t.params["lr"] <= 1e-2 and 0.85 <= t.params["momentum"] <= 0.95
        assert t.user_attrs["settings"]["optimizer"] == "sgd" and t.user_attrs["settings"]["schedule"] == "constant"
        folds = [t.user_attrs["roc_auc_r0_f0"], t.user_attrs["roc_auc_r0_f1"]]
        assert t.value == pytest.approx(np.mean(folds))  # the objective is the mean over folds
        assert t.user_attrs["epochs_run"] == t.user_attrs["epochs_full"] == 2
        assert sorted(t.intermediate_values) == [1, 2]  # step = fold * epochs + epoch
        # without TTA the running figure after the last epoch is the objective itself
        assert t.intermediate_values[1] == pytest.approx(folds[0])
        assert t.intermediate_values[2] == pytest.approx(t.value)
    assert len({t.params["lr"] for t in study.trials}) == 2
    assert not any((study_dir / "trials" / str(t.number) / "checkpoints").exists() for t in study.trials)
    for name in ("best_params.json", "top_trials.csv", "trials.csv", "summary.json", "optimization_history.png",
                 "slice.png", "param_importances.png"):
        assert (study_dir / name).is_file(), name


def test_best_params_round_trip_into_cv(study_dir, tiny_set, tmp_path, capsys):
    best = json.loads((study_dir / "best_params.json").read_text())
    study = _load(study_dir)
    assert best["lr"] == study.best_params["lr"] and best["_value"] == study.best_value
    assert best["optimizer"] == "sgd" and best["epochs"] == 1 and "data" not in best
    assert "same data and folds" in best["_note"] and "nested" in best["_note"]
    out = tmp_path / "cv"
    assert cv.main(["--data", str(tiny_set), "--params", str(study_dir / "best_params.json"), "--out", str(out),
                    "--no-progress"]) == 0
    run = json.loads((out / "run.json").read_text())["config"]
    assert run["train"]["lr"] == best["lr"] and run["train"]["momentum"] == best["momentum"]
    assert run["train"]["optimizer"] == "sgd" and run["data"]["img_size"] == 32
    results = json.loads((out / "results.json").read_text())
    assert "same data and folds" in results["settings_source"]
    # the study chose on these very images: selection says so (smallct 0.3: "nothing ... is chosen on a test
    # fold"), and so does one console line pointing to smallct.nested
    assert best["_chosen_on"] == data_fingerprint(load_dataset(tiny_set))
    assert results["selection"].startswith("the --params settings were chosen or compared on these same 24 images")
    assert "optimistic" in results["selection"] and "nothing (epoch, threshold, setting)" not in results["selection"]
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: the --params")]
    assert len(notes) == 1 and "these same 24 images" in notes[0] and "python -m smallct.nested" in notes[0]
    # the same settings on the same folds give the best trial's figure again
    assert results["mean_std_over_folds"]["roc_auc"]["mean"] == pytest.approx(study.best_value, abs=1e-6)


def test_a_resumed_study_adds_trials(study_dir, tiny_set):
    before = [(t.number, t.params, t.value) for t in _load(study_dir).trials]
    flags = _flags(tiny_set, study_dir) + ["--trials", "3", "--resume", "--pruner", "none", "--no-report",
                                           "--search", "lr=1e-3:1e-2", "--search", "momentum=0.85:0.95",
                                           "--search", "schedule=constant", "--search", "batch_size=8"]
    assert tune.main(flags) == 0
    after = _load(study_dir).trials
    assert [(t.number, t.params, t.value) for t in after[:2]] == before
    assert len(after) == 3 and after[2].state == TrialState.COMPLETE
    assert after[2].params["lr"] not in [p["lr"] for _, p, _ in before]  # the sampler was re-seeded
    # other fixed settings are refused: the trials would not be comparable
    assert tune.main(_flags(tiny_set, study_dir)[:-1] + ["--epochs", "2", "--trials", "5", "--no-progress"]) == 2


def test_a_trial_worse_than_the_median_is_pruned(tiny_set, tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    study = optuna.create_study(storage=default_storage(out), study_name="smallct", direction="maximize")
    for lr in (2e-3, 5e-3):  # two finished trials that reported an unbeatable running figure at every step
        study.add_trial(optuna.trial.create_trial(
            params={"lr": lr}, distributions={"lr": FloatDistribution(1e-3, 1e-2, log=True)}, value=1.0,
            intermediate_values={1: 2.0, 2: 2.0}, user_attrs={"epochs_run": 2, "epochs_full": 2}))
    cfg = TuneConfig(base=_base(tiny_set, out), space=parse_space(SPACE), trials=3, pruner="median",
                          startup_trials=2, prune_after=0, report=False)
    study = run_study(cfg, progress=False, log=lambda *a: None)
    trial = study.trials[2]
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["epochs_run"] == 1 and trial.user_attrs["pruned_at"].startswith("fold 1 epoch 1")
    assert list(trial.intermediate_values) == [1] and "roc_auc_r0_f1" not in trial.user_attrs
    summary = summarize(study)
    assert summary["pruned"] == 1 and summary["epochs_trained"] == 5 and summary["epochs_without_pruning"] == 6


def test_a_failed_trial_is_recorded_and_the_study_goes_on(tiny_set, tmp_path):
    cfg = TuneConfig(base=_base(tiny_set, tmp_path / "study"),
                          space=parse_space({**SPACE, "lr": 1e12, "batch_size": 4}), trials=2, pruner="none")
    study = run_study(cfg, progress=False, log=lambda *a: None)
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2  # the second trial ran after the first failed
    assert all(t.user_attrs["fail_reason"].startswith("FloatingPointError: loss is") for t in study.trials)
    assert not (tmp_path / "study" / "best_params.json").exists()


def test_two_worker_processes_share_one_storage(tiny_set, tmp_path):
    journal = tmp_path / "study.journal"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-m", "smallct.tune", *_flags(tiny_set, tmp_path / f"w{i}"),
                               "--storage", f"journal:{journal}", "--worker", str(i), "--trials", "50",
                               "--timeout", "1", "--pruner", "none", "--no-report", "--search", "batch_size=8"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    study = optuna.load_study(study_name="smallct", storage=make_storage(f"journal:{journal}"))
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) >= 2 and sorted(t.number for t in study.trials) == list(range(len(study.trials)))
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers ran trials of the one study
    assert len({t.params["lr"] for t in trials}) == len(trials)  # different sampler seeds, no duplicate draws
    for i in range(2):  # each worker's trial folders hold only its own trials
        numbers = {int(p.name) for p in (tmp_path / f"w{i}" / "trials").iterdir()}
        assert numbers and all(f"(worker {i})" in study.trials[n].user_attrs["worker"] for n in numbers)


def test_two_workers_started_together_stop_at_the_target(tiny_set, tmp_path):
    # 0.3.0: each worker stopped once it saw --trials finished, while the other's trial still ran (one too many),
    # and worker 0 told them to give each worker its own --worker index though they had 0 and 1. Mutants caught:
    # the hint printed whenever another trial runs; running trials left out of the count (only when the two
    # processes overlap in time: the deterministic counts are test_a_live_workers_running_trial_counts_...).
    journal = tmp_path / "study.journal"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-m", "smallct.tune", *_flags(tiny_set, tmp_path / f"w{i}"),
                               "--storage", f"journal:{journal}", "--worker", str(i), "--trials", "2",
                               "--pruner", "none", "--no-report", "--search", "batch_size=8"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    trials = optuna.load_study(study_name="smallct", storage=make_storage(f"journal:{journal}")).trials
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 2, logs
    # a trial asked for in the instant both workers ended one is failed at once, as not needed
    assert all(t.user_attrs["fail_reason"].startswith("not needed") for t in trials if t.state == TrialState.FAIL)
    assert not any("--worker index" in log for log in logs), logs


def _journal_cfg(data: Path, out: Path, journal: str, trials: int = 1) -> TuneConfig:
    return TuneConfig(base=_base(data, out), space=parse_space(SPACE), trials=trials, pruner="none", storage=journal,
                      report=False)


def test_a_live_workers_running_trial_counts_and_a_dead_ones_does_not(tiny_set, tmp_path, capsys):
    # 0.3.0 left running trials out of the count (a second worker ran one trial too many); the first cut of the
    # fix counted them for ever, a dead worker's too when on another machine. Here, deterministically: another
    # live process runs trial 0 -> --trials 1 runs nothing; once it is gone its trial no longer counts and is
    # named. Mutants caught: running trials not counted (a trial runs at once); a gone process's trial counted.
    journal = f"journal:{tmp_path / 'study.journal'}"
    study = optuna.create_study(study_name="smallct", storage=make_storage(journal), direction="maximize")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        study.ask().set_user_attr("worker", f"{socket.gethostname()}/{sleeper.pid} (worker 1)")
        run_study(_journal_cfg(tiny_set, tmp_path / "w0", journal), progress=False)
        assert [t.state for t in study.trials] == [TrialState.RUNNING]  # nothing new: the live worker's trial counts
        assert "1 trials so far, 0 to run" in capsys.readouterr().out
    finally:
        sleeper.kill()
        sleeper.wait()
    run_study(_journal_cfg(tiny_set, tmp_path / "w0", journal), progress=False)
    assert [t.state for t in study.trials] == [TrialState.RUNNING, TrialState.COMPLETE]
    out = capsys.readouterr().out
    assert ("note: running trials that no longer count toward --trials: trial 0 (its process on this machine is "
            "gone)\n") in out and "1 to run" in out


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")  # its ask()
def test_a_trial_whose_heartbeat_stopped_is_failed_before_the_count(tiny_set, tmp_path, capsys):
    # The reviewer's case: a database storage, --trials N, N - 1 finished and one trial of a killed worker on
    # another machine: Optuna fails stale trials only inside optimize, which a rerun with "0 to run" never entered,
    # so the study stayed at N - 1 for ever. Mutant caught: no fail_stale_trials before the count.
    out = tmp_path / "out"
    out.mkdir()
    storage = make_storage(default_storage(out))
    study = optuna.create_study(study_name="smallct", storage=storage, direction="maximize")
    trial = study.ask()
    trial.set_user_attr("worker", "elsewhere/12 (worker 1)")  # only its heartbeat can tell whether it lives
    storage.record_heartbeat(trial._trial_id)
    with sqlite3.connect(out / "optuna.db") as db:  # its last heartbeat, an hour ago
        db.execute("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-1 hour')")
    cfg = TuneConfig(base=_base(tiny_set, out), space=parse_space(SPACE), trials=1, pruner="none", report=False)
    run_study(cfg, progress=False)
    states = [t.state for t in _load(out).trials]
    assert states[0] == TrialState.FAIL and states.count(TrialState.COMPLETE) == 1, states
    assert ("note: running trials that no longer count toward --trials: trial 0 (no heartbeat for over 180 s: "
            "marked failed)") in capsys.readouterr().out


def test_a_trial_that_another_worker_made_unneeded_prints_nothing(tiny_set, tmp_path, capfd):
    # Between this worker's count and its first trial another worker asks for the last trial: this one's trial
    # fails at once as not needed, without a "trial 1 fail" line, a step of the bar or Optuna's warning with its
    # traceback. Mutants caught: the line or the bar step left in; Optuna's warnings not filtered.
    journal = f"journal:{tmp_path / 'study.journal'}"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])

    def log(*args, **kwargs):
        print(*args, **kwargs)
        if str(args[0]).startswith("smallct.tune: study"):  # counted, not yet optimizing: the other worker asks
            other = optuna.load_study(study_name="smallct", storage=make_storage(journal)).ask()
            other.set_user_attr("worker", f"{socket.gethostname()}/{sleeper.pid} (worker 1)")

    try:
        study = run_study(_journal_cfg(tiny_set, tmp_path / "w0", journal), progress=True, log=log)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert [t.state for t in study.trials] == [TrialState.RUNNING, TrialState.FAIL]
    assert study.trials[1].user_attrs["fail_reason"].startswith("not needed: --trials 1")
    captured = capfd.readouterr()
    assert "0 trials so far, 1 to run" in captured.out and "trial 1 fail" not in captured.out
    assert "Trial 1 failed" not in captured.err and "NotNeeded" not in captured.err, captured.err
    both = captured.out + captured.err  # the bar's stream, and stdout where a trial line redraws it
    bar = [line for line in both.splitlines() if line.startswith("study smallct")]
    assert bar and "0/1" in bar[-1] and "1/1" not in both, both


def test_a_library_study_without_a_parsed_space_uses_typed_defaults(tiny_set, tmp_path):
    # run_study(space=None) takes the default space; a raw space (YAML reads 1e-3 as text) is typed like the flags
    for space in (None, {"lr": {"low": "1e-3", "high": "1e-2", "log": True}, "batch_size": "8"}):
        cfg = TuneConfig(base=_base(tiny_set, tmp_path / str(space is None)), space=space, trials=1,
                              pruner="none", report=False)
        trial = run_study(cfg, progress=False, log=lambda *a: None).trials[0]
        assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("fail_reason")
        expected = {"lr", "momentum", "weight_decay", "schedule"} if space is None else {"lr"}
        low, high = (1e-4, 0.1) if space is None else (1e-3, 1e-2)
        assert expected <= set(trial.params) and low <= trial.params["lr"] <= high


def test_the_objectives_are_the_choices_of_the_metric_flag():
    import typing

    from smallct.config.studies import Objective
    from smallct.tuning.study import OBJECTIVES

    assert tuple(OBJECTIVES) == typing.get_args(Objective)


def test_best_params_name_a_weights_yaml_from_any_folder(tmp_path, monkeypatch):
    # best_params.json is read from the study folder, where `weights: lab.yaml` (named from the working folder)
    # would be looked for (mutant: cv_settings recording the weights as given)
    from smallct.config.run import CVConfig
    from smallct.tuning.space import cv_settings

    monkeypatch.chdir(tmp_path)
    assert cv_settings(build(CVConfig, {"weights": "lab.yaml"}))["weights"] == str(tmp_path / "lab.yaml")
    assert cv_settings(build(CVConfig, {"weights": "imagenet"}))["weights"] == "imagenet"
