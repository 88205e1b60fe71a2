"""``python -m smallct.fewshot``, the entry point of ``smallct fewshot``: see :mod:`smallct.cli.commands.fewshot`.

Names smallct 0.1 defined here still resolve, with a warning, to where they live now (:mod:`smallct._legacy`).
"""

from smallct.cli import entry_point

main, __getattr__ = entry_point(__spec__.name)

if __name__ == "__main__":
    raise SystemExit(main())
