"""``smallct nested`` / ``python -m smallct.nested``: nested cross-validation over candidate settings files
(:func:`smallct.engine.nested.run_nested`)."""

from __future__ import annotations

import argparse
from dataclasses import replace

from smallct.cli.commands.cv import folds_kept
from smallct.cli.flags import add_cv_settings, add_settings, build_config, comma_list, given
from smallct.cli.runner import Command, command_parser
from smallct.config.run import CVConfig
from smallct.config.schema import build, resolve_params_path
from smallct.config.studies import NestedConfig

NESTED_ONLY = ["inner_folds", "select", "threshold", "refit", "out"]


def config_from_args(args: argparse.Namespace) -> NestedConfig:
    """The nested run: each candidate is its settings file with the cv flags given over it; the outer folds,
    repeats and seed come from the command line only, never from a candidate's file."""
    if getattr(args, "params", None) is not None:
        raise ValueError("--params: give the settings files as --candidates")
    if not args.candidate_specs:
        raise ValueError("--candidates: no settings file or recipe name given")
    candidates = {}
    for spec in args.candidate_specs:
        name = resolve_params_path(spec).stem
        if name in candidates:
            raise ValueError(f"--candidates: two candidates are named {name}; rename one file")
        candidates[name] = build_config(CVConfig, args, spec, where="settings", skip=["out"])[0]
    return replace(build(NestedConfig, given(args, NestedConfig)), candidates=candidates)


def config_from_argv(argv: list[str] | None) -> tuple[NestedConfig, bool]:
    """The :class:`NestedConfig` of a command line, and whether to show progress bars."""
    args = command_parser(COMMAND, "smallct nested").parse_args(argv)
    return config_from_args(args), not args.no_progress


class Nested(Command):
    name = "nested"
    help = "nested cross-validation: the honest figure of a choice among settings files"
    description = ("Nested cross-validation: per outer fold, choose among candidate settings (and the decision "
                   "threshold) by inner CV on the training part only; the honest figure of a choice.")
    epilog = ("Every other flag is one of smallct.cv's (data, model, training; --folds, --repeats and --seed set the "
              "outer folds) and applies to every candidate, over the candidate's own settings.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        n = parser.add_argument_group("nested cross-validation")
        n.add_argument("--candidates", dest="candidate_specs", type=comma_list(), required=True,
                       help="comma-separated settings files (best_params.json of smallct.tune, ...) or recipe names "
                            "(lite0_finetune), as smallct.cv --params takes")
        add_settings(n, NestedConfig, NESTED_ONLY)
        n.add_argument("--params", help="not taken here: give the settings files as --candidates")
        add_cv_settings(parser, CVConfig, skip=["out"])

    def run(self, args: argparse.Namespace) -> None:
        from smallct.engine.nested import run_nested  # the library, loaded on use: --help stays torch-free

        run_nested(config_from_args(args), progress=not args.no_progress)

    def kept(self, args: argparse.Namespace) -> str:
        return folds_kept(getattr(args, "out", NestedConfig().out), "inner runs and outer folds")


COMMAND = Nested()
