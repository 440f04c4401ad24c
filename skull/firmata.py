"""An Arduino running stock StandardFirmata, through pyfirmata2: servo, button, LED.

The servo is configured with the calibrated pulse range as Firmata's own min/max, so no angle
the driver can send takes it past the limits; it is attached on the first jaw move and
detached (pin mode back to output) at rest and on every exit. StandardFirmata has no
watchdog: if this program dies the servo holds its last position, so prefer the SKULLJAW
firmware ([board] driver = "serial") for unattended shows.
"""
from __future__ import annotations

import logging
import threading
import time

from .boards import BoardJaw, BoardPanel
from .machine import LedPattern
from .ports import Device
from .config import BoardConfig, Calibration
from .core.errors import DeviceError

log = logging.getLogger("skull.firmata")
REPORT_VERSION = 0xF9


class FirmataBoard(Device):
    def __init__(self, port: str, calibration: Calibration, config: BoardConfig, probe_s: float = 2.0):
        import pyfirmata2
        import serial
        self.port, self.config = port, config
        try:
            self.board = pyfirmata2.Arduino(port, baudrate=config.baud or 57600, timeout=0.1)
        except (serial.SerialException, OSError) as exc:
            raise DeviceError(f"cannot open serial port {port} for Firmata: {exc}; check the cable, [board] port "
                              f"(see 'skull doctor') and that you are in the 'dialout' group") from None
        self.closed = False
        self._lock = threading.Lock()
        try:
            self._probe(probe_s)
            self._lo, self._hi = (int(round(v)) for v in sorted((calibration.closed_us, calibration.open_us)))
            self._reversed = calibration.open_us < calibration.closed_us
            self.servo = self.board.digital[config.servo_pin]
            self.led_pin = self.board.get_pin(f"d:{config.led_pin}:o")
            self.button_pin = self.board.get_pin(f"d:{config.button_pin}:u")
        except (IndexError, OSError, KeyError) as exc:
            self.board.exit()
            raise DeviceError(f"the Firmata board on {port} cannot use pins servo={config.servo_pin} "
                              f"button={config.button_pin} led={config.led_pin}: {exc}; fix [board] *_pin") from None
        except BaseException:
            self.board.exit()
            raise
        self.attached = False
        self.panel = BoardPanel(self)
        self.jaw = BoardJaw(self, calibration)
        # pull-up: the pin reads False while the button (to ground) is pressed
        self.button_pin.register_callback(lambda value: self.panel.button._event(value is False))
        self.board.samplingOn(19)

    def _probe(self, probe_s: float) -> None:
        """Ask for the Firmata version; no answer means no Firmata on this port."""
        self.board.sp.write(bytes([REPORT_VERSION]))
        deadline = time.monotonic() + probe_s
        while getattr(self.board, "firmata_version", None) is None and time.monotonic() < deadline:
            if self.board.bytes_available():
                self.board.iterate()
            else:
                time.sleep(0.01)
        if getattr(self.board, "firmata_version", None) is None:
            raise DeviceError(f"no Firmata answered on {self.port}; upload StandardFirmata (Arduino IDE: File > "
                              f"Examples > Firmata) or set [board] driver = 'serial' for the SKULLJAW firmware")
        log.info("Firmata %s on %s", ".".join(map(str, self.board.firmata_version)), self.port)

    def _angle(self, opening: float) -> int:
        """Firmata maps 0..180 degrees onto the configured min..max pulse."""
        a = opening if not self._reversed else 1.0 - opening
        return max(0, min(180, int(round(a * 180))))

    def set_jaw(self, opening: float) -> None:
        with self._lock:
            if self.closed:
                return
            angle = self._angle(opening)
            if not self.attached:
                self.board.servo_config(self.config.servo_pin, self._lo, self._hi, angle)
                self.attached = True
            else:
                self.servo.write(angle)

    def release_jaw(self) -> None:
        import pyfirmata2
        with self._lock:
            if self.closed or not self.attached:
                return
            self.servo.mode = pyfirmata2.OUTPUT  # StandardFirmata detaches the servo on a mode change
            self.attached = False

    def led(self, on: bool) -> None:
        with self._lock:
            if not self.closed:
                self.led_pin.write(1 if on else 0)

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.panel.set_led(LedPattern.OFF)
            self.led(False)
            self.release_jaw()
        finally:
            with self._lock:
                self.closed = True
            self.board.exit()
