"""The host at a glance: what a running ``skull host`` tells systemd and writes to its status
file, and the lines ``skull host --check`` adds for the skulls connected to it.

:class:`HostKeeper` runs on the host's event loop: it rewrites ``<status dir>/host-<port>.json``
(:func:`skull.core.places.runtime_dir`) every :data:`~skull.core.statusfile.INTERVAL_S`, tells
systemd ``READY=1`` and how many skulls are connected (``STATUS=``), and feeds systemd's
watchdog from the event loop. The file holds::

    {"pid", "started", "port", "url", "skulls": [{"name", "peer", "state", "since",
     "last_turn": {"turn", "outcome", "at", "first_audio_ms"} or null}], "written"}

Times are Unix seconds.
"""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from skull.core import sdnotify
from skull.core.places import runtime_dir, status_dirs
from skull.core.statusfile import INTERVAL_S, STALE_S, read_status, remove_status, write_status

from . import events as ev


def host_status_path(port: int, folder: Path | None = None) -> Path:
    return (folder or runtime_dir()) / f"host-{port}.json"


class HostKeeper:
    """``await HostKeeper(host, url).run()`` beside a started :class:`host.server.Host`;
    ``close()`` says STOPPING=1 and removes the status file."""

    def __init__(self, host, url: str, *, path: Path | None = None, notifier: sdnotify.Notifier | None = None,
                 interval_s: float = INTERVAL_S):
        self.host, self.url = host, url
        self.path = path or host_status_path(host.port)
        self.notifier = notifier or sdnotify.Notifier.from_env()
        self.interval_s = interval_s
        self.started = time.time()
        self._since: dict[str, float] = {}  # connected skull -> when this keeper first saw it
        self._last: dict[str, dict] = {}  # skull -> its last turn (connected skulls only)
        self._status = ""
        host.events.subscribe(self._on_event, ev.Done, ev.Played, ev.TurnError)

    def _on_event(self, e: ev.TurnEvent) -> None:
        last = self._last.get(e.skull)
        if last is None or last["turn"] != e.turn:
            last = self._last[e.skull] = {"turn": e.turn, "outcome": "answering", "at": time.time(),
                                          "first_audio_ms": None}
        if isinstance(e, ev.Played):  # the first sound is often heard before the last sentence is sent
            last["first_audio_ms"] = round(e.first_audio_ms, 1)
        elif isinstance(e, ev.TurnError):
            last["outcome"], last["at"] = f"{e.stage} failed", time.time()
        elif last["outcome"] == "answering":  # Done
            last["outcome"], last["at"] = "answered", time.time()

    def skulls(self) -> list[dict]:
        sessions = dict(self.host.sessions)
        now = time.time()
        for gone in set(self._since) - set(sessions):
            del self._since[gone]
        for gone in set(self._last) - set(sessions):
            del self._last[gone]
        out = []
        for name, s in sorted(sessions.items()):
            since = self._since.setdefault(name, now)
            task, turn = s.task, s.turn
            if turn is not None and task is not None and not task.done():
                state = f"answering turn {turn.turn}"
            elif turn is not None and task is None:
                state = f"listening, turn {turn.turn}"
            else:
                state = "idle"
            out.append({"name": name, "peer": s.peer, "state": state, "since": since,
                        "last_turn": self._last.get(name)})
        return out

    def snapshot(self) -> dict:
        return {"pid": os.getpid(), "started": self.started, "port": self.host.port, "url": self.url,
                "skulls": self.skulls()}

    async def run(self) -> None:
        watchdog = asyncio.create_task(sdnotify.keep_watchdog(self.notifier), name="host-watchdog")
        first = True
        try:
            while True:
                data = self.snapshot()
                try:
                    write_status(self.path, data)
                except OSError as exc:  # a status file must never cost the host anything
                    self.host.faults(f"writing the status file {self.path}", exc)
                n = len(data["skulls"])
                status = f"serving {self.url}: {n} skull{'s' if n != 1 else ''} connected"
                if first:
                    self.notifier.ready(status)
                    first = False
                elif status != self._status:
                    self.notifier.status(status)
                self._status = status
                await asyncio.sleep(self.interval_s)
        finally:
            watchdog.cancel()

    def close(self) -> None:
        self.notifier.stopping()
        self.notifier.close()
        remove_status(self.path)


def check_skulls(port: int, *, stale_s: float = STALE_S, now: float | None = None) -> tuple[bool, list[str]]:
    """``skull host --check``'s lines about the host running on ``port``: (ok, lines). No host
    running there is not a problem, nor is a host with no skull connected; a host whose status
    file is stale (alive but not rewriting it) is."""
    now = time.time() if now is None else now
    path = next((host_status_path(port, d) for d in status_dirs() if host_status_path(port, d).exists()),
                host_status_path(port))
    reading = read_status(path, stale_s=stale_s, now=now)
    if reading.data is None:
        return True, [f"host     port {port}: no host running here (no {path})"]
    if reading.problem:
        from skull.core.statusfile import pid_alive
        if not pid_alive(reading.data.get("pid")):
            return True, [f"host     port {port}: no host running here ({reading.problem})"]
        return False, [f"host     port {port}: STALE: {reading.problem}"]
    skulls = reading.data.get("skulls") or []
    lines = [f"host     {reading.data.get('url')}: running (pid {reading.data.get('pid')}), "
             f"{len(skulls)} skull{'s' if len(skulls) != 1 else ''} connected"
             + ("; none connected is not a problem" if not skulls else "")]
    for s in skulls:
        last = s.get("last_turn")
        turn = "no turn yet"
        if last:
            turn = f"last turn {last.get('turn')} {last.get('outcome')} {max(0.0, now - last.get('at', now)):.0f} s ago"
            if last.get("first_audio_ms") is not None:
                turn += f", first sound {last['first_audio_ms']:.0f} ms"
        lines.append(f"skull    {s.get('name')} from {s.get('peer')}: {s.get('state')}, connected "
                     f"{max(0.0, now - s.get('since', now)):.0f} s, {turn}")
    return True, lines
