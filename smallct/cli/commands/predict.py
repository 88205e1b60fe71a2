"""``smallct predict`` / ``python -m smallct.predict``: the fold models of runs applied to new images
(:func:`smallct.apply.predict.predict`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from smallct.cli.runner import Command
from smallct.io.files import atomic_csv


def add_run(parser: argparse.ArgumentParser, many: bool = False) -> None:
    if many:
        parser.add_argument("--run", action="append", required=True, type=Path, metavar="RUN_DIR",
                            help="a smallct.cv run folder; repeat to average several runs (e.g. two architectures)")
    else:
        parser.add_argument("--run", required=True, type=Path, metavar="RUN_DIR", help="a smallct.cv run folder")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")


class Predict(Command):
    name = "predict"
    help = "predict new images with the fold models of one or more runs (their average)"
    description = ("Predict new images with the fold models of one or more smallct.cv runs (their average). "
                   "Image size, windows and normalisation are read from each run.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_run(parser, many=True)
        parser.add_argument("--data", nargs="+", action="extend", required=True, type=Path, metavar="PATH",
                            help="image or DICOM files, or folders (searched recursively)")
        parser.add_argument("--out", type=Path, default=Path("predictions.csv"),
                            help="CSV with one row per image (default predictions.csv)")
        parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                            help="also average each model over the left-right mirror of every image (default: as "
                                 "each run evaluated its test folds, run.json's tta, so that oof.csv is reproduced)")
        parser.add_argument("--fold", action="append", metavar="NAME",
                            help="use only this fold model, e.g. r0_f1 (repeatable; default every fold model)")
        parser.add_argument("--submission", type=Path, metavar="CSV",
                            help="multi-label RSNA runs: also write the competition format ID_<image>_<subtype>,Label")
        add_device(parser)
        parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
        parser.add_argument("--workers", type=int, default=0, help="decoding processes (0: every core)")

    def run(self, args: argparse.Namespace) -> None:
        from smallct.apply.predict import find_inputs, predict, rsna_submission  # loaded on use: --help
        from smallct.engine.run_models import load_run  # stays torch-free

        runs = [load_run(r) for r in args.run]
        if args.submission is not None and runs[0].task != "multilabel":
            raise ValueError(f"{runs[0].path}: --submission needs a multi-label RSNA run, this one is {runs[0].task}")
        files = find_inputs(args.data, workers=args.workers, progress=not args.no_progress)
        table = predict(runs, files, tta=args.tta, folds=args.fold, device=args.device,
                        batch_size=args.batch_size, workers=args.workers, progress=not args.no_progress)
        atomic_csv(args.out, table)
        print(f"wrote {len(table)} predictions to {args.out}")
        if args.submission is not None:
            sub = rsna_submission(table, runs[0].class_names)
            atomic_csv(args.submission, sub)
            print(f"wrote {len(sub)} submission rows to {args.submission}")


COMMAND = Predict()
