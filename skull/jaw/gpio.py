"""Jaw servo on a GPIO pin through gpiozero (a Pi; gpiozero's MockFactory when simulated).

Hobby servos burn out against their end stops: every command is clamped to the calibrated
closed..open pulse range, and the servo is detached (no pulses) when the jaw rests closed, so
it does not buzz and draw current at rest.
"""
from __future__ import annotations

import threading
import time

from gpiozero import Servo

from ..config import Calibration
from . import pulse_us, safe_opening
from ..core.errors import DeviceError


class GpioJaw:
    """``move(opening)`` with opening 0 (closed) .. 1 (open) of the calibrated travel."""

    def __init__(self, pin: int, calibration: Calibration, *, pin_factory=None, keep_log: bool = True):
        self.calibration = calibration
        lo, hi = sorted((calibration.closed_us, calibration.open_us))
        try:
            self._servo = Servo(pin, initial_value=None, min_pulse_width=lo / 1e6, max_pulse_width=hi / 1e6,
                                pin_factory=pin_factory)
        except Exception as exc:
            raise DeviceError(f"cannot drive the jaw servo on GPIO{pin}: {exc or type(exc).__name__}; check the pin "
                              f"number in "
                              f"skull.toml [pins] servo and that no other program uses it") from exc
        self._lo, self._hi = lo, hi
        self._lock = threading.Lock()
        self.opening = 0.0
        self.attached = False
        #: (monotonic time, opening, pulse width in microseconds or None when detached)
        self.log: list[tuple[float, float, float | None]] = [] if keep_log else None

    def pulse_us(self, opening: float) -> float:
        return pulse_us(self.calibration, opening)

    def move(self, opening: float) -> None:
        """Set the jaw opening; out-of-range or NaN values are clamped (NaN closes)."""
        opening = safe_opening(opening)
        us = self.pulse_us(opening)
        with self._lock:
            if self._servo.closed:
                return
            # Servo.value -1..1 spans min..max pulse width
            self._servo.value = max(-1.0, min(1.0, -1.0 + 2.0 * (us - self._lo) / (self._hi - self._lo)))
            self.opening, self.attached = opening, True
            if self.log is not None:
                self.log.append((time.monotonic(), opening, us))

    def detach(self) -> None:
        """Stop sending pulses: the servo goes limp (no buzz, no stall current)."""
        with self._lock:
            if self._servo.closed:
                return
            self._servo.detach()
            self.attached = False
            if self.log is not None:
                self.log.append((time.monotonic(), self.opening, None))

    @property
    def pulse_width_us(self) -> float | None:
        pw = None if self._servo.closed else self._servo.pulse_width
        return None if pw is None else pw * 1e6

    def close(self, settle_s: float = 0.25) -> None:
        """Shut the jaw, give the servo time to get there, detach and release the pin.
        Safe to call more than once."""
        if self._servo.closed:
            return
        self.move(0.0)
        time.sleep(settle_s)
        self.detach()
        self._servo.close()
