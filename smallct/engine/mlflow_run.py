"""One MLflow run of smallct's tracking (:mod:`smallct.engine.tracking`), addressed by its id through one
``MlflowClient``, and the first contact with an MLflow tracking store.

The first contact (:meth:`MlflowRun.connect`) is quick and quiet: one try with a short wait (:data:`PROBE_ENV`),
MLflow's INFO lines about creating a new store's tables not shown, and an unreachable store is one line naming
the URI (its password masked) and why, in a few words. A ``sqlite:///`` store keeps the artifacts of the
experiment smallct creates in it beside its file (:func:`artifact_location`), not in ``./mlruns`` of wherever
the command was started; an experiment that exists keeps the place MLflow gave it. With a tracking server, MLflow
prints a "View run ... at: URL" pair when a run ends: only for the run, not for each of its folds or trials.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

from smallct.config.run import hide_password, uri_password
from smallct.models.weights import offline_reason

# Folders of a run folder not logged as its MLflow artifacts: checkpoints are large; inner runs and trials
# log their files to their own (nested) MLflow runs.
NOT_ARTIFACTS = ("checkpoints", "inner", "trials")
MLFLOW_MISSING = "--mlflow: MLflow is not installed; pip install smallct[mlflow]"
# The first contact with the MLflow store (before the run folder is written): one try, a short wait. MLflow's own
# defaults (7 retries with backoff, 120 s timeout) would keep an unreachable --mlflow URI busy for minutes.
PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# Quiet while the store is first opened: MLflow's INFO lines about creating and upgrading a new store's tables.
QUIET_LOGGERS = ("mlflow.store.db.utils", "alembic")
# Why a store cannot be reached, in a few words, by what its error's text holds (else the error's first line).
UNREACHABLE = {"Connection refused": "connection refused", "Name or service not known": "unknown host",
               "nodename nor servname": "unknown host", "getaddrinfo failed": "unknown host",
               "Temporary failure in name resolution": "unknown host", "timed out": "no answer within 10 s",
               "Max retries exceeded": "no answer"}


@contextmanager
def _environment(values: dict[str, str]):
    """Environment variables ``values`` set for the block (MLflow reads them on every call), then as they were."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def artifact_location(uri: str) -> str | None:
    """Where the artifacts of an experiment smallct creates in store ``uri`` go: beside the file of a ``sqlite:///``
    store (``runs/mlflow.db``: ``runs/mlflow-artifacts``, as a file URI), else None (MLflow's default)."""
    path = uri[len("sqlite:///"):].split("?")[0] if uri.startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        return None
    db = Path(path).absolute()  # a relative path is relative to the working folder, as for sqlite itself
    return (db.parent / f"{db.stem}-artifacts").as_uri()


def one_line(err: BaseException, uri: str = "") -> str:
    """``Type: first line`` of an error (at most 300 characters), without the password of ``uri``."""
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0] if lines else ''}".strip().rstrip(":")
    password = uri_password(uri)
    text = text.replace(uri, hide_password(uri)) if uri else text
    text = text.replace(password, "***") if password else text
    return text if len(text) <= 300 else text[:297] + "..."


class MlflowRun:
    """One MLflow run, created on first use, addressed by its id through one ``MlflowClient``. A run and its nested
    runs share one switch (``root.off``): after one failed call none of them calls MLflow again."""

    def __init__(self, client, experiment: str, name: str, parent: MlflowRun | None = None, uri: str = ""):
        self.client, self.experiment, self.name, self.parent = client, experiment, name, parent
        self.root = parent.root if parent is not None else self
        self.uri = parent.uri if parent is not None else uri
        self.off = False  # (read on the root) a call failed: MLflow is off for the run and its nested runs
        self.ended = False
        self._id: str | None = None

    @classmethod
    def connect(cls, uri: str, name: str, offline: bool = False) -> MlflowRun:
        """The client of tracking URI ``uri``, after one quick first contact (:data:`PROBE_ENV`): ``ValueError``
        naming the (masked) URI when the store cannot be reached, or naming the extra when MLflow is missing."""
        if offline_reason(offline):  # before mlflow is imported: it starts its telemetry then
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        try:
            from mlflow.tracking import MlflowClient  # the optional extra smallct[mlflow], loaded on use
        except ImportError:
            raise ValueError(MLFLOW_MISSING) from None
        quiet = [logging.getLogger(logger) for logger in QUIET_LOGGERS]
        levels = [logger.level for logger in quiet]
        try:
            for logger in quiet:
                logger.setLevel(logging.WARNING)
            with _environment(PROBE_ENV):
                client = MlflowClient(tracking_uri=uri)
                client.search_experiments(max_results=1)  # a new sqlite store makes its tables here
        except Exception as err:  # noqa: BLE001 - mlflow's errors differ by store (MlflowException, requests, ...)
            why = next((words for text, words in UNREACHABLE.items() if text in str(err)), None)
            raise ValueError(f"--mlflow {hide_password(uri)}: cannot reach the MLflow tracking store "
                             f"({why or one_line(err, uri)[:150]}); check the URI and that its server runs") from None
        finally:
            for logger, level in zip(quiet, levels):
                logger.setLevel(level)
        return cls(client, os.environ.get("MLFLOW_EXPERIMENT_NAME", "smallct"), name, uri=uri)

    def child(self, name: str) -> MlflowRun:
        return MlflowRun(self.client, self.experiment, name, parent=self)

    @property
    def id(self) -> str:
        if self._id is None:
            tags = {"mlflow.parentRunId": self.parent.id} if self.parent is not None else {}
            self._id = self.client.create_run(self._experiment_id(), run_name=self.name, tags=tags).info.run_id
        return self._id

    def _experiment_id(self) -> str:
        if self.parent is not None:
            return self.client.get_run(self.parent.id).info.experiment_id
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.experiment, artifact_location=artifact_location(self.uri))
        except Exception:  # another worker created it first (mlflow's error types differ by store)
            return self.client.get_experiment_by_name(self.experiment).experiment_id

    def params(self, params: dict) -> None:
        from mlflow.entities import Param  # (the optional extra)

        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.id, params=items[i:i + 100])

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric  # (the optional extra)

        now = int(time.time() * 1000)
        self.client.log_batch(self.id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def artifacts(self, folder: Path) -> None:
        for path in sorted(folder.iterdir()):
            if path.is_dir() and path.name not in NOT_ARTIFACTS:
                self.client.log_artifacts(self.id, str(path), artifact_path=path.name)
            elif path.is_file():
                self.client.log_artifact(self.id, str(path))

    def end(self, status: str) -> None:
        """End the run once (a run never created needs no end); only a run without a parent prints its link."""
        if self._id is not None and not self.ended:
            self.ended = True
            # a server's "View run ... at: URL" lines (stdout): once for the run, none for each of its folds or trials
            with _environment({"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"} if self.parent is not None else {}):
                self.client.set_terminated(self._id, status)
