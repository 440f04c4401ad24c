"""Logging the failures a process survives, so that none is lost and none floods the log.

:class:`FaultLog` logs an unexpected exception with its context; the first time a fault is seen
(the same exception type raised at the same line) with its traceback, after that as one line
that points back to it. A device that fails fifty times a second, or a host fault hit by every
frame, writes one traceback. Both sides use it: the skull's supervisor, link and jaw loop, and
the host's connections and turns.
"""
from __future__ import annotations

import logging
import traceback


class FaultLog:
    """``faults(where, exc)`` logs ``exc`` as a fault at ``where`` (what was being done, for
    whom) and returns a one-line summary. ``count`` and ``last`` say how many and which."""

    def __init__(self, logger: logging.Logger, goes_on: str = ""):
        self.log = logger
        self.goes_on = goes_on
        """appended to each line, e.g. "; the skull goes on" """
        self.count = 0
        self.last = ""
        self._seen: set[tuple[type, str, int]] = set()

    def __call__(self, where: str, exc: BaseException) -> str:
        tb = traceback.extract_tb(exc.__traceback__)
        origin = (tb[-1].filename, tb[-1].lineno) if tb else ("", 0)
        key = (type(exc), *origin)
        first = key not in self._seen
        self._seen.add(key)
        self.count += 1
        self.last = f"{where}: {type(exc).__name__}: {exc}"
        again = "" if first or not origin[0] else f" (at {origin[0]}:{origin[1]}; traceback logged before)"
        self.log.error("%s failed (%s: %s)%s%s", where, type(exc).__name__, exc, self.goes_on, again,
                       exc_info=exc if first else None)
        return self.last
