"""Experiment tracking: a run's settings, per-epoch curves, final figures and files in TensorBoard and MLflow.

The engine calls one :class:`Tracker` at a few points of a run: :meth:`~Tracker.start` with its settings,
:meth:`~Tracker.epoch` after every epoch of a fold (:meth:`~Tracker.on_epoch` makes the callback), and
:meth:`~Tracker.finish` with the final figures, the PNGs and the run folder. Both destinations are optional;
with neither, every call does nothing.

TensorBoard (on by default; ``--no-tensorboard``): event files in the run folder's ``tensorboard/``. That
folder holds the settings as an HParams session (a bool as a bool, an unset setting left out), the final
figures as scalars and the PNG figures as images; ``tensorboard/r0_f1/`` holds fold r0_f1's per-epoch curves
(:data:`EPOCH_TAGS`), so ``tensorboard --logdir runs`` draws the folds of every run over each other. The HParams
view's columns are declared by every run alike (TensorBoard takes the first declaration it finds for a whole
logdir): every flat cv setting (:func:`hparam_infos`) and the few final figures of :data:`HPARAM_METRICS` (without
that declaration TensorBoard makes a column of every scalar of a run and its folds: 55 for 2 folds).

MLflow (``--mlflow URI``; ``pip install smallct[mlflow]``): one MLflow run per smallct run in the experiment
``$MLFLOW_EXPERIMENT_NAME`` (default ``smallct``): the settings as parameters, the final figures (with their
interval bounds) as metrics, the run folder's files as artifacts (not the checkpoints); one nested run per fold
holds its per-epoch metrics. A study's trials and a nested CV's inner runs are nested under the study's or the
outer run's MLflow run (``parent``). :class:`mlflow.tracking.MlflowClient` is used with explicit run ids, so
no active-run state is shared with other code. A fold's MLflow run ends (FINISHED) when the fold does; a run stopped
by Ctrl-C or a tuner's pruner ends KILLED, one stopped by an error FAILED.

A ``sqlite:///`` store keeps the artifacts beside its file (``runs/mlflow.db``: ``runs/mlflow-artifacts/``), not
in ``./mlruns`` of wherever the command started (:mod:`smallct.engine.mlflow_run`).

Tracking never stops a run: the MLflow store is contacted once before the run folder is written (an unreachable
one is a short one-line ``ValueError`` naming the URI), and after that a failing MLflow or TensorBoard call is one
warning line on stderr, that destination is off for the rest of the run (for MLflow: the study or nested run
too), and training goes on. With smallct's offline switch on (``--offline``, ``SMALLCT_OFFLINE=1``,
``HF_HUB_OFFLINE=1``) MLflow's usage telemetry is off too (``MLFLOW_DISABLE_TELEMETRY=true``, unless set).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from smallct.config.run import CVConfig, hide_password
from smallct.config.schema import settings
from smallct.engine.mlflow_run import MlflowRun, one_line
from smallct.engine.run_folder import RunFolder, fold_name
from smallct.progress import tqdm

# A column of the per-epoch record of smallct.engine.train.fit -> its TensorBoard tag and MLflow metric name.
EPOCH_TAGS = {"train_loss": "loss/train", "val_loss": "loss/test_fold", "train_acc": "accuracy/train",
              "val_acc": "accuracy/test_fold", "val_auc": "roc_auc/test_fold", "lr": "lr",
              "seconds": "seconds_per_epoch"}
# The HParams view's metric columns, the same for every run (TensorBoard takes one run's list for a whole logdir):
# the pooled out-of-fold figures a user compares (a multi-label run's mean_auc, weighted_log_loss) and the mean
# over folds a study optimises.
HPARAM_METRICS = ("pooled/roc_auc", "pooled/balanced_accuracy", "pooled/accuracy", "pooled/sensitivity",
                  "pooled/specificity", "pooled/log_loss", "pooled/mean_auc", "pooled/weighted_log_loss",
                  "mean_over_folds/roc_auc", "mean_over_folds/mean_auc")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def hparam(value):
    """A setting as TensorBoard's HParams and MLflow's parameters take it: a number, a bool or a text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def hparam_infos() -> list:
    """The HParams view's setting columns, the same for every run whatever it leaves unset: each flat setting of
    :class:`~smallct.config.run.CVConfig` but ``mlflow`` (it may hold a password), a bool as BOOL, a number as
    FLOAT64, a text, a path or a list as STRING; a bool's or a choice's values as its domain."""
    from tensorboard.plugins.hparams import api_pb2  # (tensorboard, on use)

    infos = []
    for name, s in settings(CVConfig).items():
        if name == "mlflow":
            continue
        kind = api_pb2.DATA_TYPE_STRING if s.many or s.kind not in (bool, int, float) else \
            api_pb2.DATA_TYPE_BOOL if s.kind is bool else api_pb2.DATA_TYPE_FLOAT64
        info = api_pb2.HParamInfo(name=name, type=kind)
        domain = (False, True) if kind == api_pb2.DATA_TYPE_BOOL else None if s.many else s.choices
        if domain:
            info.domain_discrete.extend(domain)
        infos.append(info)
    return infos


def hparams_summaries(params: dict, declare: bool = True) -> tuple:
    """TensorBoard's HParams records of a run with settings ``params`` ({name: number, bool, text or None}):
    with ``declare``, the experiment (:func:`hparam_infos` and :data:`HPARAM_METRICS`: the same for every run), then
    the session's start (the values: a bool as a bool, None left out) and its end (success), as event-file
    summaries."""
    from tensorboard.compat.proto.summary_pb2 import Summary  # (tensorboard, on use)
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2  # (tensorboard, on use)

    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for name, value in params.items():
        if isinstance(value, bool):  # first: a bool is an int too
            start.hparams[name].bool_value = value
        elif _number(value):
            start.hparams[name].number_value = float(value)
        elif value is not None:
            start.hparams[name].string_value = str(value)
    experiment = api_pb2.Experiment(hparam_infos=hparam_infos(), metric_infos=[
        api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in HPARAM_METRICS])
    records = {metadata.EXPERIMENT_TAG: plugin_data_pb2.HParamsPluginData(experiment=experiment),
               metadata.SESSION_START_INFO_TAG: plugin_data_pb2.HParamsPluginData(session_start_info=start),
               metadata.SESSION_END_INFO_TAG: plugin_data_pb2.HParamsPluginData(
                   session_end_info=plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS))}
    if not declare:
        del records[metadata.EXPERIMENT_TAG]
    return tuple(Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))])
                 for tag, data in records.items())


def result_metrics(results: dict) -> dict[str, float]:
    """The final figures of a run's ``results.json`` by flat name: ``mean_over_folds/roc_auc``,
    ``std_over_folds/roc_auc``, ``pooled/roc_auc`` with ``pooled/roc_auc_ci95_low`` and ``_high``."""
    out = {}
    for name, v in results.get("mean_std_over_folds", {}).items():
        out[f"mean_over_folds/{name}"], out[f"std_over_folds/{name}"] = v.get("mean"), v.get("std")
    for name, v in results.get("pooled_oof", {}).items():
        out[f"pooled/{name}"] = v
    for name, v in results.get("pooled_oof_ci95", {}).items():
        if isinstance(v, (list, tuple)) and len(v) == 2:
            out[f"pooled/{name}_ci95_low"], out[f"pooled/{name}_ci95_high"] = v
    return {k: float(v) for k, v in out.items() if _number(v)}


def _warn(what: str, err: BaseException, destination: str, uri: str = "") -> None:
    """The one warning line of a failed tracking call; the destination is then off."""
    tqdm.write(f"smallct: warning: {destination}: {what} failed ({one_line(err, uri)}); {destination.split()[0]} "
               "tracking is off for the rest of this run, training goes on", file=sys.stderr)


class Tracker:
    """Where one run's settings, curves, figures and files go: TensorBoard event files under ``logdir`` (None: off)
    and an MLflow run (None: off). Use it as a context manager: leaving it ends the MLflow runs (KILLED on Ctrl-C
    or a pruned trial, FAILED on an error) and closes the event files. No call raises for a tracking failure: the
    first failed call of a destination is one warning line and turns that destination off."""

    def __init__(self, logdir: Path | None = None, mlflow: MlflowRun | None = None):
        self.logdir, self.mlflow = (Path(logdir) if logdir is not None else None), mlflow
        self._writers: dict[str, object] = {}  # "" (the run) or a fold name -> its SummaryWriter, made on first use
        self._folds: dict[str, MlflowRun] = {}  # fold name -> its nested MLflow run
        self._session_end = None

    @classmethod
    def open(cls, tensorboard: Path | None, mlflow: str | None, name: str, parent: Tracker | None = None,
             offline: bool = False) -> Tracker:
        """The tracker of one run named ``name``: event files in ``tensorboard`` (None: none), and with an MLflow
        tracking URI ``mlflow`` an MLflow run, nested under ``parent``'s when that has one. Nothing is written
        before :meth:`start`; ``ValueError`` naming the extra to install when MLflow is asked for but missing, or
        naming the URI when its store cannot be reached. ``offline`` (``--offline``; also the environment's
        offline switches) turns MLflow's telemetry off."""
        run = None
        if mlflow:
            run = parent.mlflow.child(name) if parent is not None and parent.mlflow is not None else \
                MlflowRun.connect(mlflow, name, offline)
        return cls(tensorboard, run)

    @classmethod
    def for_run(cls, cfg, folder: RunFolder, parent: Tracker | None = None) -> Tracker:
        """The tracker a cv run's settings ask for (``cfg.tensorboard``, ``cfg.mlflow``): run folder ``folder``."""
        return cls.open(folder.tensorboard_dir if cfg.tensorboard else None, cfg.mlflow,
                        f"{folder.path.parent.name}/{folder.path.name}", parent, offline=cfg.offline)

    # Every TensorBoard and MLflow call goes through one of these two: a failure warns once and turns it off.
    def _tensorboard(self, what: str, call) -> None:
        if self.logdir is None:
            return
        try:
            call()
        except Exception as err:  # noqa: BLE001 - a full disk, a vanished folder: tracking never stops a run
            logdir, self.logdir = self.logdir, None
            writers, self._writers = self._writers, {}
            for writer in writers.values():
                try:
                    writer.close()
                except Exception:  # noqa: BLE001,S110 - it is off already; the warning below says so
                    pass
            _warn(what, err, f"TensorBoard ({logdir})")

    def _mlflow(self, what: str, call) -> None:
        run = self.mlflow
        if run is None or run.root.off:
            return
        try:
            call()
        except Exception as err:  # noqa: BLE001 - MlflowException, requests' errors, ...: never stops a run
            run.root.off = True
            _warn(what, err, f"MLflow ({hide_password(run.uri)})", run.uri)

    def _writer(self, fold: str = "", restart: bool = False):
        """The SummaryWriter of the run ("") or of fold ``fold``; ``restart``: the fold starts training (again), so
        its file begins with a purge of every earlier point from step 1 on (a resumed fold draws one curve)."""
        if restart and fold in self._writers:
            self._writers.pop(fold).close()
        if fold not in self._writers:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: on use, so --help stays light

            for done in [f for f in self._writers if f and fold]:  # folds run one after the other: one file open
                self._writers.pop(done).close()
            self._writers[fold] = SummaryWriter(str(self.logdir / fold if fold else self.logdir),
                                                purge_step=1 if restart else None)
        return self._writers[fold]

    def _fold_run(self, fold: str) -> MlflowRun:
        if fold not in self._folds:
            self._folds[fold] = self.mlflow.child(fold)
        return self._folds[fold]

    def start(self, params: dict, declare: bool = True) -> None:
        """Log the run's settings (flat names): an HParams session, with ``declare`` after the view's columns
        (:func:`hparams_summaries`), and MLflow parameters (not the MLflow URI itself, which may hold a password)."""
        unset = {k for k, v in params.items() if v is None}  # no value in TensorBoard; MLflow: "none"
        params = {k: hparam(v) for k, v in params.items() if k != "mlflow"}

        def session() -> None:
            *records, self._session_end = hparams_summaries({k: v for k, v in params.items() if k not in unset},
                                                            declare)
            for summary in records:
                self._writer().file_writer.add_summary(summary)

        self._tensorboard("writing the settings", session)
        self._mlflow("logging the settings", lambda: self.mlflow.params(params))

    def scalars(self, values: dict[str, float], step: int = 0, fold: str = "") -> None:
        """Figures at ``step``: of the run, or of fold ``fold`` (``r0_f1``: its subfolder, its nested MLflow run)."""
        values = {k: float(v) for k, v in values.items() if _number(v)}
        if not values:
            return
        where = f"fold {fold}" if fold else "the run"

        def write() -> None:
            writer = self._writer(fold)
            for tag, value in values.items():
                writer.add_scalar(tag, value, step)

        self._tensorboard(f"writing the figures of {where} at step {step}", write)
        self._mlflow(f"logging the figures of {where} at step {step}",
                     lambda: (self._fold_run(fold) if fold else self.mlflow).metrics(values, step))

    def epoch(self, fold: str, record: dict) -> None:
        """One epoch record of :func:`smallct.engine.train.fit` for fold ``fold``, at step ``record["epoch"]``; the
        first epoch (re)starts the fold's curves."""
        if record.get("epoch") == 1:
            self._tensorboard(f"opening the event file of fold {fold}", lambda: self._writer(fold, restart=True))
        self.scalars({tag: record.get(k) for k, tag in EPOCH_TAGS.items()}, step=record["epoch"], fold=fold)

    def on_epoch(self, then=None):
        """An ``on_epoch(repeat, fold, record)`` callback (:func:`smallct.engine.cv.train_fold`): the epoch is
        logged, then ``then`` is called (a tuner's pruner may stop the trial there)."""
        def each(repeat: int, fold: int, record: dict) -> None:
            self.epoch(fold_name(repeat, fold), record)
            if then is not None:
                then(repeat, fold, record)
        return each

    def end_fold(self, fold: str) -> None:
        """Fold ``fold`` has finished training: its event file is closed and its MLflow run ends (FINISHED)."""
        if fold in self._writers:
            self._tensorboard(f"closing the event file of fold {fold}", lambda: self._writers.pop(fold).close())
        if fold in self._folds:
            self._mlflow(f"ending the MLflow run of fold {fold}", lambda: self._folds[fold].end("FINISHED"))

    def finish(self, metrics: dict[str, float], figures=(), files: Path | None = None) -> None:
        """The final ``metrics`` (scalars of the HParams session; MLflow metrics), the PNG ``figures`` that exist as
        images, then the files in folder ``files`` as MLflow artifacts; the runs end as finished."""
        self.scalars(metrics)

        def images() -> None:
            pngs = [Path(p) for p in figures if Path(p).is_file()]
            if pngs:
                import numpy as np  # (only with figures to log)
                from PIL import Image  # (only with figures to log)

                for png in pngs:
                    with Image.open(png) as image:
                        self._writer().add_image(f"figures/{png.stem}", np.asarray(image.convert("RGB")), 0,
                                                 dataformats="HWC")
            if self._session_end is not None:
                self._writer().file_writer.add_summary(self._session_end)

        self._tensorboard("writing the figures", images)
        self._close_writers()  # the event files are complete before they are copied as artifacts
        if files is not None:
            self._mlflow(f"uploading the files of {files}", lambda: self.mlflow.artifacts(Path(files)))
        self.close()

    def _close_writers(self) -> None:
        for fold in list(self._writers):
            self._tensorboard("closing an event file", lambda: self._writers.pop(fold).close())

    def close(self, status: str = "FINISHED") -> None:
        """Close the event files and end the MLflow runs not ended yet (``status``: FINISHED, FAILED or KILLED)."""
        self._close_writers()
        for run in [*self._folds.values(), *([self.mlflow] if self.mlflow is not None else [])]:
            self._mlflow(f"ending the MLflow run {run.name}", lambda: run.end(status))
        self._folds, self.mlflow = {}, None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(end_status(kind))


def end_status(kind: type[BaseException] | None) -> str:
    """The MLflow status of a run left by exception ``kind``: FINISHED (none), KILLED (Ctrl-C, or a tuner's pruner
    stopped the trial: ``optuna.TrialPruned``), FAILED (any other)."""
    if kind is None:
        return "FINISHED"
    optuna = sys.modules.get("optuna")  # a pruned trial: optuna is loaded then; never import it here
    killed = (KeyboardInterrupt, *((optuna.TrialPruned,) if optuna is not None else ()))
    return "KILLED" if issubclass(kind, killed) else "FAILED"


def finish_cv(tracker: Tracker, results: dict, folder: RunFolder) -> None:
    """The end of a cv or nested run: each fold's test-fold figures (in its fold's subfolder and MLflow run), then
    the run's final figures (:func:`result_metrics`), its PNG figures and its files."""
    for f in results.get("per_fold", []):
        tracker.scalars({f"test_fold/{k}": v for k, v in f.items() if k not in ("repeat", "fold", "n_test")},
                        fold=fold_name(f["repeat"], f["fold"]))
    tracker.finish(result_metrics(results), [folder.curves_png, folder.roc_png, folder.confusion_png], folder.path)
