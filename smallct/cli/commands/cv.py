"""``smallct cv`` / ``python -m smallct.cv``: cross-validated transfer learning (:func:`smallct.engine.cv.run_cv`)."""

from __future__ import annotations

import argparse

from smallct.cli.flags import add_cv_settings, add_params, build_config
from smallct.cli.runner import Command, command_parser
from smallct.config.run import CVConfig


def config_from_args(args: argparse.Namespace) -> CVConfig:
    """The run's settings: the defaults, then ``--params`` (a settings file or recipe), then the flags given."""
    return build_config(CVConfig, args, getattr(args, "params", None))[0]


def config_from_argv(argv: list[str]) -> CVConfig:
    """The :class:`CVConfig` of a ``smallct cv`` command line (what a notebook or a test can rebuild)."""
    return config_from_args(command_parser(COMMAND, "smallct cv").parse_args(argv))


class CV(Command):
    name = "cv"
    distributed = True  # torchrun --nproc-per-node N -m smallct.cv (smallct.engine.ranks)
    help = "cross-validated transfer learning on a labelled image set"
    description = ("Cross-validated transfer learning on a small labelled image set. Without --data it runs on a "
                   "generated synthetic head-CT phantom set (no download).")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_cv_settings(parser, CVConfig)
        add_params(parser)

    def run(self, args: argparse.Namespace) -> None:
        from smallct.engine.cv import run_cv  # the library, loaded on use: --help stays torch-free

        run_cv(config_from_args(args), progress=not args.no_progress)

    def kept(self, args: argparse.Namespace) -> str:
        return folds_kept(getattr(args, "out", CVConfig().out), "folds")


def folds_kept(out, what: str) -> str:
    """What an interrupted run in ``out`` keeps: its finished ``what`` (folds), or nothing when none had finished."""
    from smallct.engine.run_folder import RunFolder  # loaded on use: --help stays torch-free

    if RunFolder(out).has_finished_folds():
        return f"finished {what} are kept in {out}; run the same command again to resume"
    return f"no fold had finished, so nothing is kept in {out}; run the same command again to start over"


COMMAND = CV()
