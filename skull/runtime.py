"""Putting a skull together from its config: devices (real or simulated) into a Body."""
from __future__ import annotations

import logging
from contextlib import ExitStack

from .agent import Body
from .audio.player import ClockPlayer, open_player
from .audio.recorder import FileMic, SoundDeviceMic
from .camera import Camera
from .config import SkullConfig
from .devices import GpioPanel, pin_factory
from .core.errors import DeviceError
from .jaw.gpio import GpioJaw
from .jaw.sim import SimJaw
from .ports import Device, closing_on_failure
from .triggers import check_trigger

log = logging.getLogger("skull.runtime")


def build_body(config: SkullConfig, *, sim: bool, mic_file=None, image=None, audio: bool = True,
               mic_speed: float = 1.0) -> Body:
    """The skull's devices. ``sim``: gpiozero MockFactory for button, LED and servo.
    ``mic_file``: a WAV played as the microphone; ``image``: a picture used as the camera;
    ``audio`` False: no sound devices at all (the reply is timed by a simulated speaker).
    A ``[listen] trigger`` that cannot run on this machine is refused (ConfigError) before any
    device is opened."""
    check_trigger(config.listen)
    with closing_on_failure() as opened:
        panel, jaw = _panel_and_jaw(config, sim, opened)
        if mic_file is not None:
            mic = FileMic(mic_file, chunk_ms=config.audio.chunk_ms, speed=mic_speed)
        elif audio:
            mic = SoundDeviceMic(config.audio.input_device, chunk_ms=config.audio.chunk_ms)
        else:
            raise DeviceError("no microphone: with --no-audio give --mic-file FILE.wav to hear a question")
        opened.callback(mic.close)
        player = (open_player(config.audio.output_device, latency_ms=config.audio.output_latency_ms)
                  if audio else ClockPlayer())
        opened.callback(player.close)
        camera = None
        source = image if image is not None else config.camera.source
        if source is not None:
            try:
                camera = Camera(source, config.camera.width, config.camera.height)
            except DeviceError as exc:
                if image is not None:
                    raise
                log.warning("%s; turns go on without a snapshot", exc)
        return Body(panel=panel, jaw=jaw, mic=mic, player=player, camera=camera)


def _panel_and_jaw(config: SkullConfig, sim: bool, opened: ExitStack):
    """Button, LED and jaw from [board] driver: a Pi's GPIO (MockFactory with ``sim``), a
    simulated jaw, or a board on USB serial. Each is registered on ``opened`` for closing."""
    driver = config.board.driver
    if driver in ("serial", "firmata"):
        from .boards import open_board
        board = opened.enter_context(open_board(config.board, config.calibration))
        return board.panel, board.jaw
    factory = pin_factory(sim or driver == "sim", config.board.pin_factory)
    panel = opened.enter_context(GpioPanel(config.pins, factory, breathe=config.idle.led_breathe))
    if driver == "sim":
        jaw = SimJaw(config.calibration)
    else:
        jaw = GpioJaw(config.pins.servo, config.calibration, pin_factory=factory)
    opened.callback(jaw.close)
    return panel, jaw


class OpenedJaw(Device):
    """A jaw and whatever was opened to drive it (a board, the panel's pins); ``close()``
    shuts the jaw, detaches it and releases all of it, last opened first. Idempotent."""

    def __init__(self, jaw, stack: ExitStack):
        self.jaw, self._stack = jaw, stack

    def close(self) -> None:
        self._stack.close()


def open_jaw(config: SkullConfig, calibration=None) -> OpenedJaw:
    """Only the jaw of the configured board (for calibrating and replaying), opened with
    ``calibration`` (default: the config's): ``with open_jaw(config) as opened: opened.jaw...``."""
    import dataclasses
    if calibration is not None:
        config = dataclasses.replace(config, calibration=calibration)
    with closing_on_failure() as opened:
        _, jaw = _panel_and_jaw(config, config.board.driver == "sim", opened)
        return OpenedJaw(jaw, opened.pop_all())
