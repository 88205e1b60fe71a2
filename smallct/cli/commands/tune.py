"""``smallct tune`` / ``python -m smallct.tune``: an Optuna study over cv settings
(:func:`smallct.tuning.study.run_study`; several workers: :func:`smallct.tuning.workers.run_workers`)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from smallct.cli.flags import add_cv_settings, add_params, add_settings, build_config, given
from smallct.cli.runner import Command, command_parser
from smallct.config.run import CVConfig
from smallct.config.studies import TuneConfig

TUNE_ONLY = ["trials", "timeout", "storage", "study", "heartbeat_interval", "grace_period", "resume", "metric",
             "pruner", "prune_after", "startup_trials", "worker", "keep_checkpoints", "report", "top"]


def config_from_args(args: argparse.Namespace) -> TuneConfig:
    """The study: cv settings from the defaults, ``--params`` and the flags; the space from the defaults,
    ``--space`` and ``--search``; a setting given as a cv flag is fixed (it leaves the space)."""
    from smallct.tuning import space as spaces  # loads optuna: on use only, so --help stays fast
    from smallct.tuning.storage import storage_kind  # (optuna)

    cfg = build_config(TuneConfig, args, getattr(args, "params", None))[0]  # records the file's source, _chosen_on
    base = cfg.base
    fixed = set(given(args, CVConfig))
    space = spaces.parse_space(spaces.default_space(base.train.epochs))
    asked = spaces.load_space_file(Path(args.space)) if args.space else {}
    for text in args.search:
        key, spec = spaces.parse_search_option(text, space)
        asked.update(spaces.parse_space({key: spec}, where=f"--search {text}"))
    clash = sorted(set(asked) & fixed)
    if clash:
        raise ValueError(f"{', '.join(clash)}: both fixed by a flag and searched (--space/--search); keep one")
    space.update(asked)
    space = {k: v for k, v in space.items() if k not in fixed}
    if cfg.storage is not None:
        storage_kind(cfg.storage)  # a bad URL stops here, before any data is read
    return replace(cfg, base=base, space=space)


def config_from_argv(argv: list[str]) -> TuneConfig:
    """The :class:`TuneConfig` of a ``smallct tune`` command line."""
    return config_from_args(command_parser(COMMAND, "smallct tune").parse_args(argv))


def _jobs(text: str) -> int:
    """``--jobs``: a number of worker processes, or ``auto`` (one per GPU)."""
    if text == "auto":
        import torch  # only to count GPUs

        return torch.cuda.device_count() or 1
    if not (text.isdigit() and int(text) > 0):
        raise ValueError(f"--jobs {text}: expected a number of workers or auto")
    return int(text)


class Tune(Command):
    name = "tune"
    help = "tune learning rate, momentum, weight decay and decay with Optuna (each trial a cross-validation)"
    description = ("Tune learning rate, momentum, weight decay and learning-rate decay with Optuna; each trial is "
                   "a cross-validation, pruned early when it falls behind. Settings given as flags are fixed.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_cv_settings(parser, TuneConfig, help={"out": "study folder: default storage, trial runs, "
                                                         "best_params.json, plots"})
        add_params(parser)
        t = parser.add_argument_group("tuning")
        add_settings(t, TuneConfig, TUNE_ONLY)
        t.add_argument("--space", help="YAML/JSON search space: lr: {low: 1e-4, high: 1e-2, log: true}, "
                                       "schedule: [step, cosine], optimizer: sgd (fixed), momentum: null")
        t.add_argument("--search", action="append", default=[], metavar="KEY=SPEC",
                       help="narrow or fix one setting: lr=1e-4:1e-2, schedule=step,cosine, momentum=0.9 (repeatable)")
        t.add_argument("--jobs", default="1", help="worker processes on this machine, one per GPU with 'auto' "
                                                    "(default 1)")

    def run(self, args: argparse.Namespace) -> int | None:
        from smallct.tuning.study import run_study  # the library, loaded on use: --help stays torch-free
        from smallct.tuning.storage import default_storage, storage_errors  # (optuna, sqlalchemy)
        from smallct.tuning.workers import run_workers  # (torch)

        cfg = config_from_args(args)
        jobs = _jobs(args.jobs)
        with storage_errors(cfg.storage or default_storage(cfg.base.out)):  # a database lost mid-study: one line
            if jobs > 1:
                return run_workers(cfg, args.argv, jobs)
            run_study(cfg, progress=not args.no_progress)
        return None

    def kept(self, args: argparse.Namespace) -> str:
        out = getattr(args, "out", TuneConfig().base.out)
        return f"finished trials are kept in the storage ({out}); run the same command again to continue"


COMMAND = Tune()
