"""The jaw loop: at the servo's frame rate, open the jaw for the sound that will be heard
``lead_ms`` from now, read from the playback clock (not a timer), so neither the speaker's
buffering nor the servo's travel time makes the jaw late.
"""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("skull.jaw")


class JawFollower:
    """Runs in its own thread so a busy event loop cannot make the jaw stutter.

    ``commands`` keeps (time sent, audio clock time meant for, opening) of each command; the
    jaw is detached after ``rest_detach_s`` closed and silent so the servo does not buzz.
    """

    def __init__(self, player, jaw, *, frame_hz: float = 50.0, lead_ms: float = 60.0, rest_detach_s: float = 1.0):
        self.player, self.jaw = player, jaw
        self.period = 1.0 / frame_hz
        self.lead_s = lead_ms / 1000.0
        self.rest_detach_s = rest_detach_s
        self.commands: list[tuple[float, float, float]] = []
        self.record = False
        self._stop = threading.Event()
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="jaw", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last, closed_since = None, time.monotonic()
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                target_t = self.player.now() + self.lead_s
                opening = self.player.timeline.opening_at(self.player.audible_frame(target_t))
                if opening > 0.0 or last is None or last > 0.0:
                    if opening != last:
                        self.jaw.move(opening)
                        if self.record:
                            self.commands.append((time.monotonic(), target_t, opening))
                    closed_since = time.monotonic() if opening > 0.0 else closed_since
                    last = opening
                elif self.jaw.attached and time.monotonic() - closed_since > self.rest_detach_s:
                    self.jaw.detach()
            except Exception:  # the jaw loop must survive anything, and leave the jaw shut
                log.exception("jaw loop error; closing the jaw")
                self.jaw.move(0.0)
                last = 0.0
            next_t += self.period
            delay = next_t - time.monotonic()
            if delay < -self.period:  # fell behind (machine busy): resynchronise, do not burst
                next_t = time.monotonic()
            self._stop.wait(max(0.0, delay))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
