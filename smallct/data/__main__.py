"""``python -m smallct.data verify DIR``: the entry point of ``smallct data`` (:mod:`smallct.cli.commands.data`)."""

import sys

from smallct import cli

sys.exit(cli.run("data"))
