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
                            help="a smallct.cv run folder, or a smallct.sequence folder (its base run's fold models "
                                 "with its sequence model over each series); repeat to average several runs (e.g. "
                                 "two architectures)")
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
        parser.add_argument("--on-unreadable", choices=("report", "fail"), default="report",
                            help="a DICOM file that cannot be read: 'report' (default) goes on without it and names "
                                 "it in one line and in a report beside the submission (sub.csv: "
                                 "sub.unreadable.json; without --submission, beside --out); the submission, which "
                                 "needs a row for every image, gives it the training set's label rates (each label's "
                                 "mean over the run's oof.csv), while --out holds readable files only, as "
                                 "smallct.prepare rsna skips them. 'fail' stops (exit 2) and writes nothing")
        parser.add_argument("--smooth", type=int, metavar="N",
                            help="average each label's probability over N slices of a series (odd; never across a "
                                 "gap; 1: none; default: as each run smoothed its out-of-fold predictions, its "
                                 "--smooth); DICOM folders give the series")
        add_device(parser)
        parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
        parser.add_argument("--workers", type=int, default=0, help="decoding processes (0: every core)")

    def run(self, args: argparse.Namespace) -> None:
        from smallct.apply.predict import find_series, predict, resolve_runs  # on use: --help stays torch-free
        from smallct.apply.submission import fill_unreadable, report_unreadable, rsna_submission  # likewise

        runs = resolve_runs(args.run)[0]  # a sequence folder stands for its base run (and its GRU on top)
        if args.submission is not None and runs[0].task != "multilabel":
            raise ValueError(f"{runs[0].path}: --submission needs a multi-label RSNA run, this one is {runs[0].task}")
        if args.smooth is not None and (args.smooth < 1 or args.smooth % 2 == 0):
            raise ValueError(f"--smooth {args.smooth}: expected an odd number of slices (1: none)")
        files, neighbours = find_series(args.data, workers=args.workers, progress=not args.no_progress)
        unreadable = [] if args.on_unreadable == "report" else None
        table = predict(args.run, files, tta=args.tta, folds=args.fold, device=args.device,
                        batch_size=args.batch_size, workers=args.workers, progress=not args.no_progress,
                        unreadable=unreadable, neighbours=neighbours, smooth=args.smooth)
        sub, given = None, None
        if args.submission is not None:
            every, given = fill_unreadable(table, unreadable or [], runs)
            sub = rsna_submission(every, runs[0].class_names)
        atomic_csv(args.out, table)
        print(f"wrote {len(table)} predictions to {args.out}")
        if sub is not None:
            atomic_csv(args.submission, sub)
            print(f"wrote {len(sub)} submission rows to {args.submission}")
        report_unreadable(unreadable or [], args.submission or args.out, given)


COMMAND = Predict()
