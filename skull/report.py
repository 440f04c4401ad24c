"""The skull's status for the operator's dashboard: its bus events turned into ``status`` messages.

Sent only to a host that asked for them (``welcome.status_hz`` above 0): at once when the state
or the LED changes (so the operator sees every step of a turn, in order), and at most
``status_hz`` times a second while only the jaw or the levels move.
"""
from __future__ import annotations

import asyncio
import time

from . import events as ev
from .core import protocol as p


class StatusReport:
    """A subscriber of ``Agent.events`` that keeps the latest status and sends it over ``link``."""

    def __init__(self, link, muted=lambda: False):
        self.link = link
        self.muted = muted
        """asked for the ``muted`` field each time a status goes out"""
        self.state, self.turn, self.led = "offline", 0, "off"
        self.jaw, self.mic, self.mic_vad, self.speaker = 0.0, -120.0, -120.0, -120.0
        self._last_s = 0.0
        self._pending: asyncio.TimerHandle | None = None

    def __call__(self, event) -> None:
        if isinstance(event, ev.StateChanged):
            self.state, self.turn = event.state.value, event.turn
            self.send()
        elif isinstance(event, ev.LedChanged):
            self.led = event.pattern.value
            self.send()
        elif isinstance(event, ev.JawMoved):
            self.jaw = min(1.0, max(0.0, float(event.opening)))
            self.soon()
        elif isinstance(event, ev.Levels):
            self.mic, self.speaker, self.mic_vad = (min(0.0, max(-120.0, float(v))) for v in
                                                    (event.mic_dbfs, event.speaker_dbfs, event.mic_vad_dbfs))
            self.soon()

    @property
    def hz(self) -> float:
        welcome = self.link.welcome
        return float(welcome.status_hz) if self.link.connected and welcome is not None else 0.0

    def message(self) -> p.Status:
        return p.Status(self.state, self.turn, self.led, round(self.jaw, 2), self.mic, self.mic_vad, self.speaker,
                        bool(self.muted()))

    def send(self) -> None:
        """Send the status now (when the host asked for status reports)."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self.hz > 0:
            self._last_s = time.monotonic()
            self.link.send(self.message())

    def soon(self) -> None:
        """Send the status within the host's rate: now, or once the interval since the last is over."""
        hz = self.hz
        if hz <= 0 or self._pending is not None:
            return
        wait_s = self._last_s + 1.0 / hz - time.monotonic()
        if wait_s <= 0:
            self.send()
        else:
            self._pending = asyncio.get_running_loop().call_later(wait_s, self.send)
