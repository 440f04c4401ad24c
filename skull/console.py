"""The skull's status lines: a view on :attr:`Agent.events` that says, one line each, what a
person at the console needs to follow the skull: connecting, connected, lost the host,
listening, thinking, what the host heard, what the skull said and how soon its first sample
was heard, and the skull's own lines (an offline line when a press finds no host).

It writes to the logger ``skull.console`` (INFO; WARNING for a press that found no host), one
of the status loggers of :mod:`skull.core.console`: shown by default, hidden by ``-q``.
Whatever a peer wrote (transcript, reply) is shown through :func:`skull.agent.shown`, so no
escape sequence of the host's reaches the terminal.
"""
from __future__ import annotations

import logging

from . import events as ev
from .machine import State

log = logging.getLogger("skull.console")

ENDINGS = {"interrupted": "interrupted (by a new press, or by the operator on the host's dashboard)", "disconnected": "cut short: the host went away",
           "failed": "failed (the reason is logged above)", "no done": "ended: the host stopped answering",
           "max_length": "ended at the longest recording"}
"""how a turn that was not simply answered ended, in words"""


class StatusLines:
    """Subscribes to ``agent.events`` at once and says ``connecting to URL``."""

    def __init__(self, agent, logger: logging.Logger | None = None):
        self.log = logger or log
        self.url, self.name = agent.config.link.url, agent.config.link.name
        self.link = agent.link
        self.state = agent.state
        self.connects = 0
        self._unsubscribe = [agent.events.subscribe(self._changed, ev.StateChanged),
                             agent.events.subscribe(self._heard, ev.Heard),
                             agent.events.subscribe(self._ended, ev.TurnEnded),
                             agent.events.subscribe(self._line, ev.LineSaid),
                             agent.events.subscribe(self._muted, ev.Muted)]
        if self.url:
            self.log.info("%s: connecting to %s", self.name, self.url)
        else:
            self.log.info("%s: looking for the host (on this machine, else over mDNS)", self.name)

    def _changed(self, e: ev.StateChanged) -> None:
        before, self.state = self.state, e.state
        if e.state is State.OFFLINE:
            if before is not State.OFFLINE and not self.link.name_taken:  # (the link said why it was taken)
                self.log.info("lost the host at %s; retrying", self.url)
        elif before is State.OFFLINE:
            self.url = self.link.url  # the host found by itself when [link] url is empty
            self.connects += 1
            self.log.info("connected to %s as %s%s", self.url, self.name, " again" if self.connects > 1 else "")
        if e.state in (State.LISTENING, State.THINKING, State.SPEAKING):
            self.log.info("turn %d: %s", e.turn, e.state.value)

    def _heard(self, e: ev.Heard) -> None:
        from .agent import shown
        if e.transcript.strip():
            self.log.info("turn %d: heard: \"%s\"", e.turn, shown(e.transcript))
        else:
            self.log.info("turn %d: heard nothing", e.turn)

    def _ended(self, e: ev.TurnEnded) -> None:
        from .agent import shown
        r = e.record
        first = r.timings_ms.get("first_audio")
        heard_at = f" (first audio {first:.0f} ms after the release)" if first is not None else ""
        if r.reply:
            self.log.info("turn %d: said: \"%s\"%s", r.turn, shown(r.reply), heard_at)
        if r.outcome != "answered" or not r.reply:
            ending = ENDINGS.get(r.outcome, r.outcome) if r.outcome != "answered" else "answered with silence"
            self.log.info("turn %d %s", r.turn, ending)

    def _line(self, e: ev.LineSaid) -> None:
        from .agent import shown
        if e.kind == "offline":
            self.log.warning("pressed with no host at %s: said an offline line (%s): \"%s\"", self.url,
                             "cached" if e.source == "cache" else "espeak-ng", shown(e.text))
        else:
            self.log.info("said a%s %s line: \"%s\"", "n" if e.kind[:1] in "aeiou" else "", e.kind, shown(e.text))

    def _muted(self, e: ev.Muted) -> None:
        if e.muted:
            self.log.warning("muted by the operator on the host's dashboard: presses start no turn until unmuted")
        else:
            self.log.info("unmuted by the operator: presses start turns again")

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
