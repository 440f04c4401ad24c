"""What every jaw driver shares: the clamp, the command log, detach and a safe close.

A hobby servo driven past its end stops buzzes, draws stall current and can strip its gears or
brown out the board. So every opening goes through one path here: anything that is not a
finite number closes the jaw, openings are clamped to 0..1, and the pulse is kept inside the
calibrated closed..open range. A driver only says how to send a pulse (``_drive``), how to stop
pulsing (``_release``) and how to let go of its hardware (``_shutdown``).
"""
from __future__ import annotations

import abc
import collections
import threading
import time
from typing import NamedTuple

from ..core.errors import DeviceError
from ..ports import Device
from . import pulse_us, safe_opening


class JawLogEntry(NamedTuple):
    t: float
    """when, on the jaw's clock (time.monotonic() unless a clock was given)"""
    opening: float
    """0 (closed) .. 1 (open)"""
    pulse_us: float | None
    """the pulse sent, microseconds; None: detached (no pulses)"""


LOG_MAX = 6000
"""jaw commands kept in ``JawBase.log``: two minutes at 50 frames a second, so a night of turns
never fills the memory (the recorder takes each turn's commands from the jaw loop instead)"""


class JawBase(Device):
    """``move(opening)`` with opening 0 (closed) .. 1 (open) of the calibrated travel.

    ``keep_log``: keep the newest LOG_MAX commands in ``log`` (replay and tests read it)."""

    def __init__(self, calibration, *, clock=time.monotonic, keep_log: bool = True):
        self.calibration = calibration
        self.limits_us = tuple(sorted((calibration.closed_us, calibration.open_us)))
        """the range the driver was opened with: recalibrate() can only narrow inside it"""
        self.clock = clock
        self.opening = 0.0
        self.attached = False
        self.closed = False
        self.log: collections.deque[JawLogEntry] | None = collections.deque(maxlen=LOG_MAX) if keep_log else None
        self._lock = threading.Lock()

    # --- what a driver implements ----------------------------------------------------------

    @abc.abstractmethod
    def _drive(self, us: float, opening: float) -> None:
        """Send one pulse width (already inside the calibrated range)."""

    @abc.abstractmethod
    def _release(self) -> None:
        """Stop sending pulses."""

    def _shutdown(self) -> None:
        """Let go of the hardware (pin, port); called once, after the jaw is shut and detached."""

    # --- the port ------------------------------------------------------------------------------

    def pulse_us(self, opening: float) -> float:
        return pulse_us(self.calibration, opening)

    def move(self, opening: float) -> None:
        """Set the jaw opening; out-of-range or NaN values are clamped (NaN closes)."""
        opening = safe_opening(opening)
        us = self.pulse_us(opening)
        with self._lock:
            if self.closed:
                return
            self._drive(us, opening)
            self.opening, self.attached = opening, True
            if self.log is not None:
                self.log.append(JawLogEntry(self.clock(), opening, us))

    def detach(self) -> None:
        """Stop sending pulses: the servo goes limp (no buzz, no stall current)."""
        with self._lock:
            if self.closed:
                return
            self._release()
            self.attached = False
            if self.log is not None:
                self.log.append(JawLogEntry(self.clock(), self.opening, None))

    @property
    def pulse_width_us(self) -> float | None:
        """The pulse being sent now, microseconds; None when detached."""
        if not self.attached or self.closed:
            return None
        return self.pulse_us(self.opening)

    def recalibrate(self, calibration) -> None:
        """Use ``calibration``'s closed/open pulses from now on. They must lie inside the range
        the driver was opened with (calibrate opens wide, then narrows to what it found)."""
        lo, hi = sorted((calibration.closed_us, calibration.open_us))
        if lo < self.limits_us[0] or hi > self.limits_us[1]:
            raise DeviceError(f"calibration {lo:.0f}..{hi:.0f} us is outside the range this jaw was opened with "
                              f"({self.limits_us[0]:.0f}..{self.limits_us[1]:.0f} us); reopen it with the wider range")
        with self._lock:
            self.calibration = calibration

    def close(self, settle_s: float = 0.25) -> None:
        """Shut the jaw at the calibrated closed pulse, give the servo ``settle_s`` to get there,
        detach and release the hardware. Safe to call more than once; the hardware is released
        even when shutting fails."""
        if self.closed:
            return
        try:
            self.move(0.0)
            if settle_s:
                time.sleep(settle_s)
            self.detach()
        finally:
            with self._lock:
                self.closed = True
            self._shutdown()
