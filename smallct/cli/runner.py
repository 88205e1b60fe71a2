"""The one command runner: a command declares its flags and calls the library; errors have one path.

Every command (``smallct cv ...`` or ``python -m smallct.cv ...``) is a :class:`Command`: ``add_arguments``
declares its flags (mostly made from the config dataclasses, :mod:`smallct.cli.flags`), ``run`` builds the
config and calls the library, ``kept`` says what an interrupted run keeps. :func:`execute` is the one
error path: bad input (``ValueError``, a missing or unwritable file, a NaN loss) is one line and exit 2,
never a traceback; Ctrl-C says what was kept and how to resume, exit 130.

Commands import the library inside ``run``: ``--help`` then answers without loading torch.
"""

from __future__ import annotations

import argparse
import os
import sys

from smallct._messages import one_line


class Command:
    """One command: its name, its flags, its call of the library."""

    name: str = ""
    help: str = ""  # one line, in ``smallct --help``
    description: str = ""
    epilog: str | None = None
    progress: bool = True  # long work: a --no-progress flag
    distributed: bool = False  # runs under torchrun with several processes (smallct cv); the others refuse

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        raise NotImplementedError

    def run(self, args: argparse.Namespace) -> int | None:
        raise NotImplementedError

    def kept(self, args: argparse.Namespace) -> str:
        """What an interrupted run keeps, and how to go on."""
        return "nothing was written; run the same command again"


class Parser(argparse.ArgumentParser):
    """argparse, whose errors (an unknown choice, a missing or malformed flag) are one line and exit 2 like the
    others: ``smallct cv: error: argument --optimizer: invalid choice: 'sgdd' (choose from sgd, adam, adamw)``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def configure(parser: argparse.ArgumentParser, command: Command) -> argparse.ArgumentParser:
    parser.description = command.description or command.help
    parser.epilog = command.epilog
    command.add_arguments(parser)
    if command.progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def command_parser(command: Command, prog: str) -> argparse.ArgumentParser:
    """The parser of one command under ``prog`` (``python -m smallct.cv`` or ``smallct cv``)."""
    return configure(Parser(prog=prog), command)


def execute(command: Command, args: argparse.Namespace, label: str) -> int:
    """Run ``command`` with parsed ``args``; ``label`` names it in messages (``smallct.cv``)."""
    processes = os.environ.get("WORLD_SIZE", "1")
    if processes != "1" and not command.distributed:  # each process would repeat the whole work, or race
        print(f"{label}: error: started by torchrun with WORLD_SIZE={processes}: {label} runs in one process "
              "(torchrun runs smallct.cv; tune spreads over machines with workers on one --storage, prepare with "
              "--shard K/N)", file=sys.stderr)
        return 2
    try:
        return command.run(args) or 0
    except KeyboardInterrupt:
        print(f"\ninterrupted: {command.kept(args)}", file=sys.stderr)
        return 130
    except (ValueError, OSError, FloatingPointError) as err:  # bad input, a file, a NaN loss: one line each
        print(f"{label}: error: {one_line(err)}", file=sys.stderr)
        return 2


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv`` (default: the process's arguments); ``args.argv`` keeps them (tune's workers repeat them)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    return args


def run_module(command: Command, argv: list[str] | None = None) -> int:
    """``python -m smallct.<name> ARGV``: parse and run one command (its messages say ``smallct.<name>``)."""
    args = parse(command_parser(command, f"python -m smallct.{command.name}"), argv)
    return execute(command, args, f"smallct.{command.name}")
