"""What a long-running command (``skull run``, ``skull host``) says on its terminal.

Three volumes, the same on both sides:

* default: one line per state change and per turn, from the *status loggers* below (the
  skull's :class:`skull.console.StatusLines`, the host's connections and its per-turn line),
  plus every warning and error;
* ``-q``: warnings and errors only;
* ``-v``: every component's INFO detail too; ``-vv``: DEBUG (frames, pings).

On a terminal the lines go through rich (time, coloured level); when stderr is not a terminal
(systemd's journal, a file, a pipe) they are plain lines without escape codes or timestamps
(the journal stamps them itself): a status line as it is (``WARNING: message`` for a
status warning), any other line as ``LEVEL logger: message``.
"""
from __future__ import annotations

import logging
import sys

STATUS_LOGGERS = ("skull.console", "host.status", "host.turns", "skull.discovery", "host.discovery")
"""the loggers whose INFO lines are shown by default (their DEBUG only with -vv)"""


class PlainLines(logging.Formatter):
    """Status lines as they are; anything else with its level and logger name."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.name in STATUS_LOGGERS:
            text = text if record.levelno == logging.INFO else f"{record.levelname}: {text}"
        else:
            text = f"{record.levelname} {record.name}: {text}"
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        return text


def setup(verbose: int = 0, quiet: bool = False, stream=None, status: bool = True) -> logging.Handler:
    """Route logging to ``stream`` (stderr) at the volume asked for; returns the handler.
    ``status`` False keeps the status loggers quiet whatever the volume (a command with a view
    of its own, such as ``skull demo``)."""
    stream = stream if stream is not None else sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        from rich.console import Console
        from rich.logging import RichHandler
        handler: logging.Handler = RichHandler(console=Console(file=stream), show_path=False, markup=False,
                                               rich_tracebacks=False, log_time_format="[%X]")
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(PlainLines())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 else logging.WARNING
    root.setLevel(logging.WARNING if quiet else level)
    shown = logging.WARNING if quiet or not status else min(level, logging.INFO)
    for name in STATUS_LOGGERS:
        logging.getLogger(name).setLevel(shown)
    return handler
