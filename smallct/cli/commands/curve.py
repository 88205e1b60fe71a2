"""``smallct curve`` / ``python -m smallct.curve``: learning curves (:func:`smallct.studies.curve.run_curve`)."""

from __future__ import annotations

import argparse

from smallct.cli.commands.fewshot import DATA, FINETUNE, FINETUNE_HELP
from smallct.cli.flags import add_settings, build_config
from smallct.cli.runner import Command
from smallct.config.studies import CurveConfig


class Curve(Command):
    name = "curve"
    help = "learning curves: cross-validated accuracy against the number of training images"
    description = ("Learning curves: cross-validated accuracy when training on n images per fold, for each n, "
                   "pretrained against random initialisation, linear probe against fine-tuning. Without --data it "
                   "runs on a generated synthetic head-CT phantom set.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_settings(parser.add_argument_group("data"), CurveConfig, [*DATA, "group_similar"],
                     help={"img_size": "embedding input size in px (default: the weights' own size)"})
        add_settings(parser.add_argument_group("model"), CurveConfig,
                     ["arch", "weights", "offline", "methods", "pool", "flip", "normalize", "C"])
        add_settings(parser.add_argument_group("sizes and validation"), CurveConfig,
                     ["sizes", "folds", "repeats", "seed"])
        add_settings(parser.add_argument_group("fine-tuning"), CurveConfig, FINETUNE, help=FINETUNE_HELP)
        add_settings(parser.add_argument_group("run"), CurveConfig,
                     ["device", "threads", "out", "tensorboard", "mlflow"])

    def run(self, args: argparse.Namespace) -> None:
        from smallct.studies.curve import run_curve  # the library, loaded on use: --help stays torch-free

        run_curve(build_config(CurveConfig, args)[0], progress=not args.no_progress)

    def kept(self, args: argparse.Namespace) -> str:
        return ("no tables were written; decoded images and finished embeddings are cached, so the same command "
                "starts faster")


COMMAND = Curve()
