"""Tests of smallct.tuning.running: which running trials count toward --trials (no training; run_study's use of
it is tested in test_study.py)."""

from __future__ import annotations

import datetime
import logging
import os
import socket
import subprocess
import sys

import optuna
from optuna.trial import TrialState

from smallct.tuning.running import QuietNotNeeded, counted_trials, running_bound, shared_index_note

HERE = socket.gethostname()
NOW = datetime.datetime(2026, 1, 1, 12, 0, 0)


def _trial(number: int, state: TrialState, worker: str | None = None, age: float = 0.0, seconds: float = 0.0):
    t = optuna.trial.create_trial(state=state, value=1.0 if state == TrialState.COMPLETE else None,
                                  user_attrs={"worker": worker} if worker else {})
    t.number = number
    t.datetime_start = NOW - datetime.timedelta(seconds=age)
    if state != TrialState.RUNNING:
        t.datetime_complete = t.datetime_start + datetime.timedelta(seconds=seconds)
    return t


def _dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def test_running_trials_count_unless_their_process_is_gone_and_the_hint_names_a_shared_index():
    dead = _dead_pid()
    trials = [_trial(0, TrialState.COMPLETE), _trial(1, TrialState.FAIL),
              _trial(2, TrialState.RUNNING, f"elsewhere/{os.getpid()} (worker 1)"),  # another machine, young: counted
              _trial(3, TrialState.RUNNING, f"{HERE}/{dead} (worker 0)"),  # killed here: not counted
              _trial(4, TrialState.RUNNING)]  # just asked for, no worker recorded yet: counted
    assert counted_trials(trials, now=NOW) == 3 and counted_trials(trials, before=3, now=NOW) == 2
    assert shared_index_note(trials, 0) is None  # the only other worker 0 is gone
    assert shared_index_note(trials, 1).startswith("note: trial 2 is run by another process with --worker 1 "
                                                   f"(elsewhere/{os.getpid()})")
    # this process's own trials (threads of one worker) share nothing
    assert shared_index_note([_trial(5, TrialState.RUNNING, f"{HERE}/{os.getpid()} (worker 1)")], 1) is None


def test_a_live_process_here_counts_however_old_and_an_unchecked_trial_only_within_the_bound():
    # the working tree before this fix counted a running trial of another machine (journal storage) for ever, so
    # one killed there blocked the study at --trials - 1. Mutants caught: no age bound; the bound applied to a
    # live process of this machine; the bound applied in a database storage (its heartbeats judge).
    day = 24 * 3600
    finished = [_trial(0, TrialState.COMPLETE, seconds=300), _trial(1, TrialState.PRUNED, seconds=100)]
    assert running_bound(finished, 180) == 600  # twice the longest finished trial
    assert running_bound([], 180) == 180  # at least the grace period
    live_here = _trial(2, TrialState.RUNNING, f"{HERE}/{os.getppid()} (worker 1)", age=day)  # pytest's parent
    assert counted_trials([*finished, live_here], now=NOW) == 3
    young = _trial(2, TrialState.RUNNING, "elsewhere/12 (worker 1)", age=599)
    old = _trial(3, TrialState.RUNNING, "elsewhere/13 (worker 2)", age=601)
    unnamed_old = _trial(4, TrialState.RUNNING, age=601)
    trials = [*finished, young, old, unnamed_old]
    assert counted_trials(trials, now=NOW) == 3
    assert counted_trials(trials, now=NOW, heartbeats=True) == 5  # stale ones were failed before the count
    assert counted_trials(trials, now=NOW, heartbeats=True, before=3) == 3


def test_optunas_warnings_about_a_not_needed_trial_are_dropped_and_no_others():
    quiet = QuietNotNeeded()

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("optuna.study._optimize", logging.WARNING, __file__, 1, msg, None, None)

    assert not quiet.filter(record("Trial 7 failed with parameters: {} because of the following error: "
                                   "NotNeeded('not needed: --trials 3 already finished or running')."))
    assert not quiet.filter(record("Trial 7 failed with value None."))
    assert quiet.filter(record("Trial 8 failed with value None."))
    assert quiet.filter(record("Trial 9 failed with parameters: {'lr': 0.1} because of the following error: "
                               "FloatingPointError('loss is nan')."))
