"""Configuration: frozen dataclasses loaded once from TOML and validated.

A file holds ``[section]`` tables whose keys are the dataclass fields. Unknown sections or keys,
wrong types and out-of-range values raise ConfigError naming the file, the key, the value and
the rule. Every key has a documented default, so an empty file (or none) is a valid config.
"""
from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .core.envelope import JawShape
from .core.errors import ConfigError
from .core.validate import build, need, read_toml


# --- the skull (agent) ---------------------------------------------------------------------

def fingerprint_hex(text: str) -> str | None:
    """The 64 hex digits of a SHA-256 certificate fingerprint written as ``sha256:AB:CD:...``
    (``skull host`` prints it so), ``SHA256 Fingerprint=AB:CD:...`` (openssl) or bare hex, in
    upper case; None when ``text`` is not one."""
    digits = re.sub(r"^(sha256(\s*fingerprint)?\s*[:=]\s*)", "", text.strip(), flags=re.I).replace(":", "")
    return digits.upper() if re.fullmatch(r"[0-9A-Fa-f]{64}", digits) else None


DEFAULT_URL = "ws://127.0.0.1:8765"
"""where ``skull host`` listens with its defaults: the host on this machine"""


@dataclass(frozen=True)
class LinkConfig:
    url: str = ""
    """the host's websocket address, e.g. ws://192.168.1.20:8765; empty: find the host by itself
    (skull.discovery: a host on this machine at ws://127.0.0.1:8765, else one advertised over mDNS)"""
    token: str = ""
    """shared secret; also from the SKULL_TOKEN environment variable"""
    name: str = "mr-bones"
    """this skull's name; the host keeps one conversation per name"""
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 2.0
    """cap of the exponential reconnect backoff (jitter is added on top, up to 25%)"""
    ping_interval_s: float = 5.0
    ping_timeout_s: float = 5.0
    done_timeout_s: float = 10.0
    """once everything the host sent has played, how long the skull waits for more speech or the
    host's ``done`` before it ends the turn itself (jaw shut, idle), seconds; longer than the
    longest pause the host's backends leave between two sentences"""
    tls_fingerprint: str = ""
    """wss:// only: trust exactly the host certificate with this SHA-256 fingerprint
    ("sha256:AB:CD:...", printed by ``skull host --print-fingerprint``), e.g. a self-signed one;
    checked before the token is sent. Empty: the certificate must verify against tls_ca or the
    system's certificate authorities, for the URL's host name"""
    tls_ca: str = ""
    """wss:// only: a PEM file of the certificate authorities to trust instead of the system's"""
    discovery: bool = True
    """with an empty url: look for hosts advertised over mDNS (zeroconf); false for networks that
    forbid multicast (an empty url then means ws://127.0.0.1:8765)"""
    host_name: str = ""
    """with discovery: connect only to the host advertising this name (its [server] name, by
    default its machine's name); empty: a host on this machine, else the first that answers"""
    discovery_wait_s: float = 3.0
    """with discovery: how long to look for a host before trying ws://127.0.0.1:8765 (and looking
    again before the next attempt)"""

    def check(self, where: str) -> None:
        need(not self.url or self.url.startswith(("ws://", "wss://")), where, "url", self.url,
             "must start with ws:// or wss://, or be empty to find the host by itself")
        need(0.2 <= self.discovery_wait_s <= 60, where, "discovery_wait_s", self.discovery_wait_s, "must be 0.2..60 s")
        need(len(self.host_name) <= 63, where, "host_name", self.host_name[:70], "at most 63 characters (an mDNS name)")
        from .core.protocol import name_problem
        problem = name_problem(self.name)
        need(problem is None, where, "name", self.name[:70], f"{problem} (the host refuses any other name)")
        need(not self.tls_fingerprint or fingerprint_hex(self.tls_fingerprint) is not None, where, "tls_fingerprint",
             self.tls_fingerprint, "a SHA-256 fingerprint: 'sha256:' and 32 pairs of hex digits, as skull host "
             "--print-fingerprint shows it")
        need(not self.tls_ca or Path(self.tls_ca).is_file(), where, "tls_ca", self.tls_ca,
             "no such file: a PEM file of certificate authorities (a path relative to the folder the skull runs "
             "in, or absolute)")
        for key in ("tls_fingerprint", "tls_ca"):
            need(not getattr(self, key) or not self.url or self.url.startswith("wss://"), where, key, getattr(self, key),
                 f"applies to a wss:// url only, and url is {self.url!r}: use wss:// to reach a host that serves TLS")
        need(0 < self.reconnect_min_s <= self.reconnect_max_s <= 60, where, "reconnect_max_s", self.reconnect_max_s,
             "0 < reconnect_min_s <= reconnect_max_s <= 60")
        need(self.ping_interval_s > 0 and self.ping_timeout_s > 0, where, "ping_interval_s", self.ping_interval_s,
             "ping interval and timeout must be positive")
        need(0.5 <= self.done_timeout_s <= 300, where, "done_timeout_s", self.done_timeout_s,
             "must be 0.5..300 s: shorter cuts a reply off at a slow sentence, longer leaves the skull "
             "waiting on a host that forgot to finish")


@dataclass(frozen=True)
class Calibration:
    """Servo limits. A hobby servo driven past its end stops buzzes, draws stall current and
    can strip its gears or brown out the board: keep the pulses inside what the jaw can reach."""
    closed_us: float = 1300.0
    """pulse width with the jaw shut, microseconds"""
    open_us: float = 1700.0
    """pulse width with the jaw fully open, microseconds (may be below closed_us: reversed servo)"""
    lead_ms: float = 35.0
    """how early the jaw is commanded ahead of the sound (servo travel + frame wait)"""
    travel_ms: float = 42.0
    """how long the servo takes from closed to open (an SG90 at 6 V over 25 degrees: 42 ms)"""

    def check(self, where: str) -> None:
        for key in ("closed_us", "open_us"):
            v = getattr(self, key)
            need(500 <= v <= 2500, where, key, v, "a hobby servo pulse must be 500..2500 microseconds; past "
                 "that it drives into its end stops, stalls and can strip its gears. Run skull calibrate to "
                 "find this jaw's real limits")
        need(abs(self.open_us - self.closed_us) >= 50, where, "open_us", self.open_us,
             f"must differ from closed_us ({self.closed_us:g}) by at least 50 microseconds, or the jaw "
             f"cannot visibly move")
        need(0 <= self.lead_ms <= 300, where, "lead_ms", self.lead_ms, "must be 0..300 ms")
        need(5 <= self.travel_ms <= 2000, where, "travel_ms", self.travel_ms, "must be 5..2000 ms")


@dataclass(frozen=True)
class PinsConfig:
    button: int = 17
    """GPIO of the push button (to ground; internal pull-up)"""
    led: int = 27
    servo: int = 18

    def check(self, where: str) -> None:
        pins = [self.button, self.led, self.servo]
        for key, v in zip(("button", "led", "servo"), pins):
            need(0 <= v <= 27, where, key, v, "Raspberry Pi GPIO numbers are 0..27")
        need(len(set(pins)) == 3, where, "button", pins, "button, led and servo need three different pins")


@dataclass(frozen=True)
class AudioConfig:
    input_device: typing.Union[str, int, None] = None
    """microphone by name or index; None = the system default"""
    output_device: typing.Union[str, int, None] = None
    max_record_s: float = 15.0
    """a stuck button stops recording after this long"""
    chunk_ms: int = 100
    """microphone chunk length sent to the host"""
    output_latency_ms: float = 100.0
    """the speaker's buffer: a hiccup of the skull's process shorter than this cannot make the
    sound stop; every reply is heard this much later (docs/jaw-sync.md)"""

    def check(self, where: str) -> None:
        need(1 <= self.max_record_s <= 120, where, "max_record_s", self.max_record_s, "must be 1..120 s")
        need(10 <= self.output_latency_ms <= 1000, where, "output_latency_ms", self.output_latency_ms,
             "must be 10..1000 ms: below 10 no sound device keeps up, above 1000 every reply waits a second")
        need(10 <= self.chunk_ms <= 500, where, "chunk_ms", self.chunk_ms, "must be 10..500 ms")


@dataclass(frozen=True)
class CameraConfig:
    source: typing.Union[str, int, None] = 0
    """camera index, device path, or an image/video file; None = no camera"""
    width: int = 640
    height: int = 480


@dataclass(frozen=True)
class JawConfig:
    frame_hz: float = 50.0
    """servo update rate (a hobby servo's PWM frame is 20 ms)"""
    calibration: str = ""
    """path of a calibration profile: absolute, or relative (calibration/NAME.toml), then looked
    for beside this file, in the user's config folder (~/.config/skull/), then in the bundled
    defaults; empty = the [calibration] table, else calibration/default.toml found the same way"""
    mode: str = "track"
    """track: follow the host's precomputed jaw tracks (the full lead); live: the level of the
    audio as it goes to the speaker (only as far ahead as the speaker's buffer reaches)"""

    def check(self, where: str) -> None:
        need(10 <= self.frame_hz <= 200, where, "frame_hz", self.frame_hz, "must be 10..200 Hz")
        need(self.mode in ("track", "live"), where, "mode", self.mode, "choose track or live")


@dataclass(frozen=True)
class BoardConfig:
    """What drives the jaw, button and LED."""
    driver: str = "gpio"
    """gpio: a Raspberry Pi's pins ([pins]); serial: an Arduino with our SKULLJAW firmware;
    firmata: an Arduino with stock StandardFirmata; sim: simulated (MockFactory button and LED,
    a jaw that records and models the servo)"""
    port: str = "auto"
    """serial and firmata: /dev/ttyACM0, /dev/ttyUSB0, COM3...; auto = the first USB serial port"""
    baud: int = 0
    """0 = the driver's default (serial 115200, firmata 57600)"""
    watchdog_ms: int = 500
    """serial: the firmware closes and detaches the jaw by itself after this long without a command"""
    slew: int = 0
    """serial: jaw speed limit in permille of the travel per second; 0 = none"""
    servo_pin: int = 9
    """firmata: the Arduino pin of the servo signal"""
    button_pin: int = 2
    """firmata: the Arduino pin of the button (to ground; the internal pull-up is used)"""
    led_pin: int = 13
    """firmata: the Arduino pin of the LED"""
    pin_factory: str = ""
    """gpio: gpiozero pin factory (lgpio on a Pi 5, pigpio with its daemon, rpigpio, native);
    empty = GPIOZERO_PIN_FACTORY or gpiozero's own choice"""

    def check(self, where: str) -> None:
        need(self.driver in ("gpio", "serial", "firmata", "sim"), where, "driver", self.driver,
             "choose gpio, serial, firmata or sim")
        need(self.pin_factory in ("", "lgpio", "pigpio", "rpigpio", "native", "mock"), where, "pin_factory",
             self.pin_factory, "empty, lgpio, pigpio, rpigpio, native or mock")
        need(self.baud in (0, 9600, 19200, 38400, 57600, 115200, 230400), where, "baud", self.baud,
             "0 (the driver's default) or a standard rate such as 57600 or 115200")
        need(self.watchdog_ms == 0 or 50 <= self.watchdog_ms <= 60000, where, "watchdog_ms", self.watchdog_ms,
             "0 (off) or 50..60000 ms")
        need(0 <= self.slew <= 100000, where, "slew", self.slew, "must be 0..100000 permille per second")
        pins = (self.servo_pin, self.button_pin, self.led_pin)
        need(all(2 <= v <= 69 for v in pins) and len(set(pins)) == 3, where, "servo_pin", pins,
             "three different Arduino pins, 2..69 (0 and 1 carry the serial line)")


WAKE_WORDS = ("okay_nabu", "hey_jarvis", "alexa", "hey_mycroft")
"""the wake words whose models ship in pymicro-wakeword 2.5.0"""


@dataclass(frozen=True)
class ListenConfig:
    """What starts and ends a turn (docs/listening.md). The button works in every mode."""
    trigger: str = "button"
    """button: held while talking; voice: speech starts a turn and a pause ends it; wake: the
    wake word starts a turn and a pause after the question ends it"""
    wake_word: str = "okay_nabu"
    """one of okay_nabu, hey_jarvis, alexa, hey_mycroft (the models in pymicro-wakeword)"""
    min_speech_s: float = 0.3
    """speech must last this long to start a turn; claps and bangs are shorter"""
    end_silence_s: float = 0.8
    """this much silence after speech ends a hands-free turn ([audio] max_record_s still caps it)"""
    threshold: float = 0.5
    """probability of speech (0.2..0.95) the voice detector needs; higher is stricter"""
    echo_tail_s: float = 0.3
    """after the reply's last sound is heard, the mic still cannot start a turn for this long
    (the room's echo of the skull's own voice)"""
    wake_wait_s: float = 5.0
    """after the wake word, how long the question may take to begin before the turn ends"""

    def check(self, where: str) -> None:
        need(self.trigger in ("button", "voice", "wake"), where, "trigger", self.trigger,
             "choose button, voice or wake")
        need(self.wake_word in WAKE_WORDS, where, "wake_word", self.wake_word,
             f"choose one of {', '.join(WAKE_WORDS)}")
        need(0.1 <= self.min_speech_s <= 2.0, where, "min_speech_s", self.min_speech_s,
             "must be 0.1..2.0 s: shorter starts on claps and bangs, longer misses a quick 'hi'")
        need(0.3 <= self.end_silence_s <= 5.0, where, "end_silence_s", self.end_silence_s,
             "must be 0.3..5.0 s: shorter cuts the visitor off at a breath, longer keeps them waiting")
        need(0.2 <= self.threshold <= 0.95, where, "threshold", self.threshold, "must be 0.2..0.95")
        need(0.0 <= self.echo_tail_s <= 3.0, where, "echo_tail_s", self.echo_tail_s, "must be 0..3 s")
        need(1.0 <= self.wake_wait_s <= 30.0, where, "wake_wait_s", self.wake_wait_s, "must be 1..30 s")


MAX_CACHE_MB = 512


@dataclass(frozen=True)
class OfflineConfig:
    """The skull's own voice when the host is gone (docs/show.md)."""
    cache_dir: str = ""
    """where the host's pre-synthesised lines are kept; empty: $XDG_STATE_HOME/skull/NAME/lines
    (~/.local/state/skull/NAME/lines), NAME being [link] name"""
    max_mb: float = 24.0
    """the most a line set may take on disk, megabytes; a larger set is not kept"""
    voice: str = "en-us+m3"
    """the espeak-ng voice of the last resort, when no line is cached"""
    apology: str = "My voice from beyond is lost. Try me again soon."
    """what espeak-ng says on a press with no host and no cached line"""

    def check(self, where: str) -> None:
        need(1 <= self.max_mb <= MAX_CACHE_MB, where, "max_mb", self.max_mb, f"must be 1..{MAX_CACHE_MB} MB")
        need(bool(self.voice.strip()) and not self.voice.startswith("-"), where, "voice", self.voice,
             "an espeak-ng voice such as 'en-us+m3' (espeak-ng --voices lists them)")
        need(0 < len(self.apology.strip()) <= 300, where, "apology", self.apology[:40],
             "1..300 characters of text to speak")

    def folder(self, name: str) -> Path:
        """The cache folder for the skull called ``name``."""
        from .lines import default_cache_dir
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir(name)


def parse_quiet_hours(text: str) -> tuple[int, int] | None:
    """``"22:00-08:00"`` -> (start, end) in minutes after midnight; None for "" (no quiet hours).
    Raises ValueError naming what is wrong."""
    if not text.strip():
        return None
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", text)
    if m is None:
        raise ValueError("write it as HH:MM-HH:MM, e.g. \"22:00-08:00\" (it may wrap past midnight), or \"\" for none")
    h1, m1, h2, m2 = map(int, m.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ValueError("hours are 0..23 and minutes 0..59")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise ValueError("start and end are the same time; use \"\" for no quiet hours")
    return start, end


@dataclass(frozen=True)
class IdleConfig:
    """Idle life: what the skull does with no visitor (docs/show.md)."""
    attract_every_min: float = 0.0
    """say an attract line after this many minutes with no visitor (and again as long as none
    comes); 0 = never"""
    quiet_hours: str = ""
    """"HH:MM-HH:MM" local time without attract lines, e.g. "22:00-08:00" (wraps midnight); "" = none"""
    greeting: bool = True
    """say a greeting line when the host comes back after it was lost (for 20 s or more)"""
    idle_jaw: bool = False
    """now and then a small, slow jaw movement while idle (within the calibrated limits)"""
    led_breathe: bool = False
    """the LED breathes while idle (a PWM pulse where the pin can dim, else a slow blink)"""

    def check(self, where: str) -> None:
        need(self.attract_every_min == 0 or 0.1 <= self.attract_every_min <= 1440, where, "attract_every_min",
             self.attract_every_min, "0 (off) or 0.1..1440 minutes")
        try:
            parse_quiet_hours(self.quiet_hours)
        except ValueError as exc:
            need(False, where, "quiet_hours", self.quiet_hours, str(exc))


@dataclass(frozen=True)
class ButtonConfig:
    """The push button's human faults (docs/show.md)."""
    debounce_ms: float = 30.0
    """edges this soon after a counted one are contact bounce: a chattering press is one press
    (the skull's only debounce, for every board; 0 = off)"""
    stuck_s: float = 120.0
    """a button down this long is reported stuck (one warning) and ignored until it comes up"""

    def check(self, where: str) -> None:
        need(0 <= self.debounce_ms <= 500, where, "debounce_ms", self.debounce_ms,
             "must be 0..500 ms: 0 is off, a worn button bounces for up to ~50 ms, and past 500 a quick "
             "second press is lost")
        need(5 <= self.stuck_s <= 86400, where, "stuck_s", self.stuck_s,
             "must be 5..86400 s (keep it above [audio] max_record_s: a visitor holding the button to talk is "
             "not a stuck button)")


@dataclass(frozen=True)
class RecordConfig:
    """Recording turns (``skull run --record DIR``)."""
    min_free_mb: float = 500.0
    """below this many free megabytes on the record folder's disk, recording pauses (one warning)
    and resumes when there is room again; turns are still answered; 0 = never pause"""

    def check(self, where: str) -> None:
        need(0 <= self.min_free_mb <= 10_000_000, where, "min_free_mb", self.min_free_mb,
             "must be 0..10000000 MB (0 = never pause)")


@dataclass(frozen=True)
class LogConfig:
    """The JSON-lines turn log: one object per finished turn (docs/show.md)."""
    turns: str = ""
    """the file (e.g. /var/log/skull/turns.jsonl, or a path relative to the folder the skull runs
    in); empty = no turn log. ``skull run --turn-log PATH`` overrides it"""
    max_mb: float = 10.0
    """the file is rotated (turns.jsonl.1, .2...) when it would grow past this many megabytes"""
    backups: int = 3
    """rotated files kept; the oldest is deleted"""

    def check(self, where: str) -> None:
        need(0.01 <= self.max_mb <= 10_000, where, "max_mb", self.max_mb, "must be 0.01..10000 MB")
        need(1 <= self.backups <= 100, where, "backups", self.backups, "must be 1..100 files")


@dataclass(frozen=True)
class SkullConfig:
    link: LinkConfig = field(default_factory=LinkConfig)
    board: BoardConfig = field(default_factory=BoardConfig)
    pins: PinsConfig = field(default_factory=PinsConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    jaw: JawConfig = field(default_factory=JawConfig)
    calibration: Calibration = field(default_factory=Calibration)
    shape: JawShape = field(default_factory=JawShape)
    listen: ListenConfig = field(default_factory=ListenConfig)
    button: ButtonConfig = field(default_factory=ButtonConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    log: LogConfig = field(default_factory=LogConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    idle: IdleConfig = field(default_factory=IdleConfig)


PROFILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def calibration_dir(config_path: str | Path | None = None) -> Path:
    """Where ``skull calibrate`` saves profiles: ``calibration/`` beside the config file in use,
    else ``calibration/`` in the user's config folder (``~/.config/skull/calibration/``). Never
    the bundled defaults (:func:`skull.core.places.bundled_profiles`), which are read-only."""
    from .core.places import user_config_dir
    return (Path(config_path).absolute().parent if config_path is not None else user_config_dir()) / "calibration"


def profile_path(name: str, folder: str | Path) -> Path:
    """``<folder>/<name>.toml`` for a profile name, or the path itself when given one."""
    if _is_path(name):
        return Path(name)
    if not PROFILE_NAME_RE.match(name):
        raise ConfigError(f"calibration name {name!r} is not usable as a file name; use letters, digits, - _ .")
    return Path(folder) / f"{name}.toml"


def _is_path(name: str) -> bool:
    return name.endswith(".toml") or "/" in name or os.sep in name


def find_profile(relative: str | Path, config_path: str | Path | None, *, what: str, make: str) -> Path:
    """The first of :func:`skull.core.places.profile_candidates` that exists; else a
    ConfigError naming ``what`` asked for it, every place searched, and ``make`` (what to do)."""
    from .core.places import profile_candidates
    candidates = profile_candidates(relative, config_path)
    for path, _ in candidates:
        if path.is_file():
            return path
    searched = ", ".join(str(path) for path, _ in candidates)
    raise ConfigError(f"calibration profile {relative} ({what}) is not in any of {searched}; {make}")


def load_skull_config(path: str | Path | None = None, *, calibration: str | None = None) -> SkullConfig:
    """skull.toml (or the defaults), with its servo profile resolved here and nowhere else.

    The profile, first found wins: ``calibration`` (--calibration: a NAME, meaning
    ``calibration/NAME.toml``, or a PATH, relative to the current folder as command-line paths
    are), then ``[jaw] calibration`` (an absolute path, or relative), then the file's own
    ``[calibration]`` table, then ``calibration/default.toml``. A NAME, a relative ``[jaw]
    calibration`` and the default are searched for beside the config file, then in the user's
    config folder, then in the bundled defaults (:func:`skull.core.places.profile_candidates`);
    only the bundled file missing too (an install without the source tree) leaves the built-in
    defaults, which hold the same values. ``jaw.calibration`` of the result names the profile
    file used ("" for none)."""
    data, where = read_toml(path)
    cfg = build(SkullConfig, data, where)
    again = f" --config {path}" if path is not None else ""
    chosen: Path | None = None
    if calibration:
        if _is_path(calibration):
            chosen = Path(calibration).expanduser()
            if not chosen.is_file():
                raise ConfigError(f"calibration profile {chosen} (--calibration) does not exist; give the path of a "
                                  f"profile, or make it with skull calibrate --name NAME{again}")
        else:
            profile_path(calibration, ".")  # the name is checked first
            chosen = find_profile(f"calibration/{calibration}.toml", path, what="--calibration",
                                  make=f"make it with skull calibrate --name {calibration}{again}")
    elif cfg.jaw.calibration:
        named = Path(cfg.jaw.calibration).expanduser()
        source = f"{where} [jaw] calibration"
        if named.is_absolute():
            if not named.is_file():
                raise ConfigError(f"calibration profile {named} ({source}) does not exist; make it with skull "
                                  f"calibrate --dir {named.parent} --name {named.stem}{again}, or fix [jaw] calibration")
            chosen = named
        else:
            chosen = find_profile(named, path, what=source,
                                  make=f"make it with skull calibrate --name {named.stem}{again}, or fix "
                                       f"[jaw] calibration")
    elif "calibration" not in data:
        try:
            chosen = find_profile("calibration/default.toml", path, what="the default profile", make="")
        except ConfigError:
            chosen = None  # no bundled file either: the built-in values, the same as the bundled file's
    if chosen is None:
        return cfg
    return dataclasses.replace(cfg, calibration=load_calibration(chosen),
                               jaw=dataclasses.replace(cfg.jaw, calibration=str(chosen)))


def load_calibration(path: str | Path) -> Calibration:
    data, where = read_toml(path)
    return build(Calibration, data.get("servo", data), where, "servo" if "servo" in data else "")
