"""A simulated jaw: records every command with its time and models where the servo horn
physically is, so tests and replays can see the jaw's real motion and not only the commands.

The servo model: a hobby servo picks up a new pulse at its next 20 ms frame, then turns toward
it at its rated speed (0.10 s per 60 degrees by default), over ``throw_deg`` of travel between
closed and open. Commands are clamped to the calibrated range like every jaw driver's.
"""
from __future__ import annotations

import math
import time

from ..config import Calibration
from .base import JawBase


class SimJaw(JawBase):
    def __init__(self, calibration: Calibration, *, throw_deg: float = 25.0, sec_per_60deg: float = 0.10,
                 frame_s: float = 0.020, clock=time.monotonic):
        super().__init__(calibration, clock=clock)
        self.throw_deg, self.sec_per_60deg, self.frame_s = throw_deg, sec_per_60deg, frame_s
        self.t0 = clock()

    def _drive(self, us: float, opening: float) -> None:
        """Nothing to send: the log is the servo's input (see :meth:`physical`)."""

    def _release(self) -> None:
        """Nothing to stop: a None pulse in the log is the servo going limp."""

    def close(self, settle_s: float = 0.0) -> None:
        """Shut, (optionally wait for the horn to get there), detach. Safe to call twice."""
        super().close(settle_s)

    def physical(self, times) -> list[float]:
        """Where the horn is (opening 0..1) at each of ``times`` (same clock as the log)."""
        return physical_positions(self.log, times, self.throw_deg, self.sec_per_60deg, self.frame_s, self.t0)


def physical_positions(log, times, throw_deg: float = 25.0, sec_per_60deg: float = 0.10,
                       frame_s: float = 0.020, t0: float = 0.0) -> list[float]:
    """Replay a command log through the servo model: where the horn is (0..1) at each of the
    ascending ``times``. A command takes effect at the next servo frame; a detached servo
    stays where it is."""
    speed = 60.0 / sec_per_60deg / throw_deg  # openings per second
    effective = sorted(((t0 + math.ceil((te - t0) / frame_s - 1e-9) * frame_s, opening, us) for te, opening, us in log),
                       key=lambda e: e[0])  # stable: commands in one frame keep their order
    out, pos, target, now, i = [], 0.0, None, None, 0
    for t in times:
        while i < len(effective) and effective[i][0] <= t:
            te, opening, us = effective[i]
            if now is not None and target is not None:
                pos = _approach(pos, target, speed * (te - now))
            now, target = te, (opening if us is not None else None)
            i += 1
        if now is not None:
            if target is not None:
                pos = _approach(pos, target, speed * (t - now))
            now = t
        out.append(pos)
    return out


def _approach(pos: float, target: float, step: float) -> float:
    if abs(target - pos) <= step:
        return target
    return pos + step if target > pos else pos - step
