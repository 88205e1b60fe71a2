"""``smallct prepare`` / ``python -m smallct.prepare``: a raw image set made once into a prepared folder
(:func:`smallct.datasets.prepare.prepare_rsna`, :func:`~smallct.datasets.prepare.prepare_png`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from smallct.cli.runner import Command
from smallct.io.windows import DEFAULT_WINDOWS, HEADER_WINDOW, WINDOWS


class Prepare(Command):
    name = "prepare"
    help = "a raw image set (RSNA DICOM, or PNG) made once into normalised PNGs with a manifest"
    description = ("Write a normalised PNG cache with manifest.csv from a raw image set; python -m smallct.cv "
                   "--data OUT trains on it. A second run with the same --out does only what is missing.")
    progress = False  # each sub-command has its own --no-progress

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="kind", required=True, metavar="{rsna,png,merge}")
        r = sub.add_parser("rsna", help="RSNA 2019 DICOM slices + stage_2_train.csv -> windowed RGB PNGs",
                           description="Window RSNA 2019 DICOM slices into RGB PNGs (one window per channel) and "
                                       "write manifest.csv (id, file, six labels, patient, study, series, "
                                       "position and orientation, prev and next): each series in order along its "
                                       "slice normal, with each slice's neighbours.")
        r.add_argument("--dicom", type=Path, required=True, help="folder of ID_<hex>.dcm slices (searched recursively)")
        r.add_argument("--labels", type=Path, required=True, help="labels CSV in stage_2_train.csv format (ID,Label)")
        r.add_argument("--out", type=Path, required=True, help="output folder; the same folder resumes")
        r.add_argument("--windows", default=",".join(DEFAULT_WINDOWS),
                       help="three windows for R,G,B, among " + ", ".join([*WINDOWS, HEADER_WINDOW])
                            + " (centre/width in HU, see smallct.io.windows.WINDOWS; default %(default)s)")
        r.add_argument("--size", type=int, default=256, help="PNG side in px, aspect ratio kept (default %(default)s)")
        r.add_argument("--limit", type=int, help="at most N images, drawn at random with --seed")
        r.add_argument("--balance", action="store_true",
                       help="every positive (any = 1) and as many negatives drawn at random with --seed")
        r.add_argument("--seed", type=int, default=0, help="seed of --limit and --balance draws (default 0)")
        r.add_argument("--shard", metavar="K/N",
                       help="prepare only shard K of N (K counted from 1: --shard 1/4 ... --shard 4/4): whole series, "
                            "the same flags in every shard, one --out; then: prepare merge OUT")
        png = sub.add_parser("png", help="a labelled PNG set -> the same normalised RGB PNG cache",
                             description="Normalise a labelled image folder (labels.csv or class sub-folders) "
                                         "into RGB uint8 PNGs and write manifest.csv (id, file, label).")
        png.add_argument("--src", type=Path, required=True, help="image folder with labels.csv or class sub-folders")
        png.add_argument("--out", type=Path, required=True, help="output folder; the same folder resumes")
        png.add_argument("--labels", type=Path, help="labels CSV (default SRC/labels.csv)")
        png.add_argument("--id-col", help="id column of the labels CSV (default: 'id' or the first column)")
        png.add_argument("--label-col", help="label column of the labels CSV (default: the other column)")
        png.add_argument("--size", type=int, help="crop the border and resize to this side in px (default: keep size)")
        png.add_argument("--shard", metavar="K/N", help="refused: a PNG set is prepared in one run (--workers)")
        for q in (r, png):
            q.add_argument("--workers", type=int, default=0, help="processes (default 0: every core; 1: one core)")
            q.add_argument("--no-progress", action="store_true", help="no progress bar")
        merge = sub.add_parser("merge", help="join the shards of prepare rsna --shard K/N into manifest.csv",
                               description="Join OUT/shards/manifest-K-of-N.csv and report-K-of-N.json of every "
                                           "shard into OUT/manifest.csv and OUT/report.json, as one unsharded run "
                                           "writes them; refused, writing nothing, while a shard is missing.")
        merge.add_argument("out", type=Path, help="the folder every shard prepared into (their --out)")

    def run(self, args: argparse.Namespace) -> None:
        from smallct.datasets.prepare import prepare_png, prepare_rsna  # loaded on use: --help stays fast
        from smallct.datasets.shards import merge_shards, prepare_rsna_shard  # loaded on use, as above

        if args.kind == "merge":
            merge_shards(args.out)
        elif args.kind == "rsna" and args.shard is not None:
            prepare_rsna_shard(args.dicom, args.labels, args.out, args.shard, windows=args.windows, size=args.size,
                               limit=args.limit, balance=args.balance, seed=args.seed, workers=args.workers,
                               progress=not args.no_progress)
        elif args.kind == "png" and args.shard is not None:
            raise ValueError(f"--shard {args.shard}: prepare png has no shards (a PNG set is prepared in one run; "
                             "--workers 0 uses every core); only prepare rsna takes --shard")
        elif args.kind == "rsna":
            prepare_rsna(args.dicom, args.labels, args.out, windows=args.windows, size=args.size, limit=args.limit,
                         balance=args.balance, seed=args.seed, workers=args.workers, progress=not args.no_progress)
        else:
            prepare_png(args.src, args.out, labels=args.labels, id_col=args.id_col, label_col=args.label_col,
                        size=args.size, workers=args.workers, progress=not args.no_progress)

    def kept(self, args: argparse.Namespace) -> str:
        return f"finished images are kept in {args.out}; run the same command again to resume"


COMMAND = Prepare()
