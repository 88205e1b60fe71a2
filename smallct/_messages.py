"""Messages of one line, shared by the library (download errors) and the command runner (every error)."""

from __future__ import annotations


def one_line(err: BaseException) -> str:
    """``err``'s message on one line (its type's name when it has none)."""
    text = str(err).strip() or type(err).__name__
    return " ".join(text.split())
