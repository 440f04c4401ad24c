"""A running skull's or host's status file: a small JSON object, written atomically (a
temporary file renamed into place) every ``interval_s``, read by ``skull status`` and
``skull host --check``. A file older than :data:`STALE_S` belongs to a process that is gone or
stuck; so does one whose ``pid`` is not alive on this machine."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

INTERVAL_S = 2.0
"""how often the status file is rewritten, seconds"""
STALE_S = 10.0
"""a status file not rewritten for this long is stale, seconds"""


def write_status(path: Path, data: dict) -> None:
    """Replace ``path`` with ``data`` as JSON in one step (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**data, "written": time.time()}, indent=1))
    os.replace(tmp, path)


def remove_status(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@dataclass(frozen=True)
class Reading:
    """A status file as read: ``data`` (None when missing or unreadable), its age in seconds,
    and ``problem``: why it does not show a live process ("" when it does)."""
    path: Path
    data: dict | None
    age_s: float | None
    problem: str


def read_status(path: Path, *, stale_s: float = STALE_S, now: float | None = None) -> Reading:
    now = time.time() if now is None else now
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return Reading(path, None, None, f"no status file {path}")
    except (OSError, ValueError) as exc:
        return Reading(path, None, None, f"status file {path} cannot be read: {exc}")
    if not isinstance(data, dict):
        return Reading(path, None, None, f"status file {path} holds no status object")
    age = now - float(data.get("written", 0) or 0)
    pid = data.get("pid")
    if not pid_alive(pid):
        return Reading(path, data, age, f"process {pid} that wrote {path} has ended "
                                        f"(last written {age:.0f} s ago)")
    if age > stale_s:
        return Reading(path, data, age, f"status file {path} is stale: process {pid} has not rewritten it for "
                                        f"{age:.0f} s (it is hung, or stopped by a debugger)")
    return Reading(path, data, age, "")
