"""``skull doctor``: what this skull can see of its hardware and its host, line by line.

Each line says OK, WARN (the skull runs without it) or FAIL (it cannot run as configured),
and for anything not OK, what to do. Exit status 0 only when nothing FAILs.
"""
from __future__ import annotations

import asyncio
import dataclasses
import glob
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

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
    from .audio.monitor import default_monitor, sound_server
    server, source = sound_server(), default_monitor()
    if server is None or source is None:
        where = os.environ.get("PULSE_SERVER")
        server_line = Finding("sound server", "WARN", (
            f"no PulseAudio or PipeWire server answers{f' at PULSE_SERVER={where}' if where else ''}: what the "
            f"speaker plays is not checked (expected on plain ALSA; to check it, start one: 'systemctl --user "
            f"start pipewire-pulse' or 'pulseaudio --start')"))
        source = None
    else:
        server_line = Finding("sound server", "OK", f"{server}, default output {source.removesuffix('.monitor')}")
    out = []
    for kind, key, want in (("input", "max_input_channels", config.audio.input_device),
                            ("output", "max_output_channels", config.audio.output_device)):
        names = [f"{i}: {d['name']}" for i, d in enumerate(devices) if d[key] > 0]
        label = "microphone" if kind == "input" else "speaker"
        if not names:
            out.append(Finding(label, "FAIL", f"no audio {kind} device; plug in a USB {label} (then "
                                              f"'{sys.executable} -m sounddevice' lists it)"))
            continue
        try:
            chosen = sd.query_devices(want, kind=kind)
        except Exception as exc:
            out.append(Finding(label, "FAIL", f"[audio] {kind}_device = {want!r} not found ({exc}); choose one of "
                                              f"{'; '.join(names[:6])}"))
            continue
        listed = f"(of {len(names)}: {'; '.join(names[:4])})"
        if kind == "input":
            out.append(Finding(label, "OK", f"{chosen['name']} at {chosen['default_samplerate']:.0f} Hz {listed}"))
        else:
            out.extend(_speaker(config, chosen["name"], listed, source))
    # the server line goes right after the speaker's, before the tone it checks
    at = next((i + 1 for i, f in enumerate(out) if f.what == "speaker"), len(out))
    return out[:at] + [server_line] + out[at:]


TONE_S, TONE_DBFS, TONE_HZ = 0.5, -20.0, 440.0
"""the speaker's test tone: half a second, quiet (RMS), an A"""
TONE_PEAK = 10 ** (TONE_DBFS / 20) * np.sqrt(2)
SILENT_DBFS = -70.0
"""the monitor heard nothing where it stays below this (a sink's volume can turn the tone down
by 30 dB and more)"""
GAP_DB = 30.0
"""inside the tone, a stretch this far below the tone's heard level is a gap"""
HEARD_OFF_MS = 30.0
"""heard this much earlier or later than the player expected, the jaw is off by as much"""


def _speaker(config: SkullConfig, name: str, listed: str, source: str | None) -> list[Finding]:
    """Open the speaker as the skull does and play the test tone through its timeline; with
    ``source`` (the sound server's default monitor, None without a server) check that the tone
    came out, whole, and when."""
    from .audio.monitor import SinkMonitor, monitor_of_process
    from .audio.player import SoundDevicePlayer
    from .core.errors import DeviceError
    from .replay import output_latency_s
    player = monitor = heard = None
    monitor_note = ""
    try:
        try:
            player = SoundDevicePlayer(config.audio.output_device, latency_ms=config.audio.output_latency_ms)
            player.start()
        except (DeviceError, OSError) as exc:
            return [Finding("speaker", "FAIL", f"{name} cannot play: {exc}; choose another [audio] output_device "
                                               f"{listed}")]
        latency_s = output_latency_s(player)
        if source is not None:  # the stream exists now: the server can tell which sink plays it
            try:
                monitor = SinkMonitor(monitor_of_process(os.getpid()) or source).start()
                if not monitor.wait_started(timeout_s=3.0):
                    monitor_note = f"the monitor {monitor.source!r} did not start recording"
            except DeviceError as exc:
                monitor_note = str(exc)
        tone = _play_tone(player, latency_s)
    finally:
        if player is not None:
            player.close()
        if monitor is not None:
            try:
                heard = monitor.stop()
            except DeviceError as exc:
                monitor_note = monitor_note or str(exc)
    head = Finding("speaker", "OK", f"{name} at {player.rate} Hz, output latency {latency_s * 1000:.0f} ms {listed}")
    return [head, _judge_tone(tone, None if monitor_note else heard, monitor_note, config)]


@dataclass
class _Tone:
    queued_at: float
    """time.monotonic() when the tone was queued"""
    expected_at: float | None
    """when the player said its first sample would be heard (None: it never started)"""
    played: bool
    """the player took all of it within the time allowed"""
    underruns: int | None
    """the player's count of output underflows while it played (None: the player does not count)"""


def _play_tone(player, latency_s: float) -> _Tone:
    t = np.arange(int(TONE_S * player.rate)) / player.rate
    ramp = np.minimum(1.0, np.minimum(t, TONE_S - t) / 0.01)  # no clicks
    x = (TONE_PEAK * ramp * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)
    before = getattr(player, "underruns", None)
    queued = time.monotonic()
    seg = player.timeline.add(x, player.rate, np.zeros(0, np.float32), 100, tag="doctor")
    deadline = queued + TONE_S + 1.5
    while (seg.start < 0 or player.timeline.busy) and time.monotonic() < deadline:
        time.sleep(0.01)
    played = seg.start >= 0 and not player.timeline.busy
    time.sleep(latency_s + 0.15)  # what is still in the device's buffer
    after = getattr(player, "underruns", None)
    under = after - before if isinstance(after, int) and isinstance(before, int) else None
    return _Tone(queued, (seg.heard_at or seg.started_at) if seg.start >= 0 else None, played, under)


def _judge_tone(tone: _Tone, heard, monitor_note: str, config: SkullConfig) -> Finding:
    """The tone line: played? underran? came out of the monitor, whole, and when?"""
    what = f"{TONE_S:.1f} s test tone ({TONE_DBFS:.0f} dBFS {TONE_HZ:.0f} Hz)"
    raise_latency = ("raise [audio] output_latency_ms" + (f" (now {config.audio.output_latency_ms})"
                                                          if hasattr(config.audio, "output_latency_ms") else "")
                     + " or close programs that keep the CPU or the sound device busy")
    if not tone.played:
        return Finding("speaker tone", "FAIL", f"the {what} was not taken by the speaker within "
                                               f"{TONE_S + 1.5:.1f} s: the device does not play (is it in use by "
                                               f"another program, or suspended?); choose another [audio] "
                                               f"output_device")
    if tone.underruns:
        return Finding("speaker tone", "WARN", f"the {what} underran {tone.underruns} time(s) (the speaker ran out "
                                               f"of sound, a click or a gap); {raise_latency}")
    counted = "without underrun" if tone.underruns == 0 else "(this player does not count underruns)"
    if heard is None:
        note = monitor_note or "no sound server monitor"
        return Finding("speaker tone", "OK" if not monitor_note else "WARN",
                       f"{what} played {counted}; whether it came out is not checked ({note})")
    first = heard.first_sound(tone.queued_at, SILENT_DBFS, until=tone.queued_at + TONE_S + 2.0)
    if first is None:
        return Finding("speaker tone", "WARN", f"the {what} played, but nothing came out of {heard.source}: the "
                                               f"speaker does not play through the sound server (an ALSA hw: "
                                               f"device?), or the sink is muted; check 'pactl list sinks' and "
                                               f"[audio] output_device")
    tone_heard = heard.between(first, min(first + TONE_S, heard.end))
    level_db = 20 * np.log10(max(1e-9, float(np.max(np.abs(tone_heard)))) / TONE_PEAK)
    gap_ms = _longest_gap_ms(tone_heard, heard.rate, level_db + 20 * np.log10(TONE_PEAK) - GAP_DB)
    after_ms = (first - tone.queued_at) * 1000.0
    detail = f"{what} came out of {heard.source} {after_ms:.0f} ms after it was queued"
    if level_db < -3:
        detail += f" ({-level_db:.0f} dB quieter: the sink's volume)"
    if gap_ms >= 10.0:
        return Finding("speaker tone", "WARN", f"{detail}, with a {gap_ms:.0f} ms gap (the speaker ran out of "
                                               f"sound); {raise_latency}")
    detail += ", whole (no gap heard)" if tone.underruns is None else ", whole, without underrun"
    if tone.expected_at is not None:
        off_ms = (first - tone.expected_at) * 1000.0
        detail += f" ({off_ms:+.0f} ms from when the player expected it)"
        if abs(off_ms) > HEARD_OFF_MS:
            return Finding("speaker tone", "WARN", f"{detail}: the jaw will move {abs(off_ms):.0f} ms "
                                                   f"{'early' if off_ms > 0 else 'late'}, as the speaker's clock "
                                                   f"is wrong by that much; run 'skull replay DIR --report' on a "
                                                   f"recorded session to see the jaw as heard")
    return Finding("speaker tone", "OK", detail)


def _longest_gap_ms(x, rate: int, floor_dbfs: float) -> float:
    """The longest stretch of ``x`` quieter than ``floor_dbfs``, ms, between its first and last
    loud samples (a tone's own zero crossings last well under a millisecond)."""
    loud = np.flatnonzero(np.abs(x) >= 10 ** (floor_dbfs / 20))
    return float(np.max(np.diff(loud), initial=1) - 1) / rate * 1000.0 if len(loud) > 1 else 0.0


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
        from serial.tools import list_ports
        ports = serial_ports()
        described = {p.device: p for p in list_ports.comports()}
    except ImportError as exc:
        return [Finding("serial", "FAIL", f"pyserial is missing ({exc}); run 'make bootstrap'")]
    driver = config.board.driver
    needed = driver in ("serial", "firmata")
    if not ports:
        status = "FAIL" if needed else "OK"
        return [Finding("serial ports", status, "none found" + (
            f"; [board] driver = {driver!r} needs the board on USB: plug it in" if needed else
            " (not needed: [board] driver = " + repr(driver) + ")"))]
    out = []
    for port in ports:
        kind = _port_kind(described.get(port), port)
        answer, board = _probe(port, config)
        if board:
            out.append(Finding(f"serial {port}", "OK", f"{kind}: {answer}"))
        elif not needed:
            out.append(Finding(f"serial {port}", "OK", f"{kind}: {answer} (not needed: [board] driver = {driver!r})"))
        else:
            what = ("not where an Arduino's USB board appears (that is /dev/ttyACM* or /dev/ttyUSB*)"
                    if kind.startswith("built-in") else "flash the firmware (firmware/README.md) or give "
                    "[board] port")
            out.append(Finding(f"serial {port}", "WARN", f"{kind}: {answer}; {what}"))
    if needed and not any(f.status == "OK" for f in out):
        out.append(Finding("board", "FAIL", f"no port answers as a {'SKULLJAW' if driver == 'serial' else 'Firmata'} "
                                            f"board, and [board] driver = {driver!r} needs one: plug the Arduino in "
                                            f"by USB and flash it (firmware/README.md)"))
    return out


def _port_kind(info, port: str) -> str:
    """What a serial port is, in words: a USB serial device (with its description) or a UART
    built into the computer (/dev/ttyS0, /dev/ttyAMA0: no USB board appears there)."""
    hwid = getattr(info, "hwid", "") or ""
    description = getattr(info, "description", "") or ""
    if "USB" in hwid or "ttyACM" in port or "ttyUSB" in port or "usbmodem" in port:
        return f"USB serial device{f' ({description})' if description and description != 'n/a' else ''}"
    return "built-in UART of this computer"


def _probe(port: str, config: SkullConfig) -> tuple[str, bool]:
    """What answers on a port: SKULLJAW firmware, Firmata, or nothing we know; and whether a
    board answered."""
    import serial
    try:
        with serial.Serial(port, config.board.baud or 115200, timeout=0.3) as s:
            s.reset_input_buffer()
            s.write(b"?\n")
            line = s.readline().decode("ascii", "replace").strip()
            if line.startswith("SKULLJAW"):
                return f"{line} (use [board] driver = 'serial', port = '{port}')", True
        with serial.Serial(port, 57600, timeout=0.3) as s:
            s.write(bytes([0xF9]))
            reply = s.read(3)
            if len(reply) == 3 and reply[0] == 0xF9:
                return f"Firmata {reply[1]}.{reply[2]} (use [board] driver = 'firmata', port = '{port}')", True
        return "no SKULLJAW or Firmata board answers here", False
    except (serial.SerialException, OSError) as exc:
        return f"cannot be opened ({exc}); are you in the 'dialout' group?", False


def _gpio(config: SkullConfig) -> list[Finding]:
    needed = config.board.driver == "gpio"
    if not needed:
        return [Finding("GPIO", "OK", f"not needed: [board] driver = {config.board.driver!r}")]
    from .core.errors import DeviceError
    from .devices import default_pin_factory
    if config.board.pin_factory:
        os.environ["GPIOZERO_PIN_FACTORY"] = config.board.pin_factory
    try:
        factory = default_pin_factory()
    except DeviceError as exc:
        return [Finding("GPIO", "FAIL", str(exc))]
    name = type(factory).__name__
    factory.close()
    return [Finding("GPIO", "OK", f"pin factory {name} (GPIOZERO_PIN_FACTORY="
                                  f"{os.environ.get('GPIOZERO_PIN_FACTORY', 'unset')})")]


def _calibration(config: SkullConfig, config_path=None) -> list[Finding]:
    """Which profile is in use, and how it was found (skull.config.load_skull_config)."""
    from .core.places import is_bundled
    from .core.validate import read_toml
    c = config.calibration
    values = f"closed {c.closed_us:.0f} us, open {c.open_us:.0f} us, lead {c.lead_ms:.0f} ms"
    if config.jaw.calibration:
        where = config.jaw.calibration
        if is_bundled(where) and config.board.driver != "sim":
            return [Finding("calibration", "WARN", f"{where} (the bundled default, not this jaw's): {values}; "
                                                   f"run skull calibrate to find this jaw's limits")]
        return [Finding("calibration", "OK", f"{where}{' (the bundled default)' if is_bundled(where) else ''}: "
                                             f"{values}")]
    if config_path is not None and "calibration" in read_toml(config_path)[0]:
        return [Finding("calibration", "OK", f"the [calibration] table of {config_path}: {values}")]
    return [Finding("calibration", "WARN", f"built-in defaults (no profile file found): {values}; run skull "
                                           f"calibrate to find this jaw's limits")]


def _host(config: SkullConfig, timeout_s: float = 3.0) -> list[Finding]:
    from websockets.asyncio.client import connect

    from .core import protocol as p
    link = config.link

    async def hello():
        nonlocal link
        from .discovery import Finder
        from .link import check_pin, tls_context
        if not link.url:  # found as skull run finds it: a host on this machine, else over mDNS
            link = dataclasses.replace(link, url=await Finder(link).url())
        async with connect(link.url, open_timeout=timeout_s, close_timeout=1, ssl=tls_context(link)) as ws:
            check_pin(ws, link)  # a wss:// host with a pinned certificate: checked before the token goes
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


def diagnose(config: SkullConfig, config_path=None) -> list[Finding]:
    """Every check's findings. ``config_path``: the config file in use (None: built-in defaults),
    to say where the calibration came from."""
    out = []
    for check in (_audio, _camera, _serial, _gpio, _calibration, _host):
        try:
            out.extend(check(config, config_path) if check is _calibration else check(config))
        except Exception as exc:  # the doctor reports, it does not crash
            out.append(Finding(check.__name__.strip("_"), "FAIL", f"the check itself failed: {type(exc).__name__}: {exc}"))
    return out
