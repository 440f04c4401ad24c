"""Putting a skull together from its config: devices (real or simulated) into a Body."""
from __future__ import annotations

import logging

from .agent import Body
from .audio.player import ClockPlayer, open_player
from .audio.recorder import FileMic, SoundDeviceMic
from .camera import Camera
from .config import SkullConfig
from .devices import Panel, pin_factory
from .core.errors import DeviceError
from .jaw.gpio import GpioJaw
from .jaw.sim import SimJaw

log = logging.getLogger("skull.runtime")


def build_body(config: SkullConfig, *, sim: bool, mic_file=None, image=None, audio: bool = True,
               mic_speed: float = 1.0) -> Body:
    """The skull's devices. ``sim``: gpiozero MockFactory for button, LED and servo.
    ``mic_file``: a WAV played as the microphone; ``image``: a picture used as the camera;
    ``audio`` False: no sound devices at all (the reply is timed by a simulated speaker)."""
    built = []
    try:
        panel, jaw = _panel_and_jaw(config, sim, built)
        if mic_file is not None:
            mic = FileMic(mic_file, chunk_ms=config.audio.chunk_ms, speed=mic_speed)
        elif audio:
            mic = SoundDeviceMic(config.audio.input_device, chunk_ms=config.audio.chunk_ms)
        else:
            raise DeviceError("no microphone: with --no-audio give --mic-file FILE.wav to hear a question")
        player = open_player(config.audio.output_device, enabled=audio) if audio else ClockPlayer()
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
    except BaseException:
        for close in reversed(built):
            close()
        raise


def _panel_and_jaw(config: SkullConfig, sim: bool, built: list):
    """Button, LED and jaw from [board] driver: a Pi's GPIO (MockFactory with ``sim``), a
    simulated jaw, or a board on USB serial."""
    driver = config.board.driver
    if driver in ("serial", "firmata"):
        from .boards import open_board
        board = open_board(config.board, config.calibration)
        built.append(board.close)
        return board.panel, board.jaw
    factory = pin_factory(sim or driver == "sim", config.board.pin_factory)
    panel = Panel(config.pins, factory)
    built.append(panel.close)
    if driver == "sim":
        jaw = SimJaw(config.calibration)
    else:
        jaw = GpioJaw(config.pins.servo, config.calibration, pin_factory=factory)
    built.append(jaw.close)
    return panel, jaw


def open_jaw(config: SkullConfig, calibration=None):
    """Only the jaw of the configured board (for calibrating and replaying), opened with
    ``calibration`` (default: the config's). Returns (jaw, closers); call the closers, last
    first, when done: they shut, detach and release everything that was opened."""
    import dataclasses
    if calibration is not None:
        config = dataclasses.replace(config, calibration=calibration)
    built: list = []
    try:
        _, jaw = _panel_and_jaw(config, config.board.driver == "sim", built)
    except BaseException:
        for close in reversed(built):
            close()
        raise
    return jaw, built
