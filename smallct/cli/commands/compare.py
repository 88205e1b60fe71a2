"""``smallct compare`` / ``python -m smallct.compare``: a paired comparison of two runs on the same folds
(:func:`smallct.analysis.compare.compare_runs`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from smallct.cli.runner import Command


class Compare(Command):
    name = "compare"
    help = "paired comparison of two runs on the same folds (B - A, with intervals)"
    description = ("Paired comparison of two smallct.cv runs on the same folds (same data, --folds, --repeats and "
                   "--seed): difference in accuracy and AUC (B - A) with a paired bootstrap interval over the groups the "
                   "folds keep whole, and with repeated CV the Nadeau-Bengio corrected resampled t-test. A "
                   "difference is called clear only when both agree: use --repeats 5 or more.")
    progress = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_a", type=Path, help="run folder A (the reference, e.g. resnet18)")
        parser.add_argument("run_b", type=Path, help="run folder B (the challenger, e.g. resnet152)")
        parser.add_argument("--out", type=Path, help="output folder (default: compare_A_vs_B beside RUN_B)")
        parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000) of the "
                            "units the folds keep whole (near-duplicate groups, patients, else images)")
        parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")

    def run(self, args: argparse.Namespace) -> None:
        from smallct.analysis import compare  # the library, loaded on use: --help stays torch-free

        result = compare.compare_runs(args.run_a, args.run_b, n_boot=args.n_boot, seed=args.seed)
        out = args.out or args.run_b.parent / f"compare_{args.run_a.name}_vs_{args.run_b.name}"
        compare.write_comparison(result, out)
        for m in compare.COMPARED:
            print(compare.describe_difference(m, result[m]))
        if result["nadeau_bengio"]:
            for m in compare.COMPARED:
                t = result["nadeau_bengio"][m]
                print(f"Nadeau-Bengio corrected t-test, {compare.NAMES[m]}: mean per-fold difference "
                      f"{t['mean_difference']:+.3f}, t = {t['t']:.2f}, df = {t['df']}, p = {t['p_value']:.3f}")
        print(result["sentence"])
        print(f"written: {out / 'compare.json'}, {out / 'compare.png'}")


COMMAND = Compare()
