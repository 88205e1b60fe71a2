"""``smallct sequence`` / ``python -m smallct.sequence RUN``: a bidirectional GRU over each series of a multi-label
RSNA run, out of fold (:func:`smallct.engine.sequence.run_sequence`)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from smallct.cli.runner import Command
from smallct.cli.flags import add_settings, build_config
from smallct.config.studies import SequenceConfig


class Sequence(Command):
    name = "sequence"
    help = "a GRU over each series of an RSNA run, on its fold models' out-of-fold outputs (stacking or --strict)"
    description = ("Train a 2-layer bidirectional GRU over the slices of each series of a finished multi-label RSNA "
                   "run (smallct.cv on a folder made by smallct.prepare rsna), on what the run's fold models say of "
                   "each slice, out of fold: for every repeat and fold k, on the series outside fold k, evaluated on "
                   "fold k (the run's folds). Writes RUN/sequence (or --out): oof.csv, results.json with intervals "
                   "over patients and a paired comparison with the run, per_label_auc.png, roc.png. By default the "
                   "training series are described by the run's own fold models (stacking: those saw fold k); "
                   "--strict trains inner models without fold k for them (the honest version, (folds-1) x folds "
                   "more CNN fits per repeat).")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run", type=Path, help="a finished smallct.cv run folder (multi-label RSNA)")
        add_settings(parser.add_argument_group("features"), SequenceConfig, ["strict", "features"])
        add_settings(parser.add_argument_group("sequence model"), SequenceConfig,
                     ["epochs", "hidden", "lr", "batch_chains", "drop", "seed"])
        add_settings(parser.add_argument_group("run"), SequenceConfig, ["n_boot", "device", "out"])

    def run(self, args: argparse.Namespace) -> None:
        from smallct.engine.sequence import run_sequence  # the library, loaded on use: --help stays torch-free

        cfg = replace(build_config(SequenceConfig, args)[0], run=args.run)
        run_sequence(cfg, progress=not args.no_progress)

    def kept(self, args: argparse.Namespace) -> str:
        out = args.out or args.run / "sequence"
        return f"the finished folds are kept in {out}; run the same command again to resume"


COMMAND = Sequence()
