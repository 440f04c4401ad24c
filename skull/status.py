"""The skull at a glance: what a running ``skull run`` tells systemd and writes to its status
file, and ``skull status``, which reads it.

:class:`Keeper` runs beside the agent on its event loop: it follows the agent's bus (state,
turns), rewrites ``<status dir>/<name>.json`` every :data:`~skull.core.statusfile.INTERVAL_S`
(:func:`skull.core.places.runtime_dir`), tells systemd ``READY=1`` and the state
(``STATUS=``), and feeds systemd's watchdog from the event loop only while the jaw loop's
thread is alive too. The file holds::

    {"name", "pid", "started", "state", "link": {"url", "connected", "since"},
     "last_turn": {"turn", "outcome", "at", "first_audio_ms"} or null,
     "record": {"dir", "free_mb", "paused"} or null, "written"}

(``paused``: the skull's own disk guard, ``[record] min_free_mb``, is not recording turns.)

Times are Unix seconds. ``skull status`` exits 0 when the skull runs and is connected to its
host, 1 when it is offline or its record folder's disk is low, 3 when it is not running.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path

from . import events as ev
from .core import sdnotify
from .core.places import runtime_dir, status_dirs
from .core.statusfile import INTERVAL_S, STALE_S, read_status, remove_status, write_status
from .machine import State

EXIT_OK, EXIT_PROBLEM, EXIT_NOT_RUNNING = 0, 1, 3

LOW_DISK_MB = 200.0
"""``skull status`` calls the record folder's disk low below this many free megabytes
(``--min-free-mb``)"""


def status_path(name: str, folder: Path | None = None) -> Path:
    return (folder or runtime_dir()) / f"{name}.json"


def free_mb(path: Path) -> float | None:
    """Free space of the disk holding ``path`` (or its nearest existing parent), megabytes."""
    for p in (path, *path.parents):
        if p.exists():
            return round(shutil.disk_usage(p).free / 1e6, 1)
    return None


class Keeper:
    """``await Keeper(agent).run()`` alongside ``agent.run()``: status file, READY, STATUS and
    the watchdog. ``close()`` says STOPPING=1 and removes the status file."""

    def __init__(self, agent, *, path: Path | None = None, notifier: sdnotify.Notifier | None = None,
                 interval_s: float = INTERVAL_S):
        self.agent = agent
        self.path = path or status_path(agent.config.link.name)
        self.notifier = notifier or sdnotify.Notifier.from_env()
        self.interval_s = interval_s
        self.started = time.time()
        self.state = agent.state.value
        self.connected_since: float | None = None
        self.last_turn: dict | None = None
        self._ready = False
        agent.events.subscribe(self._on_state, ev.StateChanged)
        agent.events.subscribe(self._on_turn, ev.TurnEnded)

    def _on_state(self, e: ev.StateChanged) -> None:
        if e.state is State.OFFLINE:
            self.connected_since = None
        elif self.connected_since is None:
            self.connected_since = time.time()
        if e.state.value != self.state:
            self.state = e.state.value
            self.notifier.status(self.summary())

    def _on_turn(self, e: ev.TurnEnded) -> None:
        r = e.record
        first = r.timings_ms.get("first_audio")
        self.last_turn = {"turn": r.turn, "outcome": r.outcome, "at": time.time(),
                          "first_audio_ms": round(first, 1) if isinstance(first, (int, float)) else None}

    def summary(self) -> str:
        link = self.agent.link.url or "to find the host"
        if self.connected_since is None:
            return f"offline: trying {link}"
        return f"{self.state}, connected to {link}"

    def snapshot(self) -> dict:
        record_dir = self.agent.record_dir
        record = None
        if record_dir is not None:
            record = {"dir": str(Path(record_dir).absolute()), "free_mb": free_mb(Path(record_dir).absolute()),
                      "paused": bool(getattr(self.agent, "recording_paused", False))}
        return {"name": self.agent.config.link.name, "pid": os.getpid(), "started": self.started,
                "state": self.state,
                "link": {"url": self.agent.link.url, "connected": self.connected_since is not None,
                         "since": self.connected_since},
                "last_turn": self.last_turn, "record": record}

    def healthy(self) -> str | None:
        """None while the skull's parts run; else what stopped (the watchdog is then not fed)."""
        thread = getattr(self.agent.follower, "_thread", None)
        if thread is None or not thread.is_alive():
            return "the jaw loop's thread is not running"
        return None

    async def run(self) -> None:
        watchdog = asyncio.create_task(sdnotify.keep_watchdog(self.notifier, self.healthy), name="skull-watchdog")
        try:
            while True:
                self.write()
                if not self._ready:
                    self._ready = True
                    self.notifier.ready(self.summary())
                await asyncio.sleep(self.interval_s)
        finally:
            watchdog.cancel()

    def write(self) -> None:
        try:
            write_status(self.path, self.snapshot())
        except OSError as exc:  # a status file must never cost the skull anything
            self.agent.faults(f"writing the status file {self.path}", exc)

    def close(self) -> None:
        self.notifier.stopping()
        self.notifier.close()
        remove_status(self.path)


# --- skull status ------------------------------------------------------------------------------

def _ago(t: float | None, now: float) -> str:
    if t is None:
        return "-"
    s = max(0.0, now - t)
    if s < 120:
        return f"{s:.0f} s ago"
    if s < 7200:
        return f"{s / 60:.0f} min ago"
    return f"{s / 3600:.1f} h ago"


def find_status(name: str | None) -> Path:
    """The status file of skull ``name``, or of the only skull running when no name is given."""
    dirs = status_dirs()
    if name:
        for d in dirs:
            if status_path(name, d).exists():
                return status_path(name, d)
        return status_path(name, dirs[0])
    found = sorted({p for d in dirs if d.is_dir() for p in d.glob("*.json") if not p.name.startswith("host-")})
    if len(found) > 1:
        from .core.errors import SkullError
        raise SkullError(f"several skulls have status files ({', '.join(p.stem for p in found)}): name one with "
                         f"--name")
    return found[0] if found else dirs[0] / "<name>.json"


def check_status(name: str | None, *, min_free_mb: float = LOW_DISK_MB, stale_s: float = STALE_S,
                 now: float | None = None) -> tuple[int, dict | None, list[str]]:
    """(exit code, the status read, the lines to print)."""
    now = time.time() if now is None else now
    path = find_status(name)
    reading = read_status(path, stale_s=stale_s, now=now)
    if reading.problem:
        who = f"skull {name}" if name else "no skull"
        if not name and reading.data is None:
            where = " or ".join(str(d) for d in status_dirs())
            return EXIT_NOT_RUNNING, None, [f"not running: no skull status file in {where} (start it with skull run, "
                                            f"or skull service install skull)"]
        return EXIT_NOT_RUNNING, reading.data, [f"not running: {who if name else 'the skull'}: {reading.problem}"]
    d = reading.data
    link, last, record = d.get("link") or {}, d.get("last_turn"), d.get("record")
    lines = [f"skull    {d.get('name')} (pid {d.get('pid')}, up since {_ago(d.get('started'), now)})",
             f"state    {d.get('state')}",
             f"link     {link.get('url')}: " + (f"connected since {_ago(link.get('since'), now)}"
                                                if link.get("connected") else "OFFLINE (reconnecting)")]
    if last:
        first = last.get("first_audio_ms")
        lines.append(f"turn     {last.get('turn')} {last.get('outcome')} {_ago(last.get('at'), now)}"
                     + (f", first sound {first:.0f} ms after the release" if first is not None else ""))
    else:
        lines.append("turn     none yet")
    problems = []
    if record:
        free = record.get("free_mb")
        low = free is not None and free < min_free_mb
        lines.append(f"record   {record.get('dir')}: {free if free is not None else '?'} MB free"
                     + (f" (LOW: under {min_free_mb:g} MB)" if low else "")
                     + (", recording paused ([record] min_free_mb)" if record.get("paused") else ""))
        if low:
            problems.append(f"disk low: {free} MB free under {record.get('dir')}")
    if not link.get("connected"):
        problems.insert(0, f"offline: not connected to the host at {link.get('url')}")
    lines.append("ok" if not problems else "problem: " + "; ".join(problems))
    return (EXIT_PROBLEM if problems else EXIT_OK), d, lines


def cmd_status(args) -> int:
    code, data, lines = check_status(args.name, min_free_mb=args.min_free_mb)
    if args.json:
        print(json.dumps({"ok": code == EXIT_OK, "problem": "" if code == EXIT_OK else lines[-1],
                          "status": data}, indent=1), flush=True)
    else:
        print("\n".join(lines), flush=True)
    return code
