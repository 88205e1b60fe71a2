"""``python -m smallct.ensemble``, the entry point of ``smallct ensemble``: see :mod:`smallct.cli.commands.ensemble`.

A command new in smallct 0.2: there are no names of smallct 0.1 to forward from here.
"""

from smallct.cli import entry_point

main = entry_point(__spec__.name)[0]

if __name__ == "__main__":
    raise SystemExit(main())
