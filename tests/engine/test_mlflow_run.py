"""Tests of smallct.engine.mlflow_run: a ``sqlite:///`` store is quiet and keeps its artifacts beside its file; a
server prints its "View run" links for the run only.

(The unreachable server, one short line naming the URI, is tested through the cv command in test_tracking.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smallct.engine.mlflow_run import MlflowRun, artifact_location
from tests.conftest import REPO

# A run tracked to a new sqlite store by a process started in another folder, as `smallct cv --mlflow` is.
SCRIPT = """
import sys
from pathlib import Path
from smallct.engine.tracking import Tracker

files = Path(sys.argv[2])
with Tracker.open(None, sys.argv[1], "run") as tracker:
    tracker.start({"lr": 0.1})
    tracker.finish({"pooled/roc_auc": 0.75}, files=files)
print("tracked")
"""


def test_a_new_sqlite_store_says_nothing_and_keeps_the_artifacts_beside_its_file(tmp_path):
    # mutants caught (0.3.0's behaviour): MLflow's "INFO ... Creating initial MLflow database tables" lines on
    # stderr; the artifacts in ./mlruns of the folder the command was started in
    store, elsewhere, run = tmp_path / "store", tmp_path / "elsewhere", tmp_path / "run"
    for folder in (store, elsewhere, run):
        folder.mkdir()
    (run / "results.json").write_text(json.dumps({"pooled_oof": {"roc_auc": 0.75}}))
    uri = f"sqlite:///{store / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_EXPERIMENT_NAME": "smallct"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, uri, str(run)], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert output.strip() == "tracked", output  # nothing else: no "Creating initial MLflow database tables"
    assert list(elsewhere.iterdir()) == []  # no ./mlruns where the command was started
    assert sorted(p.name for p in store.iterdir()) == ["mlflow-artifacts", "mlflow.db"]
    assert [p.name for p in (store / "mlflow-artifacts").rglob("results.json")] == ["results.json"]

    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(tracking_uri=uri).get_experiment_by_name("smallct")
    assert experiment.artifact_location == (store / "mlflow-artifacts").as_uri()


@pytest.mark.parametrize("uri, beside", [
    ("sqlite:////data/runs/mlflow.db", "/data/runs/mlflow-artifacts"),
    ("sqlite:///runs/track.db?timeout=20", "{cwd}/runs/track-artifacts"),  # relative: to the working folder
    ("sqlite:///:memory:", None),
    ("postgresql://user:pw@db/mlflow", None),  # MLflow's default (a server's own artifact store, ./mlruns)
    ("http://127.0.0.1:5000", None),
])
def test_artifacts_go_beside_a_sqlite_file_only(uri, beside, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = Path(beside.format(cwd=tmp_path)).as_uri() if beside else None
    assert artifact_location(uri) == expected


def test_only_a_run_without_a_parent_lets_mlflow_print_its_link(monkeypatch):
    # MLflow prints "View run ... at: URL" on stdout when a run on a tracking server ends, unless
    # MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT is set: once for the run, not once per fold (mutant: no suppression)
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    ended = []

    class Client:
        def set_terminated(self, run_id, status):
            ended.append((run_id, status, os.environ.get("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")))

    run = MlflowRun(Client(), "smallct", "cv", uri="http://127.0.0.1:5000")
    fold = run.child("r0_f0")
    run._id, fold._id = "run", "fold"  # as after their first use
    fold.end("FINISHED")
    run.end("KILLED")
    run.end("FAILED")  # once only
    assert ended == [("fold", "FINISHED", "true"), ("run", "KILLED", None)]
    assert "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT" not in os.environ
