"""Microcontroller boards on USB serial: our SKULLJAW firmware (``serial``) and stock
StandardFirmata (``firmata``). Each gives the agent what a Pi's GPIO gives it: a jaw with
``move``/``detach``/``close``, and a panel with a ``button`` (``when_pressed`` /
``when_released``) and ``set_led``.

Safety does not depend on this program staying alive: SKULLJAW closes the jaw and detaches
the servo by itself when no command arrives for its watchdog time (a keep-alive runs while we
are up), and never drives past the limits stored in it. On every exit path here the jaw is
closed, the servo detached and the LED turned off.
"""
from __future__ import annotations

import logging
import queue
import threading
import time

from .config import BoardConfig, Calibration
from .core.errors import DeviceError
from .devices import BREATHE_BLINK_S
from .jaw.base import JawBase
from .machine import LedPattern
from .ports import Device

log = logging.getLogger("skull.board")


class Button:
    """Callbacks like gpiozero's Button, fed by a board's button events."""

    def __init__(self):
        self.when_pressed = None
        self.when_released = None
        self.is_pressed = False

    def _event(self, down: bool) -> None:
        if down == self.is_pressed:
            return
        self.is_pressed = down
        fn = self.when_pressed if down else self.when_released
        if fn is not None:
            fn()


class BoardPanel(Device):
    """Button and LED of a board; LED patterns as on the Pi: off, on, offline (slow blink), and
    breathe (idle life): a slow blink, as a board's LED pin cannot dim."""

    def __init__(self, board):
        self.board, self.button, self.pattern = board, Button(), LedPattern.OFF
        self._blink: threading.Event | None = None

    def set_led(self, pattern: LedPattern) -> None:
        pattern = LedPattern(pattern)
        if pattern is self.pattern:
            return
        self.pattern = pattern
        if self._blink is not None:
            self._blink.set()
            self._blink = None
        if pattern in (LedPattern.OFFLINE, LedPattern.BREATHE):
            on_off = (0.1, 0.9) if pattern is LedPattern.OFFLINE else BREATHE_BLINK_S
            stop = self._blink = threading.Event()
            threading.Thread(target=self._blinking, args=(stop, *on_off), name="led-blink", daemon=True).start()
        else:
            self.board.led(pattern is LedPattern.ON)

    def _blinking(self, stop: threading.Event, on_s: float = 0.1, off_s: float = 0.9) -> None:
        while not stop.is_set():
            self.board.led(True)
            if stop.wait(on_s):
                break
            self.board.led(False)
            stop.wait(off_s)

    def close(self) -> None:
        self.set_led(LedPattern.OFF)
        self.board.led(False)


class BoardJaw(JawBase):
    """The jaw of a board: each pulse goes to the board as an opening of the range the board was
    opened with (its ``set_jaw(opening)``), so the board's own limits hold it too; detach is
    the board's ``release_jaw()``; closing the jaw closes the board."""

    def __init__(self, board, calibration: Calibration):
        super().__init__(calibration)
        self.board = board
        self._board_cal = calibration  # the limits stored on the board (never changed after opening)

    def _drive(self, us: float, opening: float) -> None:
        c = self._board_cal
        self.board.set_jaw((us - c.closed_us) / (c.open_us - c.closed_us))

    def _release(self) -> None:
        self.board.release_jaw()

    def _shutdown(self) -> None:
        self.board.close()

    def close(self, settle_s: float = 0.25) -> None:
        if self.board.closed:  # the board already shut and detached the jaw when it closed
            with self._lock:
                self.closed = True
            return
        super().close(settle_s)


# --- SKULLJAW firmware ---------------------------------------------------------------------

class SkulljawBoard(Device):
    """Our firmware over pyserial: line commands, one answer line each; ``B 1``/``B 0`` and
    ``X watchdog`` arrive as events at any time."""

    PROTOCOL_MAJOR = "1"

    def __init__(self, port: str, calibration: Calibration, baud: int = 115200, watchdog_ms: int = 500,
                 slew: int = 0, timeout_s: float = 2.0):
        import serial
        try:
            self.ser = serial.serial_for_url(port, baudrate=baud, timeout=0.05)
        except (serial.SerialException, OSError) as exc:
            raise DeviceError(f"cannot open serial port {port}: {exc}; check the cable, the port in skull.toml "
                              f"[board] port (see 'skull doctor'), and that you are in the 'dialout' group") from None
        self.port, self.timeout_s = port, timeout_s
        self.panel = BoardPanel(self)
        self._pending: queue.Queue = queue.Queue()  # (command, reply box or None), in send order
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self.closed = False
        self.status = ""
        self._reader = threading.Thread(target=self._read, name="skulljaw-reader", daemon=True)
        time.sleep(0.05)
        self.ser.reset_input_buffer()
        self._reader.start()
        try:
            version = self.ask("?")
            if not version.startswith("SKULLJAW "):
                raise DeviceError(f"{port} answered {version!r} to '?': not SKULLJAW firmware; flash "
                                  f"firmware/skulljaw/skulljaw.ino or choose [board] driver = 'firmata'")
            if version.split()[1].split(".")[0] != self.PROTOCOL_MAJOR:
                raise DeviceError(f"{port} runs {version}; this skull speaks SKULLJAW {self.PROTOCOL_MAJOR}.x: "
                                  f"flash firmware/skulljaw/skulljaw.ino")
            self.version = version
            lo, hi = int(round(calibration.closed_us)), int(round(calibration.open_us))
            self.ask(f"L {lo} {hi}")
            self.ask(f"V {int(slew)}")
            self.ask(f"W {int(watchdog_ms)}")
        except BaseException:
            self._shutdown()
            raise
        self.jaw = BoardJaw(self, calibration)
        self._keepalive_s = max(0.05, watchdog_ms / 3000) if watchdog_ms else 0
        if self._keepalive_s:
            threading.Thread(target=self._keepalive, name="skulljaw-keepalive", daemon=True).start()

    # --- the line protocol -------------------------------------------------------------

    def _write(self, line: str, box) -> None:
        with self._write_lock:
            self._pending.put((line, box))
            try:
                self.ser.write((line + "\n").encode())
            except Exception as exc:  # serial.SerialException, OSError: the board went away
                raise DeviceError(f"the board on {self.port} stopped answering ({exc}); check the USB cable") from None

    def ask(self, line: str) -> str:
        """Send a command and wait for its answer; an ``E`` answer raises DeviceError."""
        box: queue.Queue = queue.Queue(1)
        self._write(line, box)
        try:
            answer = box.get(timeout=self.timeout_s)
        except queue.Empty:
            raise DeviceError(f"no answer from {self.port} to {line!r} within {self.timeout_s} s; is the "
                              f"SKULLJAW firmware on it, at the configured baud rate?") from None
        if answer.startswith("E "):
            raise DeviceError(f"the board refused {line!r}: {answer[2:]}")
        return answer

    def tell(self, line: str) -> None:
        """Send a command without waiting; a refusal is logged."""
        self._write(line, None)

    def _read(self) -> None:
        buf = b""
        while not self._stop.is_set():
            try:
                data = self.ser.read(64)
            except Exception as exc:
                if not self._stop.is_set():
                    log.error("serial port %s failed: %s", self.port, exc)
                return
            buf += data
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                self._line(raw.decode("ascii", "replace").strip())

    def _line(self, line: str) -> None:
        if not line:
            return
        if line in ("B 1", "B 0"):
            self.panel.button._event(line == "B 1")
            return
        if line == "X watchdog":
            log.warning("the board's watchdog closed the jaw (no command for too long)")
            return
        try:
            command, box = self._pending.get_nowait()
        except queue.Empty:
            log.warning("unexpected line from %s: %r", self.port, line)
            return
        if box is not None:
            box.put(line)
        elif line.startswith("E "):
            log.warning("the board refused %r: %s", command, line[2:])
        elif line.startswith("S "):
            self.status = line

    def _keepalive(self) -> None:
        while not self._stop.wait(self._keepalive_s):
            try:
                self.tell("S")
            except DeviceError as exc:
                log.error("%s", exc)
                return

    # --- what the jaw and panel call ---------------------------------------------------

    def set_jaw(self, opening: float) -> None:
        self.tell(f"J {int(round(opening * 1000))}")

    def release_jaw(self) -> None:
        self.tell("D")

    def led(self, on: bool) -> None:
        if not self.closed:
            self.tell("O 1" if on else "O 0")

    def close(self) -> None:
        """LED off, jaw detached, port closed. Safe to call twice."""
        if self.closed:
            return
        try:
            self.panel.set_led(LedPattern.OFF)
            self.ask("O 0")
            self.ask("D")
        except DeviceError as exc:
            log.warning("closing the board: %s", exc)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self.closed = True
        self._stop.set()
        if self._reader.is_alive():
            self._reader.join(timeout=1)
        try:
            self.ser.close()
        except Exception:
            pass


def open_board(config: BoardConfig, calibration: Calibration):
    """The configured serial board (its ``jaw`` and ``panel``)."""
    port = config.port
    if config.driver == "serial":
        if port == "auto":
            port = find_port("serial")
        return SkulljawBoard(port, calibration, config.baud or 115200, config.watchdog_ms, config.slew)
    if config.driver == "firmata":
        from .firmata import FirmataBoard
        if port == "auto":
            port = find_port("firmata")
        return FirmataBoard(port, calibration, config)
    raise DeviceError(f"[board] driver = {config.driver!r} has no serial board")


def serial_ports() -> list[str]:
    from serial.tools import list_ports
    return sorted(p.device for p in list_ports.comports())


def find_port(kind: str) -> str:
    ports = [p for p in serial_ports() if "ttyACM" in p or "ttyUSB" in p or "usbmodem" in p or "COM" in p]
    if not ports:
        raise DeviceError(f"no USB serial port found for the {kind} board; plug it in, or set [board] port "
                          f"in skull.toml ('skull doctor' lists what it sees)")
    return ports[0]
