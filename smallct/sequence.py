"""``python -m smallct.sequence RUN``, the entry point of ``smallct sequence``: see
:mod:`smallct.cli.commands.sequence` (the library: :mod:`smallct.engine.sequence`)."""

from smallct.cli import run


def main(argv: list[str] | None = None) -> int:
    return run("sequence", argv)


if __name__ == "__main__":
    raise SystemExit(main())
