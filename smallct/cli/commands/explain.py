"""``smallct explain`` / ``python -m smallct.explain``: Grad-CAM heat maps of a run
(:mod:`smallct.apply.explain`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from smallct.cli.commands.predict import add_device, add_run
from smallct.cli.runner import Command


class Explain(Command):
    name = "explain"
    help = "Grad-CAM heat maps of a run's misclassified images, or of new images"
    description = ("Grad-CAM heat maps of a smallct.cv run, side by side with the input. By default the run's "
                   "misclassified out-of-fold images, each by the fold model that held it out.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_run(parser)
        parser.add_argument("--data", nargs="+", action="extend", type=Path, metavar="PATH",
                            help="new image or DICOM files or folders, explained by all fold models (maps averaged); "
                                 "default: the run's own images")
        parser.add_argument("--out", type=Path, default=Path("explain"), help="output folder (default explain)")
        parser.add_argument("--class", dest="target", metavar="NAME",
                            help="class whose evidence is shown (default: the predicted class; multi-label: any)")
        parser.add_argument("--layer", metavar="NAME",
                            help="module whose feature map is used (default: the last one, layer4 of a ResNet); an "
                                 "earlier stage such as layer3 gives finer maps on small inputs")
        parser.add_argument("--all", action="store_true", help="run's own images: all, not only the misclassified")
        parser.add_argument("--id", action="append", dest="ids", metavar="ID",
                            help="run's own images: only this id (repeatable)")
        parser.add_argument("--repeat", type=int, default=0,
                            help="run's own images: the CV repeat whose fold models explain (default 0)")
        parser.add_argument("--limit", type=int, default=100,
                            help="draw at most this many images (0: no limit; default 100)")
        add_device(parser)

    def run(self, args: argparse.Namespace) -> None:
        from smallct.apply.explain import explain_images, explain_oof, write_explanations  # the library, loaded
        from smallct.apply.predict import find_inputs  # on use: --help stays torch-free
        from smallct.engine.run_models import load_run  # (torch)

        run = load_run(args.run)
        progress = not args.no_progress
        if args.data:
            files = find_inputs(args.data)
            if args.limit and len(files) > args.limit:
                print(f"smallct.explain: {len(files)} images given; drawing the first {args.limit} (--limit 0 for all)")
                files = files[:args.limit]
            table, images, maps = explain_images(run, files, args.target, args.layer, args.device, progress)
        else:
            table, images, maps = explain_oof(run, args.all, args.ids, args.target, args.repeat, args.limit or None,
                                              args.layer, args.device, progress)
        if table.empty:
            print("no misclassified out-of-fold images: nothing to explain (--all draws every image)")
            return
        write_explanations(run, table, images, maps, args.out, progress)
        print(f"wrote {len(table)} Grad-CAM figures, explain.csv and cams.npz to {args.out}")


COMMAND = Explain()
