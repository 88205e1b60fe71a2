"""``smallct ensemble`` / ``python -m smallct.ensemble``: the out-of-fold predictions of runs on the same folds,
averaged and written as a run folder with figures, intervals and a paired comparison against the best member
(:func:`smallct.analysis.ensemble.ensemble_runs`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from smallct.cli.runner import Command


def weight_list(text: str) -> list[float]:
    """``--weights 1,2``: one number per run."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give one number per run, separated by commas (e.g. 1,2)")


class Ensemble(Command):
    name = "ensemble"
    help = "average the out-of-fold predictions of runs on the same folds (figures, intervals, vs best member)"
    description = ("Average the out-of-fold probabilities of smallct.cv runs on the same folds (same data, --folds, "
                   "--repeats and --seed; different architectures, sizes or initialisation seeds) per image and "
                   "repeat, and write the ensemble as a run folder: oof.csv, results.json (pooled figures with the "
                   "same grouped bootstrap intervals as cv), roc.png, confusion.png, and compare.json: a paired "
                   "comparison of the ensemble against its best member. smallct predict averages the member runs "
                   "on new images.")
    progress = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run folders (two or more)")
        parser.add_argument("--out", type=Path, required=True, help="the ensemble's folder (not a member's)")
        parser.add_argument("--weights", type=weight_list, help="one weight per run, e.g. 1,2 (normalised; "
                            "default equal). Fix them beforehand: weights chosen on these figures flatter them")
        parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000) of the "
                            "units the folds keep whole (near-duplicate groups, patients, else images)")
        parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")

    def run(self, args: argparse.Namespace) -> None:
        from smallct.analysis.ensemble import ensemble_runs  # the library, loaded on use: --help stays torch-free

        ensemble_runs(args.runs, args.out, weights=args.weights, n_boot=args.n_boot, seed=args.seed)


COMMAND = Ensemble()
