"""Several worker processes on one study on this machine: ``smallct.tune --jobs N`` (``auto``: one per GPU).

The study is created once here, before the workers start (so they do not race to create it); each worker
is the same command with its own ``--worker`` index (other sampler seeds) and, on a GPU machine, its own
GPU (``CUDA_VISIBLE_DEVICES``); on a CPU they share the cores. The report is written when all are done.

Workers on several machines need no such start: each runs the same command with its own ``--worker`` on one
database URL, and :func:`smallct.tuning.storage.create_or_load` lets them create the study together. A seeded
TPE sampler is not reproducible with parallel workers: which trial sees which finished ones depends on timing.
"""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import torch

from smallct.config.studies import TuneConfig
from smallct.datasets.folder import load_data
from smallct.parallel import available_cores
from smallct.tuning.report import write_report
from smallct.tuning.storage import default_storage, make_storage
from smallct.tuning.study import check_inputs, choose_metric, open_study


def run_workers(cfg: TuneConfig, argv: list[str], jobs: int, log=print) -> int:
    """``jobs`` worker processes running ``python -m smallct.tune ARGV`` on one study; the largest exit code."""
    url = cfg.storage or default_storage(cfg.base.out)
    if url.startswith("sqlite"):
        log("note: several workers on SQLite may meet 'database is locked'; journal:PATH or PostgreSQL is safer")
    dataset = load_data(cfg.base.data, cfg.base.seed, log)
    check_inputs(cfg, dataset, log=log)  # before the study is created under --out
    choose_metric(cfg.metric, dataset.task)
    open_study(cfg, dataset, log)  # create it once, before the workers race to
    gpus = torch.cuda.device_count() if cfg.base.device in ("auto", "cuda") else 0
    procs = []
    for i in range(jobs):
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        else:
            env["OMP_NUM_THREADS"] = str(max(1, available_cores() // jobs))
        cmd = [sys.executable, "-m", "smallct.tune", *argv, "--jobs", "1", "--worker", str(cfg.worker + i),
               "--no-report", "--no-progress"]
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    study = optuna.load_study(study_name=cfg.study, storage=make_storage(
        url, heartbeat_interval=cfg.heartbeat_interval, grace_period=cfg.grace_period))
    if cfg.report:
        write_report(study, cfg, choose_metric(cfg.metric, dataset.task), log=log)
    return max(codes)
