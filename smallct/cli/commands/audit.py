"""``smallct audit`` / ``python -m smallct.audit``: the shortcut audit (:func:`smallct.analysis.audit.audit`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from smallct.cli.flags import add_settings, given
from smallct.cli.runner import Command
from smallct.config.run import CVConfig
from smallct.config.schema import build


AUDIT_SETTINGS = ["data", "labels", "id_col", "label_col", "class_names", "positive_class", "folds", "repeats",
                  "seed", "group_similar"]


class Audit(Command):
    name = "audit"
    help = "shortcut audit: how well image metadata alone predicts the label"
    description = ("Shortcut audit: how well image metadata alone (size, aspect ratio, mode, file size, intensity "
                   "statistics) predicts the label, under the same cross-validation as smallct.cv.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_settings(parser, CVConfig, AUDIT_SETTINGS[:6], required=["data"],
                     help={"data": "image folder (with labels.csv, or one sub-folder per class)"})
        add_settings(parser, CVConfig, AUDIT_SETTINGS[6:], help={
            "folds": "cross-validation folds (as smallct.cv)", "seed": "seed of the folds and the forests",
            "group_similar": "keep near-duplicate images in one fold, as smallct.cv does (0 turns it off)"})
        parser.add_argument("--run", type=Path, help="take the folds of this smallct.cv run folder instead (exactly "
                                                     "its folds)")
        parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the intervals "
                                                                     "(at least 100; default 1000)")
        parser.add_argument("--out", type=Path, default=Path("runs/audit"), help="output folder (default runs/audit)")

    def run(self, args: argparse.Namespace) -> None:
        from smallct.analysis.audit import audit, format_report, run_folds, write_audit  # loaded on use: --help
        from smallct.datasets.folder import load_data  # stays torch-free

        cfg = build(CVConfig, given(args, CVConfig, AUDIT_SETTINGS))
        dataset = load_data(cfg.data, cfg.seed)
        assignment = run_folds(args.run, dataset) if args.run else None
        result = audit(dataset, cfg.folds, cfg.repeats, cfg.seed, args.n_boot, progress=not args.no_progress,
                       group_similar=cfg.data.group_similar, assignment=assignment)
        if args.run:
            result["folds_from"] = f"run.json of {args.run}"
        write_audit(result, dataset, args.out)
        print(format_report(result))
        print(f"written: {args.out / 'audit.json'}, {args.out / 'audit.png'}, {args.out / 'features.csv'}")


COMMAND = Audit()
