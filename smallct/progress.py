"""Progress bars that suit where the output goes: ``from smallct.progress import tqdm`` instead of ``tqdm.auto``.

On a terminal or in a notebook this is tqdm's own bar (the widget in Jupyter, as :mod:`tqdm.auto` picks).
When the bar's stream is not a terminal (a log file, a pipe, a CI job, ``nohup``), redrawing one line with
carriage returns would fill the log with every intermediate state on one endless line; there the bar writes
whole, newline-terminated lines instead: one when it starts, then at most one every
``SMALLCT_PROGRESS_INTERVAL`` seconds (default 30), and one with the final count when it closes (whatever
``leave`` says: in a log that line is the record). Nested bars write their own lines, no cursor movement.
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm as _tqdm  # tqdm.notebook's widget bar in Jupyter, the terminal bar elsewhere

__all__ = ["tqdm", "is_terminal", "log_interval"]

INTERVAL = 30.0  # seconds between two lines of one bar in a log


def is_terminal(stream) -> bool:
    """True when ``stream`` is a terminal (``isatty()``), or is this process's stdout or stderr in a Jupyter
    kernel: those are no terminal but show tqdm's bars (the widget, or carriage returns) as a terminal does."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or a closed file
        pass
    if stream not in (sys.stdout, sys.stderr):
        return False
    ipython = sys.modules.get("IPython")  # a kernel has imported it; never import it here
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def log_interval() -> float:
    """Seconds between two lines of a bar in a log: ``SMALLCT_PROGRESS_INTERVAL``, else 30."""
    value = os.environ.get("SMALLCT_PROGRESS_INTERVAL", "")
    try:
        return max(0.0, float(value)) if value else INTERVAL
    except ValueError:
        raise ValueError(f"SMALLCT_PROGRESS_INTERVAL={value!r}: expected a number of seconds, e.g. 30") from None


class tqdm(_tqdm):  # noqa: N801 (a drop-in for tqdm's class, under its name)
    """tqdm's bar, or whole lines at a low rate when the stream (``file``, default stderr) is no terminal.

    Takes tqdm's arguments, plus ``interval``: seconds between two lines in a log (default
    :func:`log_interval`). ``tqdm.write`` and every other class method are tqdm's.
    """

    def __init__(self, *args, interval: float | None = None, **kwargs):
        stream = kwargs.get("file") or (args[4] if len(args) > 4 else None) or sys.stderr  # tqdm's 5th is file
        self._lines = not is_terminal(stream)
        if self._lines:
            self._interval = log_interval() if interval is None else interval
            self._line_t: float | None = None  # when this bar last wrote a line
            self._closing = False
            kwargs.setdefault("mininterval", self._interval)  # update() asks for a redraw no more often
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None, **kwargs):
        """One whole line (in a log): the bar's state, at most every ``interval`` seconds, and at close."""
        if not self._lines:
            return super().display(msg, pos, **kwargs)  # (the notebook bar takes more arguments)
        if msg == "":  # tqdm's way of wiping a bar: a log keeps its lines
            return True
        now = self._time()
        if msg is None and not self._closing and self._line_t is not None and now - self._line_t < self._interval:
            return True  # explicit refreshes (set_postfix, tqdm.write) keep to the rate too
        self.fp.write((self.__str__() if msg is None else msg).rstrip() + "\n")
        getattr(self.fp, "flush", lambda: None)()
        self._line_t = now
        return True

    def clear(self, *args, **kwargs):
        if not self._lines:  # a log has no line to wipe
            super().clear(*args, **kwargs)

    def moveto(self, n):
        if not self._lines:  # nor a cursor to move
            super().moveto(n)

    def close(self):
        if getattr(self, "disable", True) or not self._lines:
            return super().close()
        shown = self._line_t is not None  # with ``delay`` a short bar may never have shown: nothing to end
        self.disable = True  # tqdm's guard against closing twice (close runs again from __del__)
        self._decr_instances(self)
        if shown:
            with self._lock:
                self._ema_dt = lambda: None  # the last line gives the overall rate, as tqdm's own does
                self._closing = True
                try:
                    self.display()
                except ValueError:  # the stream was closed first (interpreter exit): nothing to write to
                    pass
