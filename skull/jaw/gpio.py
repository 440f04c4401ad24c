"""Jaw servo on a GPIO pin through gpiozero (a Pi; gpiozero's MockFactory when simulated).

The gpiozero Servo is opened with the calibrated pulse range as its own min/max, so even the
library cannot send a pulse outside it; the shared jaw base clamps every command to it too, and
detaches the servo (no pulses) when the jaw rests, so it does not buzz and draw current.
"""
from __future__ import annotations

import time

from gpiozero import Servo

from ..config import Calibration
from ..core.errors import DeviceError
from .base import JawBase


class GpioJaw(JawBase):
    def __init__(self, pin: int, calibration: Calibration, *, pin_factory=None, keep_log: bool = True,
                 clock=time.monotonic):
        super().__init__(calibration, clock=clock, keep_log=keep_log)
        lo, hi = self.limits_us
        try:
            self._servo = Servo(pin, initial_value=None, min_pulse_width=lo / 1e6, max_pulse_width=hi / 1e6,
                                pin_factory=pin_factory)
        except Exception as exc:
            raise DeviceError(f"cannot drive the jaw servo on GPIO{pin}: {exc or type(exc).__name__}; check the pin "
                              f"number in skull.toml [pins] servo and that no other program uses it") from exc

    def _drive(self, us: float, opening: float) -> None:
        lo, hi = self.limits_us
        # Servo.value -1..1 spans min..max pulse width
        self._servo.value = max(-1.0, min(1.0, -1.0 + 2.0 * (us - lo) / (hi - lo)))

    def _release(self) -> None:
        self._servo.detach()

    def _shutdown(self) -> None:
        self._servo.close()

    @property
    def pulse_width_us(self) -> float | None:
        pw = None if self._servo.closed else self._servo.pulse_width
        return None if pw is None else pw * 1e6
