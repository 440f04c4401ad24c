"""JSON-lines files rotated by size, for the turn logs of both sides (skull ``[log] turns``,
host ``[server] turn_log``): one JSON object per line, one line per finished turn.

Rotation is :class:`logging.handlers.RotatingFileHandler`'s: when the next line would take the
file past ``max_mb`` it becomes ``PATH.1`` (``PATH.1`` becomes ``PATH.2``...), and only
``backups`` of them are kept. A file that cannot be opened at start is a :class:`ConfigError`
naming the key and the path; a line that cannot be written later (disk full, the folder
removed, permissions changed) is logged once, and the next failure after a line was written
again is logged again: the turn that wrote it never notices.
"""
from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger("skull.jsonlog")


class _Handler(logging.handlers.RotatingFileHandler):
    """A rotating file whose write failures go to ``on_error`` (not a traceback on stderr)."""

    def __init__(self, path: str, max_bytes: int, backups: int, on_error):
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self.on_error = on_error
        self.setFormatter(logging.Formatter("%(message)s"))

    def handleError(self, record: logging.LogRecord) -> None:
        self.on_error(sys.exc_info()[1])


class JsonLines:
    """``JsonLines(path, max_mb=10, backups=3, key="[log] turns")``; ``write(obj)`` appends one
    line; ``close()`` flushes and closes (idempotent). ``key`` names the setting in errors.
    ``failures``: lines that could not be written."""

    def __init__(self, path: str | Path, *, max_mb: float = 10.0, backups: int = 3, key: str = "turn log"):
        self.path, self.key = Path(path), key
        self.failures = 0
        self._failing = False
        try:
            if self.path.is_dir():
                raise IsADirectoryError(21, "it is a folder")
            self._handler = _Handler(str(self.path), max(1, int(max_mb * 1024 * 1024)), backups, self._failed)
        except OSError as exc:
            named = f"{key} {str(path)!r}" if key.startswith("--") else f"{key} = {str(path)!r}"
            raise ConfigError(f"{named} cannot be opened for writing ({exc.strerror or exc}); give a "
                              f"file in an existing folder this user may write to, or leave it empty for no turn "
                              f"log") from None
        self._closed = False

    def write(self, obj: dict) -> bool:
        """Append ``obj`` as one line; False when it could not be written (already logged)."""
        if self._closed:
            return False
        try:
            line = json.dumps(obj, ensure_ascii=False, default=str)
        except (TypeError, ValueError) as exc:
            self._failed(exc)
            return False
        before = self.failures
        self._handler.emit(logging.LogRecord("turns", logging.INFO, "", 0, line, None, None))
        if self.failures == before:
            self._failing = False
            return True
        return False

    def _failed(self, exc: BaseException | None) -> None:
        self.failures += 1
        if not self._failing:
            self._failing = True
            log.error("%s: could not write to %s (%s); turns go on, and their lines are lost until it works again",
                      self.key, self.path, f"{type(exc).__name__}: {exc}" if exc else "unknown error")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._handler.close()
        except OSError as exc:
            self._failed(exc)
