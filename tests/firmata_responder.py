"""A StandardFirmata board on a pseudo-terminal, for the tests of the firmata driver.

It answers what pyfirmata2 sends (version report, pin modes, servo config, servo angles,
digital writes, reporting) the way StandardFirmata does, records what it was told, and can
press the button (a pull-up input: pressed reads LOW)."""
from __future__ import annotations

import os
import threading
import tty

REPORT_VERSION, START_SYSEX, END_SYSEX, SET_PIN_MODE = 0xF9, 0xF0, 0xF7, 0xF4
SERVO_CONFIG, SERVO, OUTPUT = 0x70, 4, 1


class FirmataResponder:
    def __init__(self, button_pin: int = 2):
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        self._slave = slave
        self.button_pin = button_pin
        self.modes: dict[int, int] = {}
        self.servo_range: dict[int, tuple[int, int]] = {}
        self.pulses: list[tuple[int, float]] = []  # (pin, microseconds) of every servo position
        self.ports: dict[int, int] = {}
        self.reporting: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="firmata-responder", daemon=True)
        self._thread.start()

    def attached(self, pin: int) -> bool:
        return self.modes.get(pin) == SERVO

    def pin_value(self, pin: int) -> int:
        return (self.ports.get(pin // 8, 0) >> (pin % 8)) & 1

    def press(self, down: bool) -> None:
        port, bit = divmod(self.button_pin, 8)
        value = 0xFF & ~(1 << bit) if down else 0xFF
        os.write(self.master, bytes([0x90 | port, value & 0x7F, value >> 7]))

    def close(self) -> None:
        self._stop.set()
        for fd in (self.master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def _read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = os.read(self.master, n - len(out))
            if not chunk:
                raise OSError("closed")
            out += chunk
        return out

    def _servo(self, pin: int, angle: int) -> None:
        lo, hi = self.servo_range.get(pin, (544, 2400))
        self.pulses.append((pin, lo + (hi - lo) * angle / 180.0))

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                cmd = self._read(1)[0]
                if cmd == REPORT_VERSION:
                    os.write(self.master, bytes([REPORT_VERSION, 2, 5]))
                elif cmd == START_SYSEX:
                    body = b""
                    while (b := self._read(1)) != bytes([END_SYSEX]):
                        body += b
                    if body and body[0] == SERVO_CONFIG:
                        pin = body[1]
                        lo, hi = body[2] | body[3] << 7, body[4] | body[5] << 7
                        self.servo_range[pin] = (lo, hi)
                        self.modes[pin] = SERVO
                elif cmd == SET_PIN_MODE:
                    pin, mode = self._read(2)
                    self.modes[pin] = mode
                elif 0xE0 <= cmd <= 0xEF:  # analog message: a servo angle
                    lsb, msb = self._read(2)
                    if self.attached(cmd & 0x0F):
                        self._servo(cmd & 0x0F, lsb | msb << 7)
                elif 0x90 <= cmd <= 0x9F:  # digital port write
                    lsb, msb = self._read(2)
                    self.ports[cmd & 0x0F] = lsb | msb << 7
                elif 0xD0 <= cmd <= 0xDF:
                    if self._read(1)[0]:
                        self.reporting.add(cmd & 0x0F)
                elif 0xC0 <= cmd <= 0xCF or cmd == 0xF5:
                    self._read(1 if cmd != 0xF5 else 2)
        except OSError:
            return
