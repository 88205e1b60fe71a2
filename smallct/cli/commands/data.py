"""``smallct data`` / ``python -m smallct.data``: check a copy of the Head CT set against the packaged manifest,
or write the manifest of a folder (:mod:`smallct.datasets.head_ct`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from smallct.cli.runner import Command
from smallct.io.files import atomic_csv


class Data(Command):
    name = "data"
    help = "check a copy of the Head CT set against its manifest (SHA-256 of every file), or write a manifest"
    description = ("The Head CT data manifest: verify compares every file of DIR with the manifest shipped inside "
                   "the package and names every missing, changed or unexpected file; manifest writes one.")
    progress = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        v = sub.add_parser("verify", help="check a copy of the Head CT set against the packaged manifest")
        v.add_argument("folder", type=Path)
        v.add_argument("--manifest", type=Path, help="another manifest CSV (default: the packaged Head CT one)")
        m = sub.add_parser("manifest", help="write the manifest of an image folder")
        m.add_argument("folder", type=Path)
        m.add_argument("--out", type=Path, default=Path("data_manifest.csv"))
        m.add_argument("--source", help="the source column (default: the Kaggle Head CT set)")

    def run(self, args: argparse.Namespace) -> int:
        import pandas as pd  # loaded on use: --help stays fast

        from smallct.datasets.head_ct import build_manifest, verify  # loaded on use, as pandas

        if args.action == "verify":
            manifest = pd.read_csv(args.manifest, dtype={"label": str}) if args.manifest else None
            report = verify(args.folder, manifest)
            print(report.summary())
            return 0 if report.ok else 1
        source = {"source": args.source} if args.source else {}
        atomic_csv(args.out, build_manifest(args.folder, **source))
        print(f"wrote {args.out}")
        return 0


COMMAND = Data()
