"""Which trials count toward ``--trials``: finished ones, and running ones that a live worker still runs.

Workers sharing a storage count each other's running trials, so that workers started together end with
``--trials`` finished trials. A running trial counts while something says its worker lives:

- its process on this machine (its ``worker`` attribute ``host/pid (worker K)``) exists;
- else, in a database storage (heartbeats), it was not failed as stale: :func:`release_stale` fails those
  silent for ``--grace-period`` seconds before any count (Optuna does so only inside ``optimize``, which a
  rerun with nothing left to run never enters);
- else (a journal storage, another machine's trial or one without a ``worker`` yet), while it is younger than
  :func:`running_bound`: twice the longest finished trial, at least ``--grace-period`` seconds.

A trial that no longer counts is not failed (a journal storage cannot tell a slow worker from a dead one): it
is named once per run by :func:`release_stale`.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import socket
import warnings

import optuna
from optuna.trial import FrozenTrial, TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class NotNeeded(RuntimeError):
    """A trial started when ``--trials`` were already finished or running (recorded as failed, not counted)."""


def not_needed(trial: FrozenTrial) -> bool:
    """Whether ``trial`` failed as not needed (:class:`NotNeeded`): not a trial a user needs to hear of."""
    return trial.state == TrialState.FAIL and str(trial.user_attrs.get("fail_reason", "")).startswith("not needed")


class QuietNotNeeded(logging.Filter):
    """Drops Optuna's two warnings (one with a traceback) about a trial that failed as not needed."""

    def __init__(self):
        super().__init__()
        self.numbers: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        match = re.match(r"Trial (\d+) failed", str(record.msg))
        if match and "NotNeeded(" in str(record.msg):
            self.numbers.add(int(match[1]))
        return not (match and int(match[1]) in self.numbers)


def worker_label(worker: int) -> str:
    """The ``worker`` attribute of a trial this process runs: ``host/pid (worker K)``."""
    return f"{socket.gethostname()}/{os.getpid()} (worker {worker})"


def worker_of(trial: FrozenTrial) -> tuple[str, int | None, int | None]:
    """Host, process id and ``--worker`` index of the process that runs ``trial`` (its ``worker`` attribute)."""
    match = re.fullmatch(r"(.+)/(\d+) \(worker (\d+)\)", str(trial.user_attrs.get("worker", "")))
    return (match[1], int(match[2]), int(match[3])) if match else ("", None, None)


def process_alive(trial: FrozenTrial) -> bool | None:
    """Whether a running trial's process lives, when it runs on this machine; None when that cannot be told
    (another machine, no ``worker`` attribute yet, not POSIX)."""
    host, pid, _ = worker_of(trial)
    if host != socket.gethostname() or pid is None or os.name != "posix":
        return None
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def running_bound(trials: list, grace_period: float) -> float:
    """Seconds a running trial that nothing can check counts for: twice the longest finished trial of the study,
    at least ``grace_period``."""
    longest = max((t.duration.total_seconds() for t in trials if t.state in FINISHED and t.duration), default=0.0)
    return max(float(grace_period), 2 * longest)


def _age(trial: FrozenTrial, now: datetime.datetime) -> float:
    return 0.0 if trial.datetime_start is None else (now - trial.datetime_start).total_seconds()


def why_not_counted(trial: FrozenTrial, trials: list, heartbeats: bool, grace_period: float,
                    now: datetime.datetime | None = None) -> str | None:
    """Why a running trial no longer counts toward ``--trials`` (None: it counts); see the module's rules."""
    alive = process_alive(trial)
    if alive is not None:
        return None if alive else "its process on this machine is gone"
    if heartbeats:  # release_stale failed those whose heartbeat stopped
        return None
    age, bound = _age(trial, now or datetime.datetime.now()), running_bound(trials, grace_period)
    return None if age < bound else f"started {age:.0f} s ago, over the {bound:.0f} s an unchecked trial counts for"


def counted_trials(trials: list, before: int | None = None, heartbeats: bool = False, grace_period: float = 180,
                   now: datetime.datetime | None = None) -> int:
    """The trials that count toward ``--trials``: complete, pruned and running ones that a live worker still runs
    (other workers' too), not failed ones; ``before``: only those numbered below it. ``heartbeats``: a database
    storage (its stale trials already failed by :func:`release_stale`)."""
    return sum(t.state in FINISHED or (t.state == TrialState.RUNNING
                                       and why_not_counted(t, trials, heartbeats, grace_period, now) is None)
               for t in trials if before is None or t.number < before)


def release_stale(study: optuna.Study, heartbeats: bool, grace_period: float) -> str | None:
    """Fail the running trials whose heartbeat stopped (``heartbeats``: a database storage; Optuna re-queues each
    once), then one line naming every running trial that no longer counts and why; None when all count."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if heartbeats and running:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    now = datetime.datetime.now()
    stale = {t.number: f"no heartbeat for over {grace_period:.0f} s: marked failed" for t in trials
             if heartbeats and t.number in running and t.state == TrialState.FAIL}
    stale.update({t.number: why for t in trials if t.state == TrialState.RUNNING
                  and (why := why_not_counted(t, trials, heartbeats, grace_period, now)) is not None})
    if not stale:
        return None
    return ("note: running trials that no longer count toward --trials: "
            + "; ".join(f"trial {n} ({why})" for n, why in sorted(stale.items())))


def shared_index_note(trials: list, worker: int) -> str | None:
    """The hint for a worker whose ``--worker`` index another live process uses too (their sampler seeds are then
    equal when they start together); None when no running trial says so."""
    here = (socket.gethostname(), os.getpid())
    shared = [t for t in trials if t.state == TrialState.RUNNING and process_alive(t) is not False
              and worker_of(t)[2] == worker and worker_of(t)[:2] != here]
    if not shared:
        return None
    host, pid, _ = worker_of(shared[0])
    return (f"note: trial {shared[0].number} is run by another process with --worker {worker} ({host}/{pid}): give "
            "each worker its own --worker index so that their sampler seeds differ")
