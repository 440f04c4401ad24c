"""The skull's device ports: one small interface per kind of device, and what every
implementation shares.

=========  =====================================================  ==========================
port       implementations                                        module
=========  =====================================================  ==========================
Jaw        GpioJaw (Pi), BoardJaw (SKULLJAW / Firmata), SimJaw    skull.jaw.gpio / boards / sim
Panel      GpioPanel (Pi), BoardPanel (a board's button and LED)  skull.devices / skull.boards
Mic        SoundDeviceMic, FileMic (a WAV as the microphone)      skull.audio.recorder
Speaker    SoundDevicePlayer, ClockPlayer (no device)             skull.audio.player
Camera     Camera (OpenCV: index, /dev/videoN, image/video file)  skull.camera
=========  =====================================================  ==========================

Every implementation is a context manager (:class:`Device`) whose ``close()`` is idempotent
and leaves the hardware safe; :func:`closing_on_failure` closes what was opened so far when
building a set of devices fails half way. The agent, calibrate and replay talk to devices
only through these ports.
"""
from __future__ import annotations

import abc
import logging
from contextlib import ExitStack, contextmanager
from typing import Callable, Protocol, runtime_checkable


log = logging.getLogger("skull.ports")


class Device(abc.ABC):
    """Base of every device: ``with device: ...`` closes it on the way out, whatever happened."""

    @abc.abstractmethod
    def close(self) -> None:
        """Leave the hardware safe and release it. Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@runtime_checkable
class Jaw(Protocol):
    """The jaw servo. ``move(opening)``: 0 (closed) .. 1 (open) of the calibrated travel; never
    outside the calibrated pulses, NaN closes. A hobby servo driven past its end stops buzzes,
    draws stall current and can strip its gears: see :mod:`skull.jaw.base`."""
    calibration: object
    opening: float
    attached: bool

    def move(self, opening: float) -> None: ...

    def detach(self) -> None:
        """Stop the pulses: the servo goes limp (no buzz, no stall current)."""

    @property
    def pulse_width_us(self) -> float | None: ...

    def recalibrate(self, calibration) -> None:
        """Narrow the limits to ``calibration`` (calibrate: the range just found)."""

    def close(self) -> None:
        """Shut, let the servo get there, detach, release. Idempotent."""


@runtime_checkable
class Button(Protocol):
    """gpiozero's Button interface: callbacks run on a device thread."""
    when_pressed: Callable[[], None] | None
    when_released: Callable[[], None] | None
    is_pressed: bool


@runtime_checkable
class Panel(Protocol):
    """The push button and the LED. ``set_led`` takes a :class:`~skull.machine.LedPattern`."""
    button: Button
    pattern: object

    def set_led(self, pattern) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class Mic(Protocol):
    """Signed 16-bit mono chunks at ``rate`` Hz to ``on_chunk`` from a device thread, between
    ``start`` and ``stop``. A failure on that thread goes to ``on_error`` (not raised there)."""
    rate: int
    """Hertz"""
    on_error: Callable[[BaseException], None] | None

    def start(self, on_chunk: Callable[[bytes], None]) -> None: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class Speaker(Protocol):
    """Plays a :class:`~skull.audio.player.Timeline` and knows when each frame is heard."""
    rate: int
    name: str
    timeline: object

    def now(self) -> float:
        """The playback clock, seconds."""

    def audible_frame(self, t: float) -> float:
        """The timeline frame heard at playback-clock time ``t``."""

    def start(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class Camera(Protocol):
    def snapshot(self) -> bytes:
        """One JPEG."""

    def close(self) -> None: ...


@contextmanager
def closing_on_failure():
    """``with closing_on_failure() as opened: opened.callback(dev.close)``: if the block fails,
    everything registered so far is closed, last first; if it succeeds, nothing is closed."""
    with ExitStack() as stack:
        yield stack
        stack.pop_all()


