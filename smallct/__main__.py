"""``python -m smallct COMMAND ...``: the same as the ``smallct`` console command."""

import sys

from smallct.cli import main

sys.exit(main())
