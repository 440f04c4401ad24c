"""The jaw loop: at the servo's frame rate, open the jaw for the sound that will be heard
``lead_ms`` from now, read from the playback clock (not a timer), so neither the speaker's
buffering nor the servo's travel time makes the jaw late.

Two sources for the opening, through the one mapping in :mod:`skull.core.envelope`:

* ``track`` (default): the host's precomputed jaw track of each reply segment. The whole reply
  is known before it is heard, so the full ``lead_ms`` is honoured.
* ``live``: the level of the audio itself, measured as it is handed to the speaker (for sound
  that comes without a track). Only what is already in the device's buffer is known, so the lead
  it can honestly achieve is the buffer's latency, at most ``lead_ms``.

A segment without a track is followed live even in ``track`` mode.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import NamedTuple

from ..audio.player import Place
from ..core.envelope import JawShape, LiveEnvelope
from ..core.faults import FaultLog

log = logging.getLogger("skull.jaw")


class JawCommand(NamedTuple):
    sent_at: float
    """when it was sent, on the follower's clock (time.monotonic())"""
    target_t: float
    """the playback-clock time of the sound it opens the jaw for"""
    opening: float
    """0 (closed) .. 1 (open)"""
    place: Place | None
    """which reply segment sounds then, and how far into it; None in silence"""


class JawFollower:
    """Runs in its own thread so a busy event loop cannot make the jaw stutter.

    ``commands`` keeps a :class:`JawCommand` for each command while ``record`` is on; the
    jaw is detached after ``rest_detach_s`` closed and silent so the servo does not buzz.
    """

    def __init__(self, player, jaw, *, frame_hz: float = 50.0, lead_ms: float = 60.0, rest_detach_s: float = 1.0,
                 mode: str = "track", shape: JawShape = JawShape(), clock=time.monotonic):
        if mode not in ("track", "live"):
            raise ValueError(f"jaw mode must be 'track' or 'live', got {mode!r}")
        self.player, self.jaw = player, jaw
        self.period = 1.0 / frame_hz
        self.lead_s = lead_ms / 1000.0
        self.rest_detach_s = rest_detach_s
        self.mode, self.shape, self.clock = mode, shape, clock
        self.commands: list[JawCommand] = []
        self.faults = FaultLog(log, "; the skull goes on")
        self.record = False
        self._stop = threading.Event()
        self._thread = None
        self._last: float | None = None
        self._closed_since = clock()
        self._live: LiveEnvelope | None = None
        self._live_pos = 0
        self.live_lead_s = 0.0
        """the lead the live level last achieved (how far ahead the device's buffer reaches)"""
        self.late_frames = 0
        """servo frames that started more than a frame late since start() (the machine was busy)"""
        self.worst_late_s = 0.0
        """the latest a servo frame started since start(), seconds"""

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        self._stop.clear()
        self.late_frames, self.worst_late_s = 0, 0.0
        self._thread = threading.Thread(target=self._run, name="jaw", daemon=True)
        self._thread.start()

    def _live_opening(self, target_frame: float, now_frame: float) -> float:
        """The live level at the latest sound the device has been given, up to ``target_frame``."""
        tl = self.player.timeline
        if self._live is None or self._live.rate != tl.rate:
            self._live = LiveEnvelope(tl.rate, self.shape)
            self._live_pos = int(now_frame)
        end = int(min(target_frame, tl.frames))
        self.live_lead_s = max(0.0, (end - now_frame) / tl.rate)
        if end <= self._live_pos:
            return self._live.opening
        start = max(self._live_pos, end - tl.rate)  # never more than a second behind
        opening = self._live.push(tl.samples(start, end))
        self._live_pos = end
        return opening

    def tick(self) -> float | None:
        """One servo frame: command the opening for the sound heard ``lead_ms`` from now.
        Returns the opening sent, or None when nothing was sent."""
        now = self.player.now()
        target_t = now + self.lead_s
        target_frame = self.player.audible_frame(target_t)
        opening = None if self.mode == "live" else self.player.timeline.opening_at(target_frame)
        if opening is None or self._live is not None:
            # the live level keeps listening once used, so it is warm when a trackless segment starts
            live = self._live_opening(target_frame, self.player.audible_frame(now))
            if opening is None:
                opening = live
        last, sent = self._last, None
        if opening > 0.0 or last is None or last > 0.0:
            if opening != last:
                self.jaw.move(opening)
                sent = opening
                if self.record:
                    self.commands.append(JawCommand(self.clock(), target_t, opening,
                                                    self.player.timeline.locate(target_frame)))
            if opening > 0.0:
                self._closed_since = self.clock()
            self._last = opening
        elif self.jaw.attached and self.clock() - self._closed_since > self.rest_detach_s:
            self.jaw.detach()
        return sent

    def close_now(self) -> None:
        """Shut the jaw at once (an interrupt, a fault), not at the loop's next frame; the loop
        then finds nothing to play and keeps it shut."""
        self.jaw.move(0.0)
        self._last = 0.0
        self._closed_since = self.clock()

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            late = time.monotonic() - next_t
            if late > self.worst_late_s:
                self.worst_late_s = late
            if late > self.period:
                self.late_frames += 1
            try:
                self.tick()
            except Exception as exc:  # the jaw loop must survive anything, and leave the jaw shut
                self.faults("the jaw loop", exc)
                try:
                    self.close_now()
                except Exception as again:
                    self.faults("closing the jaw", again)
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
