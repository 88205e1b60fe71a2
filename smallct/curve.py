"""``python -m smallct.curve``, the entry point of ``smallct curve``: see :mod:`smallct.cli.commands.curve`.

Names smallct 0.1 defined here still resolve, with a warning, to where they live now (:mod:`smallct._legacy`).
"""

from smallct.cli import entry_point

main, __getattr__ = entry_point(__spec__.name)

if __name__ == "__main__":
    raise SystemExit(main())
