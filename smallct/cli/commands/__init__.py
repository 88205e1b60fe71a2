"""One module per command: its flags and its call of the library (see :mod:`smallct.cli.runner`)."""
