"""Tests of smallct.engine.tracking: what a cv, tune, nested and curve run writes for TensorBoard (read back with
TensorBoard's own event reader) and for MLflow (a local sqlite store, read back with ``MlflowClient``).

Every run is tiny: phantom images at 32 px, resnet18 from random weights, 2 folds, 1-2 epochs.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import metadata as hparams_metadata

from smallct.cv import main
from smallct.config.run import CVConfig, DataConfig, TrainConfig, to_dict
from smallct.config.schema import flat
from smallct.config.studies import CurveConfig, NestedConfig, TuneConfig
from smallct.datasets.phantom import write_phantom_png_set
from smallct.engine.cv import run_cv
from smallct.engine.nested import _record, run_nested
from smallct.engine.tracking import EPOCH_TAGS, HPARAM_METRICS, Tracker
from smallct.studies.curve import run_curve, track_curve
from smallct.tuning.space import parse_space
from smallct.tuning.study import run_study

CURVES = ["loss/train", "loss/test_fold", "accuracy/train", "accuracy/test_fold", "roc_auc/test_fold", "lr"]
SPACE = {"lr": {"low": 1e-3, "high": 1e-2, "log": True}, "schedule": "constant", "optimizer": "sgd",
         "momentum": 0.9, "batch_size": 8}

# A third-party deprecation, not smallct's: mlflow's sqlite store (SQLAlchemy models) still uses the ``noload``
# loader strategy that SQLAlchemy 2.1 deprecates; it is warned once, by whichever test first opens a store.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:sqlalchemy.exc.SADeprecationWarning")


def _cfg(data: Path, out: Path, epochs: int = 2, **kw) -> CVConfig:
    return CVConfig(arch="resnet18", weights="none", folds=2, seed=0, device="cpu", out=out, workers=1,
                    data=DataConfig(data=data, img_size=32), train=TrainConfig(epochs=epochs, batch_size=8, tta=False),
                    **kw)


def _events(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder))
    events.Reload()
    return events


def _session(events: EventAccumulator) -> dict:
    """The hparams of the HParams session in ``events``: {name: value}."""
    content = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}


def _hparams_view(logdir: Path, reorder=None) -> tuple[dict, list[str]]:
    """What TensorBoard's HParams view shows for ``tensorboard --logdir LOGDIR``, as its own backend computes it:
    ({setting: its type's name}, [metric column]); ``reorder`` (a list of runs -> the same in another order): the
    order in which the backend meets the runs (it takes the first declaration it finds)."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context

    runs = plugin_event_multiplexer.EventMultiplexer().AddRunsFromDirectory(str(logdir))
    runs.Reload()
    backend = backend_context.Context(base_plugin.TBContext(
        logdir=str(logdir), multiplexer=runs, data_provider=data_provider.MultiplexerDataProvider(runs, str(logdir))))
    request = context.RequestContext()
    content = backend.hparams_metadata(request, "")
    content = {run: content[run] for run in (reorder or list)(list(content))}
    experiment = backend.experiment_from_metadata(request, "", True, content,
                                                  backend.hparams_from_data_provider(request, "", limit=None))
    return ({h.name: api_pb2.DataType.Name(h.type) for h in experiment.hparam_infos},
            [m.name.tag for m in experiment.metric_infos])


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    return write_phantom_png_set(tmp_path_factory.mktemp("tracking-data"), n=24, seed=0)


def test_cv_run_writes_curves_per_fold_hparams_and_figures_for_tensorboard(tmp_path, phantom_dir):
    runs = tmp_path / "runs"
    result = run_cv(_cfg(phantom_dir, runs / "cv"), progress=False, log=lambda *a: None)
    tb = runs / "cv" / "tensorboard"
    history = pd.read_csv(runs / "cv" / "history.csv")
    for fold in (0, 1):
        events = _events(tb / f"r0_f{fold}")
        assert set(CURVES) <= set(events.Tags()["scalars"])
        own = history[history["fold"] == fold]
        for column, tag in EPOCH_TAGS.items():
            if column in own:
                scalars = events.Scalars(tag)
                assert [s.step for s in scalars] == [1, 2], tag  # one point per epoch, at the epoch
                assert [s.value for s in scalars] == pytest.approx(own[column].tolist(), rel=1e-5), tag
        per_fold = result.results["per_fold"][fold]
        assert events.Scalars("test_fold/accuracy")[0].value == pytest.approx(per_fold["accuracy"])

    run = _events(tb)
    pooled = result.results["pooled_oof"]
    assert run.Scalars("pooled/roc_auc")[0].value == pytest.approx(pooled["roc_auc"])
    low, high = result.results["pooled_oof_ci95"]["accuracy"]
    assert run.Scalars("pooled/accuracy_ci95_low")[0].value == pytest.approx(low)
    assert run.Scalars("pooled/accuracy_ci95_high")[0].value == pytest.approx(high)
    assert run.Scalars("mean_over_folds/accuracy")[0].value == pytest.approx(
        result.results["mean_std_over_folds"]["accuracy"]["mean"])
    hparams = _session(run)
    assert hparams["arch"] == "resnet18" and hparams["lr"] == pytest.approx(1e-3) and hparams["folds"] == 2
    assert hparams["tta"] is False and hparams["img_size"] == 32  # a bool as a bool (0.3.0: the number 0)
    assert "class_names" not in hparams and "labels" not in hparams  # unset settings: no value (0.3.0: "none")
    # the HParams view of `tensorboard --logdir runs`: the few final figures as its columns (0.3.0: 55, every
    # scalar of the run and its folds), each a figure the run has (a binary run: all but the multi-label ones)
    settings, columns = _hparams_view(runs)
    assert columns == list(HPARAM_METRICS) and len(columns) <= 10
    assert {c for c in columns if c in run.Tags()["scalars"]} == set(HPARAM_METRICS) - {
        "pooled/mean_auc", "pooled/weighted_log_loss", "mean_over_folds/mean_auc"}
    assert settings["tta"] == "DATA_TYPE_BOOL" and settings["lr"] == "DATA_TYPE_FLOAT64"
    assert settings["class_names"] == "DATA_TYPE_STRING"  # a column of every run, though this one leaves it unset
    end = hparams_metadata.parse_session_end_info_plugin_data(
        run.PluginTagToContent(hparams_metadata.PLUGIN_NAME)[hparams_metadata.SESSION_END_INFO_TAG])
    assert end.status == 1  # STATUS_SUCCESS
    assert set(run.Tags()["images"]) == {"figures/curves", "figures/roc", "figures/confusion"}
    image = run.Images("figures/roc")[0]
    assert image.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and image.width > 100

    # tensorboard --logdir runs: the run and each of its folds are runs of their own
    everything = EventMultiplexer().AddRunsFromDirectory(str(runs))
    everything.Reload()
    assert {"cv/tensorboard", "cv/tensorboard/r0_f0", "cv/tensorboard/r0_f1"} <= set(everything.Runs())


def test_hparams_settings_keep_their_types_and_unset_ones_are_left_out(tmp_path):
    # mutants caught: a bool logged as a number (0.3.0, through torch's hparams), None as "none" (0.3.0), a
    # setting whose text is "none" (--weights none) dropped with the unset ones, no declared metric columns
    with Tracker.open(tmp_path / "run" / "tensorboard", None, "run") as tracker:
        tracker.start({"tta": True, "crop": False, "lr": 0.01, "folds": 5, "weights": "none", "class_names": None,
                       "sizes": [4, 8], "out": tmp_path / "run", "mlflow": "sqlite:///x.db"})
        tracker.finish({"pooled/roc_auc": 0.75, "std_over_folds/roc_auc": 0.05})
    hparams = _session(_events(tmp_path / "run" / "tensorboard"))
    assert hparams == {"tta": True, "crop": False, "lr": 0.01, "folds": 5, "weights": "none", "sizes": "4,8",
                       "out": str(tmp_path / "run")}
    assert type(hparams["tta"]) is bool and type(hparams["crop"]) is bool
    settings, columns = _hparams_view(tmp_path)
    assert {k: settings[k] for k in ("tta", "crop", "lr", "folds", "weights", "out")} == {
        "tta": "DATA_TYPE_BOOL", "crop": "DATA_TYPE_BOOL", "lr": "DATA_TYPE_FLOAT64", "folds": "DATA_TYPE_FLOAT64",
        "weights": "DATA_TYPE_STRING", "out": "DATA_TYPE_STRING"}
    assert set(settings) == set(flat(CVConfig())) - {"mlflow"}  # the cv settings' columns, set or not
    assert columns == list(HPARAM_METRICS)  # not std_over_folds/roc_auc, though it is a scalar of the run


def _experiment(events: EventAccumulator):
    """The HParams experiment declared in ``events``, or None."""
    content = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME).get(hparams_metadata.EXPERIMENT_TAG)
    return None if content is None else hparams_metadata.parse_experiment_plugin_data(content)


def test_hparams_columns_are_the_same_whichever_run_tensorboard_reads_first(tmp_path):
    # TensorBoard takes the first HParams declaration it meets for the whole logdir. Mutants caught: each run
    # declaring only the settings it sets (a run without --img-size or --task hid those columns for every run), a
    # learning curve declaring its own settings (all of cv's columns gone when it is read first)
    runs = tmp_path / "runs"
    for name, cfg in (("set", CVConfig(task="binary", data=DataConfig(img_size=32, class_names=["a", "b"]))),
                      ("unset", CVConfig())):
        with Tracker.open(runs / name / "tensorboard", None, name) as tracker:
            tracker.start(flat(cfg))
            tracker.finish({"pooled/roc_auc": 0.75})
    summary = pd.DataFrame([{"series": "probe / none", "n": 4, **{f"{m}_{c}": 0.5 for m in ("accuracy",
                            "balanced_accuracy", "roc_auc") for c in ("pooled", "ci_low", "ci_high")}}])
    track_curve(Tracker.open(runs / "curve" / "tensorboard", None, "curve"), CurveConfig(sizes=[4], weights=["none"]),
                summary, runs / "curve")
    declared = {name: _experiment(_events(runs / name / "tensorboard")) for name in ("set", "unset", "curve")}
    assert declared["set"] == declared["unset"] and declared["curve"] is None
    assert _session(_events(runs / "curve" / "tensorboard"))["sizes"] == "4"  # the curve's settings: its session
    assert "img_size" not in _session(_events(runs / "unset" / "tensorboard"))  # unset: still no value
    views = [_hparams_view(runs, lambda found, order=order: sorted(found, key=order.index))
             for order in itertools.permutations(["set/tensorboard", "unset/tensorboard", "curve/tensorboard"])]
    settings, columns = views[0]
    assert all(view == views[0] for view in views)
    assert set(settings) == set(flat(CVConfig())) - {"mlflow"} and columns == list(HPARAM_METRICS)
    assert settings["img_size"] == "DATA_TYPE_FLOAT64" and settings["task"] == "DATA_TYPE_STRING"
    assert settings["class_names"] == "DATA_TYPE_STRING" and settings["amp"] == "DATA_TYPE_BOOL"


def test_without_tensorboard_or_mlflow_nothing_is_written(tmp_path, tiny_set):
    tracker = Tracker.open(None, None, "quiet")
    with tracker:
        tracker.start({"lr": 0.1})
        tracker.epoch("r0_f0", {"epoch": 1, "train_loss": 0.5})
        tracker.finish({"pooled/accuracy": 0.5}, files=tmp_path)
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "run"
    code = main(["--data", str(tiny_set), "--weights", "none", "--img-size", "32", "--epochs", "1", "--folds", "2",
                 "--workers", "1", "--no-tta", "--device", "cpu", "--out", str(out), "--no-progress",
                 "--no-tensorboard"])
    assert code == 0 and (out / "results.json").is_file()
    assert not (out / "tensorboard").exists()
    assert json.loads((out / "run.json").read_text())["config"]["tensorboard"] is False


def test_mlflow_without_mlflow_installed_is_one_line_before_the_run(tmp_path, tiny_set, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)  # as where the extra is not installed
    with pytest.raises(ValueError, match=r"pip install smallct\[mlflow\]"):
        Tracker.open(None, f"sqlite:///{tmp_path}/mlflow.db", "run")
    out = tmp_path / "run"
    code = main(["--data", str(tiny_set), "--weights", "none", "--img-size", "32", "--epochs", "1", "--folds", "2",
                 "--workers", "1", "--out", str(out), "--no-progress", "--mlflow", f"sqlite:///{tmp_path}/m.db"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install smallct[mlflow]" in err[0]
    assert not (out / "run.json").exists()  # stopped before the run folder was written


def _mlflow(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # a store another tool made may keep artifacts in ./mlruns: not in the repository
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, MlflowClient(tracking_uri=uri)


def _runs(client, parent: str | None = None) -> list:
    experiment = client.get_experiment_by_name("smallct")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]


def test_mlflow_logs_params_epoch_histories_nested_folds_and_artifacts(tmp_path, tiny_set, monkeypatch):
    uri, client = _mlflow(tmp_path, monkeypatch)
    seen = {}

    def statuses(repeat: int, fold: int, record: dict) -> None:  # the MLflow runs while fold r0_f1 trains
        if (fold, record["epoch"]) == (1, 1):
            experiment = client.get_experiment_by_name("smallct").experiment_id
            seen.update({r.info.run_name: r.info.status for r in client.search_runs([experiment])})

    result = run_cv(_cfg(tiny_set, tmp_path / "cv", mlflow=uri), progress=False, log=lambda *a: None,
                    on_epoch=statuses)
    assert seen == {f"{tmp_path.name}/cv": "RUNNING", "r0_f0": "FINISHED", "r0_f1": "RUNNING"}  # ended with its fold
    (run,) = _runs(client)
    assert run.info.run_name == f"{tmp_path.name}/cv" and run.info.status == "FINISHED"
    assert run.data.params["arch"] == "resnet18" and float(run.data.params["lr"]) == 1e-3
    assert run.data.params["folds"] == "2" and run.data.params["class_names"] == "none"
    assert run.data.metrics["pooled/roc_auc"] == pytest.approx(result.results["pooled_oof"]["roc_auc"])
    low, high = result.results["pooled_oof_ci95"]["roc_auc"]
    assert (run.data.metrics["pooled/roc_auc_ci95_low"], run.data.metrics["pooled/roc_auc_ci95_high"]) == \
        pytest.approx((low, high))

    folds = {r.info.run_name: r for r in _runs(client, run.info.run_id)}
    assert set(folds) == {"r0_f0", "r0_f1"}
    history = result.history
    for name, fold in folds.items():
        assert fold.info.status == "FINISHED"
        losses = client.get_metric_history(fold.info.run_id, "loss/train")
        assert [m.step for m in sorted(losses, key=lambda m: m.step)] == [1, 2]
        own = history[history["fold"] == int(name[-1])]
        assert [m.value for m in sorted(losses, key=lambda m: m.step)] == pytest.approx(own["train_loss"].tolist())
        assert len(client.get_metric_history(fold.info.run_id, "roc_auc/test_fold")) == 2

    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"run.json", "results.json", "oof.csv", "history.csv", "roc.png", "confusion.png", "curves.png", "folds",
            "tensorboard"} <= files
    assert "checkpoints" not in files
    assert {a.path for a in client.list_artifacts(run.info.run_id, "folds")} == {"folds/r0_f0.json", "folds/r0_f1.json"}


def test_tune_study_shows_each_trial_in_tensorboard_and_as_nested_mlflow_runs(tmp_path, tiny_set, monkeypatch):
    uri, client = _mlflow(tmp_path, monkeypatch)
    out = tmp_path / "study"
    cfg = TuneConfig(base=_cfg(tiny_set, out, epochs=1, mlflow=uri), space=parse_space(SPACE), trials=2,
                     pruner="none", startup_trials=2, report=False)
    study = run_study(cfg, progress=False, log=lambda *a: None)
    values = {t.number: t.value for t in study.trials}
    assert len(values) == 2

    everything = EventMultiplexer().AddRunsFromDirectory(str(out))
    everything.Reload()
    assert {"trials/0/tensorboard", "trials/1/tensorboard"} <= set(everything.Runs())
    for number, value in values.items():
        events = _events(out / "trials" / str(number) / "tensorboard")
        assert _session(events)["lr"] == pytest.approx(study.trials[number].params["lr"])
        assert events.Scalars("mean_over_folds/roc_auc")[0].value == pytest.approx(value)  # the objective

    (parent,) = _runs(client)
    assert parent.info.run_name == "tune smallct" and parent.data.params["trials"] == "2"
    objective = sorted(client.get_metric_history(parent.info.run_id, "objective"), key=lambda m: m.step)
    assert [m.step for m in objective] == [0, 1]  # one point per trial, at its number
    assert [m.value for m in objective] == pytest.approx([values[0], values[1]])
    trials = {r.info.run_name: r for r in _runs(client, parent.info.run_id)}
    assert set(trials) == {"trials/0", "trials/1"}
    for name, trial in trials.items():
        assert trial.info.status == "FINISHED"
        assert float(trial.data.params["lr"]) == pytest.approx(study.trials[int(name[-1])].params["lr"])
        assert trial.data.metrics["mean_over_folds/roc_auc"] == pytest.approx(values[int(name[-1])])
        assert {r.info.run_name for r in _runs(client, trial.info.run_id)} == {"r0_f0", "r0_f1"}


def test_nested_and_curve_runs_write_event_files(tmp_path, tiny_set):
    candidate = _cfg(tiny_set, tmp_path / "unused", epochs=1)
    result = run_nested(NestedConfig(candidates={"a": candidate}, inner_folds=2, folds=2, out=tmp_path / "nested"),
                        progress=False, log=lambda *a: None)
    tb = tmp_path / "nested" / "tensorboard"
    outer = _events(tb)
    assert _session(outer)["candidates"] == "a" and _session(outer)["inner_folds"] == 2
    assert outer.Scalars("pooled/accuracy")[0].value == pytest.approx(result.results["pooled_oof"]["accuracy"])
    assert [s.step for s in _events(tb / "r0_f0").Scalars("loss/train")] == [1]  # the refit's epochs
    inner = _events(tmp_path / "nested" / "inner" / "r0_f0" / "a" / "tensorboard" / "r0_f1")
    assert "loss/train" in inner.Tags()["scalars"] and "loss/test_fold" not in inner.Tags()["scalars"]

    curve = run_curve(CurveConfig(data=DataConfig(data=tiny_set, img_size=32), arch="resnet18", weights=["none"],
                                  sizes=[4, 8], folds=2, device="cpu", out=tmp_path / "curve"),
                      progress=False, log=lambda *a: None)
    events = _events(tmp_path / "curve" / "tensorboard")
    accuracy = events.Scalars("accuracy/probe_none")
    assert [s.step for s in accuracy] == [4, 8]
    # the pooled figure and its interval, as curve.png draws them
    assert [s.value for s in accuracy] == pytest.approx(curve.summary["accuracy_pooled"].tolist())
    assert [s.value for s in events.Scalars("accuracy_ci95_low/probe_none")] == pytest.approx(
        curve.summary["accuracy_ci_low"].tolist())
    assert "figures/curve" in events.Tags()["images"] and _session(events)["sizes"] == "4,8"


def test_mlflow_run_of_a_pruned_trial_ends_killed_its_finished_folds_finished(tmp_path, monkeypatch):
    uri, client = _mlflow(tmp_path, monkeypatch)
    study = Tracker.open(None, uri, "tune s")
    with study:
        trial = Tracker.open(None, uri, "trials/0", parent=study)
        with pytest.raises(optuna.TrialPruned), trial:  # as smallct.tuning.study's reporter stops a trial
            trial.start({"lr": 0.1})
            trial.epoch("r0_f0", {"epoch": 1, "train_loss": 0.5})
            trial.end_fold("r0_f0")
            trial.epoch("r0_f1", {"epoch": 1, "train_loss": 0.4})
            raise optuna.TrialPruned("pruned at epoch 1")
    (parent,) = _runs(client)
    (run,) = _runs(client, parent.info.run_id)
    assert (parent.info.status, run.info.status) == ("FINISHED", "KILLED")
    assert {r.info.run_name: r.info.status for r in _runs(client, run.info.run_id)} == \
        {"r0_f0": "FINISHED", "r0_f1": "KILLED"}


def test_failing_mlflow_and_tensorboard_warn_once_each_and_the_run_finishes(tmp_path, tiny_set, monkeypatch, capsys):
    uri, client = _mlflow(tmp_path, monkeypatch)
    out = tmp_path / "cv"
    out.mkdir()
    (out / "tensorboard").write_text("a file where the event folder goes: TensorBoard fails at its first write\n")

    def delete_fold_run(repeat: int, fold: int, record: dict) -> None:
        """Someone deletes fold r0_f1's MLflow run (in the UI) while it trains: its next epoch cannot be logged."""
        if (fold, record["epoch"]) == (1, 1):
            experiment = client.get_experiment_by_name("smallct").experiment_id
            (run,) = client.search_runs([experiment], "attributes.run_name = 'r0_f1'")
            client.delete_run(run.info.run_id)

    result = run_cv(_cfg(tiny_set, out, mlflow=uri), progress=False, log=lambda *a: None, on_epoch=delete_fold_run)
    assert sorted(p.name for p in (out / "folds").iterdir()) == ["r0_f0.json", "r0_f1.json"]
    assert len(json.loads((out / "results.json").read_text())["per_fold"]) == 2 == len(result.results["per_fold"])
    assert (out / "roc.png").is_file() and (out / "tensorboard").is_file()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 2, warnings  # one per destination, then it is off
    tensorboard, mlflow = sorted(warnings, key=lambda line: "MLflow" in line)
    assert "TensorBoard" in tensorboard and "writing the settings failed" in tensorboard
    assert f"MLflow ({uri})" in mlflow and "fold r0_f1 at step 2 failed" in mlflow and "training goes on" in mlflow
    # what MLflow got before the failure stays there: fold r0_f0, finished with its fold
    (parent,) = _runs(client)
    folds = {r.info.run_name: r for r in _runs(client, parent.info.run_id)}
    assert set(folds) == {"r0_f0"} and folds["r0_f0"].info.status == "FINISHED"
    assert len(client.get_metric_history(folds["r0_f0"].info.run_id, "loss/train")) == 2


def test_unreachable_mlflow_uri_is_one_quick_line_before_the_run(tmp_path, tiny_set, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)  # the tracker sets it: SMALLCT_OFFLINE=1 here
    with socket.socket() as listener:  # a free port on loopback; nothing listens there once the block ends
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    out = tmp_path / "run"
    start = time.perf_counter()
    code = main(["--data", str(tiny_set), "--weights", "none", "--img-size", "32", "--epochs", "1", "--folds", "2",
                 "--workers", "1", "--out", str(out), "--no-progress",
                 "--mlflow", f"http://smallct:secret@127.0.0.1:{port}"])
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and seconds < 20, (seconds, err)
    assert f"--mlflow http://smallct:***@127.0.0.1:{port}: cannot reach" in err[0] and "secret" not in err[0]
    # short, and why in a few words (0.3.0: ~400 characters of urllib3's HTTPConnectionPool... text)
    assert len(err[0]) < 200 and "(connection refused)" in err[0] and "HTTPConnection" not in err[0], err[0]
    assert not (out / "run.json").exists()  # stopped before the run folder was written
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"


def test_the_mlflow_password_is_not_written_into_run_json_or_nested_records(tmp_path):
    uri = "http://smallct:secret@mlflow.lab:5000"
    cfg = CVConfig(mlflow=uri, out=tmp_path / "cv")
    assert to_dict(cfg)["mlflow"] == "http://smallct:***@mlflow.lab:5000"  # run.json's "config" (and a trial's)
    nested = NestedConfig(candidates={"a": cfg, "b": cfg}, inner_folds=2, folds=2, out=tmp_path / "nested")
    assert "secret" not in json.dumps(_record(nested))  # nested.json and results.json's "nested"
    assert to_dict(CurveConfig(mlflow=uri))["mlflow"] == "http://smallct:***@mlflow.lab:5000"  # curve.json
    for plain in ("sqlite:///mlflow.db", "http://mlflow.lab:5000", "http://smallct@mlflow.lab/a@b"):
        assert to_dict(CVConfig(mlflow=plain))["mlflow"] == plain


def test_a_resumed_fold_draws_one_curve_in_tensorboard(tmp_path, tiny_set):
    out = tmp_path / "cv"

    def interrupt(repeat: int, fold: int, record: dict) -> None:
        if (fold, record["epoch"]) == (1, 2):  # Ctrl-C after fold r0_f1's 2nd epoch was logged
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_cv(_cfg(tiny_set, out), progress=False, log=lambda *a: None, on_epoch=interrupt)
    assert not (out / "folds" / "r0_f1.json").exists()
    result = run_cv(_cfg(tiny_set, out), progress=False, log=lambda *a: None)  # resumes: r0_f1 trains again
    for fold in (0, 1):
        events = _events(out / "tensorboard" / f"r0_f{fold}")
        own = result.history[result.history["fold"] == fold]
        for column, tag in EPOCH_TAGS.items():
            if column in own:
                assert [s.step for s in events.Scalars(tag)] == [1, 2], (fold, tag)  # not 1, 2, 1, 2
                assert [s.value for s in events.Scalars(tag)] == pytest.approx(own[column].tolist(), rel=1e-5)
        assert len(events.Scalars("test_fold/accuracy")) == 1
