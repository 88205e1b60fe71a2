"""``smallct export`` / ``python -m smallct.export``: a run's fold models as ONNX or TorchScript
(:func:`smallct.apply.export.export_run`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from smallct.cli.commands.predict import add_run
from smallct.cli.runner import Command


class Export(Command):
    name = "export"
    help = "export a run's fold models (averaged, normalisation inside) to ONNX or TorchScript"
    description = ("Export the fold models of a smallct.cv run (probabilities averaged, normalisation inside) "
                   "to ONNX or TorchScript, with a JSON of the input contract beside it.")
    progress = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_run(parser)
        parser.add_argument("--out", required=True, type=Path, help="output file: NAME.onnx or NAME.pt")
        parser.add_argument("--format", choices=["onnx", "torchscript"], help="default: from the suffix of --out")
        parser.add_argument("--fold", action="append", metavar="NAME",
                            help="export only this fold model, e.g. r0_f0 (repeatable; default: every fold model, "
                                 "averaged)")
        parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                            help="build the left-right mirror average into the graph (default: as the run evaluated "
                                 "its test folds, run.json's tta, so that the graph gives oof.csv's probabilities)")
        parser.add_argument("--opset", type=int, default=18, help="ONNX opset version, 18 or newer (default 18)")

    def run(self, args: argparse.Namespace) -> None:
        from smallct.apply.export import contract_path, export_run  # loaded on use: --help stays torch-free
        from smallct.engine.run_models import load_run  # (torch)

        contract = export_run(load_run(args.run), args.out, args.format, args.fold, args.tta, args.opset)
        diff = contract["max_abs_difference"]
        check = ("not checked (pip install onnxruntime to run it)" if diff is None
                 else f"largest difference from torch {diff:.1e}")
        n = len(contract["models"])
        print(f"wrote {args.out} ({n} {contract['arch']} fold model{'s' * (n > 1)}, "
              f"{args.out.stat().st_size / 1e6:.1f} MB; {check}) and {contract_path(args.out)}")


COMMAND = Export()
