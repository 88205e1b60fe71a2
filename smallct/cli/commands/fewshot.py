"""``smallct fewshot`` / ``python -m smallct.fewshot``: few-shot baselines in episodes
(:func:`smallct.studies.fewshot.run_fewshot`)."""

from __future__ import annotations

import argparse

from smallct.cli.flags import add_settings, build_config
from smallct.cli.runner import Command
from smallct.config.studies import FewShotConfig

DATA = ["data", "labels", "id_col", "label_col", "class_names", "positive_class", "img_size", "resize", "crop",
        "phantom_n"]
# the fine-tuning flags of fewshot and curve: a few fields of their ``finetune`` TrainConfig
FINETUNE = ["finetune_img_size", "epochs", "lr", "optimizer", "schedule", "weight_decay", "augment"]
FINETUNE_HELP = {"epochs": "fine-tuning epochs", "lr": "fine-tuning learning rate"}


class FewShot(Command):
    name = "fewshot"
    help = "few-shot baselines: k labelled images per class, tested on all the others, over episodes"
    description = ("Few-shot baselines: k labelled images per class, tested on all the others outside their "
                   "near-duplicate groups, repeated over episodes. Without --data it runs on a generated synthetic "
                   "head-CT phantom set.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_settings(parser.add_argument_group("data"), FewShotConfig, [*DATA, "group_similar"], help={
            "img_size": "embedding input size in px (default: the weights' own size; on Head CT, Lite0 at 320 px "
                        "beat 224 px)",
            "group_similar": "images whose 64 px thumbnails correlate >= CORR form one group (as in smallct.cv): "
                             "support images come from distinct groups, and no query image shares a support "
                             "image's group (0 turns it off)"})
        add_settings(parser.add_argument_group("model and embeddings"), FewShotConfig,
                     ["arch", "weights", "offline", "pool", "flip", "normalize"])
        add_settings(parser.add_argument_group("episodes and methods"), FewShotConfig,
                     ["shots", "episodes", "methods", "C", "knn_k", "seed"])
        add_settings(parser.add_argument_group("fine-tuning (costly: every episode trains a network)"), FewShotConfig,
                     [*FINETUNE, "finetune_episodes"], help=FINETUNE_HELP)
        add_settings(parser.add_argument_group("run"), FewShotConfig, ["device", "threads", "out"])

    def run(self, args: argparse.Namespace) -> None:
        from smallct.studies.fewshot import run_fewshot  # the library, loaded on use: --help stays torch-free

        run_fewshot(build_config(FewShotConfig, args)[0], progress=not args.no_progress)

    def kept(self, args: argparse.Namespace) -> str:
        return ("no tables were written; decoded images and finished embeddings are cached, so the same command "
                "starts faster")


COMMAND = FewShot()
