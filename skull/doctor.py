"""``skull doctor``: what this skull can see of its hardware and its host, line by line.

Each line says OK, WARN (the skull runs without it) or FAIL (it cannot run as configured),
and for anything not OK, what to do. Exit status 0 only when nothing FAILs.
"""
from __future__ import annotations

import asyncio
import glob
import os
from dataclasses import dataclass

from .config import SkullConfig


@dataclass
class Finding:
    what: str
    status: str  # OK, WARN, FAIL
    detail: str


def _audio(config: SkullConfig) -> list[Finding]:
    try:
        import sounddevice as sd
        devices = sd.query_devices()
    except (OSError, ImportError) as exc:
        return [Finding("audio", "FAIL", f"PortAudio is not usable ({exc}); install libportaudio2 "
                                         f"(sudo apt-get install libportaudio2)")]
    out = []
    for kind, key, want in (("input", "max_input_channels", config.audio.input_device),
                            ("output", "max_output_channels", config.audio.output_device)):
        names = [f"{i}: {d['name']}" for i, d in enumerate(devices) if d[key] > 0]
        label = "microphone" if kind == "input" else "speaker"
        if not names:
            out.append(Finding(label, "FAIL", f"no audio {kind} device; plug in a USB {label} (then "
                                              f"'python -m sounddevice' lists it)"))
            continue
        try:
            chosen = sd.query_devices(want, kind=kind)
            out.append(Finding(label, "OK", f"{chosen['name']} at {chosen['default_samplerate']:.0f} Hz "
                                            f"(of {len(names)}: {'; '.join(names[:4])})"))
        except Exception as exc:
            out.append(Finding(label, "FAIL", f"[audio] {kind}_device = {want!r} not found ({exc}); choose one of "
                                              f"{'; '.join(names[:6])}"))
    return out


def _camera(config: SkullConfig) -> list[Finding]:
    found = sorted(glob.glob("/dev/video*"))
    source = config.camera.source
    if source is None:
        return [Finding("camera", "WARN", "[camera] source is off: turns go without a snapshot")]
    from .camera import Camera
    from .core.errors import DeviceError
    try:
        cam = Camera(source, config.camera.width, config.camera.height)
        try:
            shot = cam.snapshot()
        finally:
            cam.close()
        return [Finding("camera", "OK", f"{source!r} gives {len(shot)} byte snapshots")]
    except DeviceError as exc:
        seen = ", ".join(found) if found else "no /dev/video* devices"
        return [Finding("camera", "WARN", f"{exc} (seen: {seen}); turns go on without a snapshot")]


def _serial(config: SkullConfig) -> list[Finding]:
    try:
        from .boards import serial_ports
        ports = serial_ports()
    except ImportError as exc:
        return [Finding("serial", "FAIL", f"pyserial is missing ({exc}); run 'make bootstrap'")]
    needed = config.board.driver in ("serial", "firmata")
    if not ports:
        status = "FAIL" if needed else "OK"
        return [Finding("serial ports", status, "none found" + (
            f"; [board] driver = {config.board.driver!r} needs the board on USB: plug it in" if needed else
            " (not needed: [board] driver = " + repr(config.board.driver) + ")"))]
    out = []
    for port in ports:
        out.append(Finding(f"serial {port}", "OK", _probe(port, config)))
    return out


def _probe(port: str, config: SkullConfig) -> str:
    """What answers on a port: SKULLJAW firmware, Firmata, or nothing we know."""
    import serial
    try:
        with serial.Serial(port, config.board.baud or 115200, timeout=0.3) as s:
            s.reset_input_buffer()
            s.write(b"?\n")
            line = s.readline().decode("ascii", "replace").strip()
            if line.startswith("SKULLJAW"):
                return f"{line} (use [board] driver = 'serial', port = '{port}')"
        with serial.Serial(port, 57600, timeout=0.3) as s:
            s.write(bytes([0xF9]))
            reply = s.read(3)
            if len(reply) == 3 and reply[0] == 0xF9:
                return f"Firmata {reply[1]}.{reply[2]} (use [board] driver = 'firmata', port = '{port}')"
        return "no SKULLJAW or Firmata board answers here"
    except (serial.SerialException, OSError) as exc:
        return f"cannot be opened ({exc}); are you in the 'dialout' group?"


def _gpio(config: SkullConfig) -> list[Finding]:
    needed = config.board.driver == "gpio"
    import warnings
    try:
        from gpiozero import Device
        if config.board.pin_factory:
            os.environ["GPIOZERO_PIN_FACTORY"] = config.board.pin_factory
        with warnings.catch_warnings():  # gpiozero warns about each factory it falls back from
            warnings.simplefilter("ignore")
            factory = Device._default_pin_factory()
        name = type(factory).__name__
        factory.close()
        return [Finding("GPIO", "OK", f"pin factory {name} (GPIOZERO_PIN_FACTORY="
                                      f"{os.environ.get('GPIOZERO_PIN_FACTORY', 'unset')})")]
    except Exception as exc:
        hint = ("on a Raspberry Pi install python3-lgpio (Pi 5) or start pigpiod; elsewhere use "
                "[board] driver = 'serial' or 'firmata', or run with --sim")
        return [Finding("GPIO", "FAIL" if needed else "OK",
                        f"no pin factory works here ({type(exc).__name__}: {exc}); " + hint if needed
                        else f"not a Raspberry Pi (not needed: [board] driver = {config.board.driver!r})")]


def _calibration(config: SkullConfig) -> list[Finding]:
    c = config.calibration
    where = config.jaw.calibration or "[calibration] defaults"
    return [Finding("calibration", "OK", f"{where}: closed {c.closed_us:.0f} us, open {c.open_us:.0f} us, "
                                         f"lead {c.lead_ms:.0f} ms")]


def _host(config: SkullConfig, timeout_s: float = 3.0) -> list[Finding]:
    from websockets.asyncio.client import connect

    from .core import protocol as p
    link = config.link

    async def hello():
        async with connect(link.url, open_timeout=timeout_s, close_timeout=1) as ws:
            await ws.send(p.encode(p.Hello(p.PROTOCOL_VERSION, link.name + "-doctor", link.token))[0])
            return await asyncio.wait_for(ws.recv(), timeout_s)
    try:
        first = asyncio.run(hello())
        msg = p.decode_text(first, p.HOST_MESSAGES) if isinstance(first, str) else None
        if isinstance(msg, p.Welcome):
            return [Finding("host", "OK", f"{link.url} welcomes this skull (protocol {msg.protocol})")]
        return [Finding("host", "FAIL", f"{link.url} answered {first!r:.80}")]
    except Exception as exc:
        reason = getattr(getattr(exc, "rcvd", None), "reason", "") or f"{type(exc).__name__}: {exc}"
        return [Finding("host", "FAIL", f"{link.url} not reachable ({reason}); start 'skull host' there, or fix "
                                        f"[link] url / token")]


def diagnose(config: SkullConfig) -> list[Finding]:
    out = []
    for check in (_audio, _camera, _serial, _gpio, _calibration, _host):
        try:
            out.extend(check(config))
        except Exception as exc:  # the doctor reports, it does not crash
            out.append(Finding(check.__name__.strip("_"), "FAIL", f"the check itself failed: {type(exc).__name__}: {exc}"))
    return out
