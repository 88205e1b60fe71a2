"""The command line: ``smallct COMMAND ...`` and ``python -m smallct.COMMAND ...``, one runner for all.

:data:`COMMANDS` is the table of commands (one module each in :mod:`smallct.cli.commands`); :func:`main`
is the ``smallct`` console entry point, with ``smallct --version``. Every command runs through
:func:`smallct.cli.runner.execute`, the one error path.
"""

from __future__ import annotations

import argparse

import smallct
from smallct import _legacy
from smallct.cli.commands import (audit, compare, curve, cv, data, ensemble, explain, export, fewshot, nested,
                                  predict, prepare, sequence, tune)
from smallct.cli.runner import Command, Parser, configure, execute, parse, run_module

# In the order of the data's journey: prepare and check the data, learn, tune, study, compare and ensemble,
# apply.
COMMANDS: dict[str, Command] = {m.COMMAND.name: m.COMMAND for m in (
    data, prepare, cv, nested, tune, fewshot, curve, audit, compare, ensemble, sequence, predict, explain,
    export)}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="smallct", description=smallct.__doc__.strip().splitlines()[0])
    parser.add_argument("--version", action="version", version=f"smallct {smallct.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        configure(sub.add_parser(name, help=command.help), command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``smallct COMMAND [flags]``: the console entry point."""
    args = parse(build_parser(), argv)
    args.argv = args.argv[1:]  # the command's own arguments
    return execute(COMMANDS[args.command], args, f"smallct {args.command}")


def run(name: str, argv: list[str] | None = None) -> int:
    """``python -m smallct.<name> ARGV`` (and ``smallct.<name>.main(argv)`` in Python)."""
    return run_module(COMMANDS[name], argv)


def entry_point(module: str):
    """``(main, __getattr__)`` of the entry module ``smallct.<name>`` of a command: ``main(argv)`` runs the
    command; ``__getattr__`` forwards the library names smallct 0.1 defined there (:mod:`smallct._legacy`)."""
    name = module.rpartition(".")[2]

    def main(argv: list[str] | None = None) -> int:
        return run(name, argv)
    return main, _legacy.forward(module)


__all__ = ["COMMANDS", "Command", "build_parser", "entry_point", "main", "run"]
