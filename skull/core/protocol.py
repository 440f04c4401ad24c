"""Protocol v1 between a skull and its host: messages, encoding and decoding. No I/O.

Control messages are JSON objects in websocket text frames, each with a ``type``. Bulk data
(camera images, microphone audio, reply speech) travels in binary frames, each announced by a
text message that says what it is (see docs/protocol.md):

* ``image`` announces exactly one binary frame holding ``bytes`` bytes of an encoded picture;
* ``audio_start`` opens a microphone stream; every binary frame until ``stop`` is raw PCM in
  the declared format;
* ``speech`` announces exactly one binary frame holding ``bytes`` bytes of raw PCM;
* ``line`` (one pre-synthesised line of a set the skull keeps for when the host is gone)
  announces exactly one binary frame holding ``bytes`` bytes of raw PCM, like ``speech``;
* ``say`` (a line the operator typed, to be said now) announces one binary frame of raw PCM too.

The operator's controls (``status`` from the skull, ``command`` and ``say`` from the host) are
used only between peers that both know them: the skull offers them in ``hello.controls`` and
the host asks for status reports in ``welcome.status_hz``; neither sends them otherwise.

:class:`FrameReader` holds the little state that pairing needs and turns frames into messages,
raising :class:`~skull.errors.ProtocolError` with a code and a message that names the problem.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

from .errors import ProtocolError
from .validate import ValidationError, build

PROTOCOL_VERSION = 1
DISCOVERY_SERVICE = "_skull._tcp.local."
"""the mDNS / DNS-SD service type a host advertises (TXT: name, protocol, scheme; docs/protocol.md)"""
SUPPORTED_VERSIONS = (1,)

#: Largest text frame accepted (bytes of UTF-8).
MAX_TEXT_BYTES = 256 * 1024
#: Largest binary frame accepted by the application; larger ones get an ``error`` and are dropped.
MAX_BINARY_BYTES = 4 * 1024 * 1024
#: Hard transport limit: a frame past this closes the connection (code 1009).
TRANSPORT_MAX_BYTES = 16 * 1024 * 1024

# Close codes (4000-4999 are for applications).
CLOSE_BAD_HELLO = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_HELLO_TIMEOUT = 4408
CLOSE_REPLACED = 4409
CLOSE_HOST_FULL = 4429
CLOSE_UNSUPPORTED_PROTOCOL = 4426

# Error codes carried by ``error`` messages.
E_BAD_JSON = "bad_json"
E_BAD_MESSAGE = "bad_message"
E_UNKNOWN_TYPE = "unknown_type"
E_MISSING_FIELD = "missing_field"
E_BAD_FIELD = "bad_field"
E_UNEXPECTED_BINARY = "unexpected_binary"
E_TOO_LARGE = "too_large"
E_BAD_STATE = "bad_state"
E_STAGE_FAILED = "stage_failed"
E_INTERNAL = "internal_error"
"""the peer hit an unexpected fault handling a message; it logged it and the connection stays open"""

#: Lines in one set of pre-synthesised lines (``line`` messages).
MAX_LINES = 32
#: Bytes of PCM of one line (about 47 s of 22.05 kHz mono, 22 s at 48 kHz).
MAX_LINE_BYTES = 2 * 1024 * 1024
#: Bytes of PCM of a whole set of lines; the skull refuses a set past it (and so its disk cache).
MAX_SET_BYTES = 24 * 1024 * 1024
#: The kinds of line a set holds (docs/show.md).
LINE_KINDS = ("offline", "closer", "wait", "attract", "greeting")
#: A line set's id: 1..64 letters, digits, '-' or '_' (the host hashes its voice and texts).
_SET_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

SAMPLE_WIDTHS = (2,)  # v1 carries signed 16-bit little-endian PCM only
MIN_RATE_HZ, MAX_RATE_HZ = 8000, 192000


def _fail(code: str, message: str) -> ProtocolError:
    return ProtocolError(code, message)


class PayloadMissing(ProtocolError):
    """A text frame came where an announced binary frame belonged: the announced payload is
    lost (``code`` bad_state), but the text frame itself was read and is ``message``, for the
    caller to handle as usual (a ``stop`` or ``done`` must not be lost with the payload)."""

    def __init__(self, text: str, message: "Message"):
        super().__init__(E_BAD_STATE, text)
        self.message = message


#: A skull's name: 1..64 characters, letters, digits, '-', '_' and '.', starting with a letter
#: or a digit (it names log lines, files and config tables).
MAX_NAME_CHARS = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,%d}" % (MAX_NAME_CHARS - 1))


def name_problem(name: str) -> str | None:
    """What is wrong with ``name`` as a skull's name, or None when it is fine."""
    if _NAME.fullmatch(name):
        return None
    if not name:
        return "is empty"
    if len(name) > MAX_NAME_CHARS:
        return f"is {len(name)} characters long; at most {MAX_NAME_CHARS}"
    return ("may hold only letters, digits, '-', '_' and '.', and must start with a letter or a digit, "
            "e.g. 'mr-bones'")


@dataclass(frozen=True)
class Message:
    """Base of every message; subclasses set ``type`` and list their fields."""

    type: ClassVar[str] = ""
    #: True when a binary frame follows this message (its size is in ``bytes``).
    has_payload: ClassVar[bool] = False

    def validate(self) -> None:
        """Check ranges; raise ProtocolError(bad_field) naming the field."""

    def check(self, where: str) -> None:
        """The validator's hook (:func:`skull.core.validate.build`): the message's own rules."""
        self.validate()

    def to_dict(self) -> dict[str, Any]:
        d = {"type": self.type}
        for f in dataclasses.fields(self):
            d[f.name] = getattr(self, f.name)
        return d


def _check_turn(turn: int) -> None:
    if turn < 0:
        raise _fail(E_BAD_FIELD, f"field 'turn' must be 0 or more, got {turn}")


def _check_pcm(rate: int, width: int, channels: int) -> None:
    if not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
        raise _fail(E_BAD_FIELD, f"field 'rate' must be {MIN_RATE_HZ}..{MAX_RATE_HZ} Hz, got {rate}")
    if width not in SAMPLE_WIDTHS:
        raise _fail(E_BAD_FIELD, f"field 'width' must be 2 (signed 16-bit little-endian), got {width}")
    if channels not in (1, 2):
        raise _fail(E_BAD_FIELD, f"field 'channels' must be 1 or 2, got {channels}")


# --- skull -> host -------------------------------------------------------------------------

@dataclass(frozen=True)
class Hello(Message):
    """First message of every connection."""
    type: ClassVar[str] = "hello"
    protocol: int
    skull: str
    token: str = ""
    play_rate: int = 0
    """the skull speaker's sample rate; speech then arrives at it (0: any rate, the skull resamples)"""
    jaw_shape: dict = field(default_factory=dict)
    """the skull's [shape] (only keys that differ from the defaults): the host makes this skull's
    jaw tracks with it"""
    lines: Union[str, None] = None
    """the id of the line set the skull has cached ("" none yet); None (absent): the skull takes
    no lines, and the host sends none"""
    controls: bool = False
    """the skull reports its status (``status``) when the host asks, and takes the operator's
    ``command`` and ``say``; False (absent): the host sends it neither"""

    def validate(self) -> None:
        if self.lines and not _SET_ID.fullmatch(self.lines):
            raise _fail(E_BAD_FIELD, "field 'lines' must be a line set id: 1..64 letters, digits, '-' or '_'")
        problem = name_problem(self.skull)
        if problem is not None:
            raise _fail(E_BAD_FIELD, f"field 'skull' {problem}; set the skull's [link] name")
        if self.play_rate != 0 and not 8000 <= self.play_rate <= 192000:
            raise _fail(E_BAD_FIELD, f"field 'play_rate' must be 0 or 8000..192000 Hz, got {self.play_rate}")
        self.shape()

    def shape(self):
        """The jaw shape this skull asked for (the defaults where it said nothing)."""
        from .envelope import JawShape
        from .errors import ConfigError
        try:
            return JawShape.from_dict(self.jaw_shape, "field 'jaw_shape'")
        except ConfigError as exc:
            raise _fail(E_BAD_FIELD, str(exc)) from None


@dataclass(frozen=True)
class Listen(Message):
    """Button went down: a new turn starts (and any older turn is abandoned)."""
    type: ClassVar[str] = "listen"
    turn: int

    def validate(self) -> None:
        _check_turn(self.turn)


@dataclass(frozen=True)
class Image(Message):
    """A camera snapshot for ``turn``; one binary frame of ``bytes`` bytes follows."""
    type: ClassVar[str] = "image"
    has_payload: ClassVar[bool] = True
    turn: int
    format: str
    bytes: int

    def validate(self) -> None:
        _check_turn(self.turn)
        if self.format not in ("jpeg", "png"):
            raise _fail(E_BAD_FIELD, f"field 'format' must be 'jpeg' or 'png', got {self.format!r}")
        if not 0 < self.bytes <= MAX_BINARY_BYTES:
            raise _fail(E_TOO_LARGE if self.bytes > 0 else E_BAD_FIELD,
                        f"field 'bytes' must be 1..{MAX_BINARY_BYTES}, got {self.bytes}")


@dataclass(frozen=True)
class AudioStart(Message):
    """Opens the microphone stream of ``turn``; binary frames of raw PCM follow until ``stop``."""
    type: ClassVar[str] = "audio_start"
    turn: int
    rate: int
    """Hertz"""
    width: int
    """bytes per sample (2: signed 16-bit little-endian)"""
    channels: int

    def validate(self) -> None:
        _check_turn(self.turn)
        _check_pcm(self.rate, self.width, self.channels)


@dataclass(frozen=True)
class Stop(Message):
    """Button went up (or the recording hit its length limit)."""
    type: ClassVar[str] = "stop"
    turn: int
    reason: str = "released"

    def validate(self) -> None:
        _check_turn(self.turn)
        if self.reason not in ("released", "max_length"):
            raise _fail(E_BAD_FIELD, f"field 'reason' must be 'released' or 'max_length', got {self.reason!r}")


@dataclass(frozen=True)
class Played(Message):
    """The skull's own measurements of a turn, sent once its first reply sample reached the device."""
    type: ClassVar[str] = "played"
    turn: int
    first_audio_ms: float
    """button release -> first reply sample handed to the audio device, milliseconds"""

    def validate(self) -> None:
        _check_turn(self.turn)


SKULL_STATES = ("offline", "idle", "listening", "thinking", "speaking")
LED_PATTERNS = ("off", "on", "offline", "breathe")


def _check_dbfs(name: str, value) -> None:
    if not -120.0 <= value <= 0.0:
        raise _fail(E_BAD_FIELD, f"field '{name}' must be -120..0 dBFS, got {value}")


@dataclass(frozen=True)
class Status(Message):
    """What the skull is doing, for the operator's dashboard: sent when its state changes, and
    at most ``welcome.status_hz`` times a second while its jaw or levels move; only to a host
    whose welcome asked for it."""
    type: ClassVar[str] = "status"
    state: str
    """offline, idle, listening, thinking or speaking"""
    turn: int
    """the skull's current (or last) turn"""
    led: str = "off"
    """off, on, offline or breathe"""
    jaw: float = 0.0
    """jaw opening, 0 (closed) .. 1 (fully open)"""
    mic_dbfs: float = -120.0
    """the microphone's level, dB below full scale"""
    mic_vad_dbfs: float = -120.0
    """the level of what the voice detector called speech, dB below full scale"""
    speaker_dbfs: float = -120.0
    """what the speaker plays now, dB below full scale"""
    muted: bool = False
    """the operator muted the skull: it starts no turn and says nothing"""

    def validate(self) -> None:
        _check_turn(self.turn)
        if self.state not in SKULL_STATES:
            raise _fail(E_BAD_FIELD, f"field 'state' must be one of {', '.join(SKULL_STATES)}, got {self.state[:40]!r}")
        if self.led not in LED_PATTERNS:
            raise _fail(E_BAD_FIELD, f"field 'led' must be one of {', '.join(LED_PATTERNS)}, got {self.led[:40]!r}")
        if not 0.0 <= self.jaw <= 1.0:
            raise _fail(E_BAD_FIELD, f"field 'jaw' must be 0..1, got {self.jaw}")
        for name in ("mic_dbfs", "mic_vad_dbfs", "speaker_dbfs"):
            _check_dbfs(name, getattr(self, name))


# --- host -> skull -------------------------------------------------------------------------

@dataclass(frozen=True)
class Welcome(Message):
    type: ClassVar[str] = "welcome"
    protocol: int
    host: str
    session: str
    max_record_s: float
    """the host ends a recording after this many seconds of audio and answers it; the skull ends
    its own recordings no later"""
    status_hz: float = 0.0
    """a skull that offered ``hello.controls`` sends ``status`` at most this many times a second
    (and at each change of state); 0 (absent): it sends none"""

    def validate(self) -> None:
        if not 0.0 <= self.status_hz <= 50.0:
            raise _fail(E_BAD_FIELD, f"field 'status_hz' must be 0..50, got {self.status_hz}")


@dataclass(frozen=True)
class Ack(Message):
    """The host accepted ``listen`` (skull lights the LED) or ``stop`` (LED off)."""
    type: ClassVar[str] = "ack"
    turn: int
    of: str

    def validate(self) -> None:
        _check_turn(self.turn)
        if self.of not in ("listen", "stop"):
            raise _fail(E_BAD_FIELD, f"field 'of' must be 'listen' or 'stop', got {self.of!r}")


@dataclass(frozen=True)
class Heard(Message):
    """What the host understood of the question and saw in the snapshot."""
    type: ClassVar[str] = "heard"
    turn: int
    transcript: str
    caption: str


def _check_sound(msg, max_bytes: int, too_large: str, jaw_fits: bool = False) -> None:
    """The PCM fields and the jaw track of a ``speech`` or ``line`` message: ``bytes`` 1..``max_bytes``
    (over it: error code ``too_large``) of whole frames, ``jaw_fps`` 1..1000, ``jaw`` numbers 0..1,
    and with ``jaw_fits`` no more jaw frames than the sound lasts (plus a second)."""
    _check_pcm(msg.rate, msg.width, msg.channels)
    if not 0 < msg.bytes <= max_bytes:
        raise _fail(too_large if msg.bytes > 0 else E_BAD_FIELD, f"field 'bytes' must be 1..{max_bytes}, got {msg.bytes}")
    if msg.bytes % (msg.width * msg.channels):
        raise _fail(E_BAD_FIELD, f"field 'bytes' ({msg.bytes}) is not a whole number of frames")
    if not 1 <= msg.jaw_fps <= 1000:
        raise _fail(E_BAD_FIELD, f"field 'jaw_fps' must be 1..1000, got {msg.jaw_fps}")
    if jaw_fits:
        seconds = msg.bytes / (msg.width * msg.channels * msg.rate)
        if len(msg.jaw) > seconds * msg.jaw_fps + msg.jaw_fps:
            raise _fail(E_BAD_FIELD, f"field 'jaw' has {len(msg.jaw)} frames for {seconds:.2f} s of sound at "
                                     f"{msg.jaw_fps} frames/s")
    jaw = msg.jaw
    # the common case checked in C (a sentence carries 100 numbers a second): numbers only, none
    # outside 0..1, none NaN (it compares false with everything, so min and max can miss it;
    # the sum cannot); otherwise the slow walk names the first bad value
    if jaw and set(map(type, jaw)) <= {float, int} and 0.0 <= min(jaw) and max(jaw) <= 1.0 \
            and math.isfinite(math.fsum(jaw)):
        return
    for v in jaw:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v <= 1.0:
            raise _fail(E_BAD_FIELD, f"field 'jaw' must hold numbers 0..1, got {v!r}"[:120])


@dataclass(frozen=True)
class Speech(Message):
    """One spoken sentence of the reply; one binary frame of raw PCM (``bytes`` bytes) follows."""
    type: ClassVar[str] = "speech"
    has_payload: ClassVar[bool] = True
    turn: int
    seq: int
    """0, 1, 2... in playing order within the turn"""
    text: str
    rate: int
    """Hertz"""
    width: int
    channels: int
    bytes: int
    jaw_fps: int
    """frames per second of ``jaw``"""
    jaw: list = field(default_factory=list)
    """jaw opening per frame, 0 (closed) .. 1 (fully open), frame k at k/jaw_fps seconds"""

    def validate(self) -> None:
        _check_turn(self.turn)
        if self.seq < 0:
            raise _fail(E_BAD_FIELD, f"field 'seq' must be 0 or more, got {self.seq}")
        _check_sound(self, MAX_BINARY_BYTES, E_BAD_FIELD)


@dataclass(frozen=True)
class Line(Message):
    """One pre-synthesised line of the set ``set`` (line ``index`` of ``count``), for the skull
    to keep on disk and say when the host is gone; one binary frame of raw PCM (``bytes`` bytes)
    follows, as after ``speech``. The host sends a whole set, in order, after ``welcome``."""
    type: ClassVar[str] = "line"
    has_payload: ClassVar[bool] = True
    set: str
    """the set's id (the host's hash of its voice and texts)"""
    index: int
    """0 .. count-1"""
    count: int
    """lines in the set, 1..MAX_LINES"""
    kind: str
    """offline, closer, wait, attract or greeting"""
    text: str
    rate: int
    """Hertz"""
    width: int
    channels: int
    bytes: int
    jaw_fps: int
    """frames per second of ``jaw``"""
    jaw: list = field(default_factory=list)
    """jaw opening per frame, 0 (closed) .. 1 (fully open), frame k at k/jaw_fps seconds"""

    def validate(self) -> None:
        if not _SET_ID.fullmatch(self.set):
            raise _fail(E_BAD_FIELD, "field 'set' must be 1..64 letters, digits, '-' or '_'")
        if not 1 <= self.count <= MAX_LINES:
            raise _fail(E_BAD_FIELD, f"field 'count' must be 1..{MAX_LINES}, got {self.count}")
        if not 0 <= self.index < self.count:
            raise _fail(E_BAD_FIELD, f"field 'index' must be 0..count-1 ({self.count - 1}), got {self.index}")
        if self.kind not in LINE_KINDS:
            raise _fail(E_BAD_FIELD, f"field 'kind' must be one of {', '.join(LINE_KINDS)}, got {self.kind[:40]!r}")
        if len(self.text) > 1000:
            raise _fail(E_BAD_FIELD, f"field 'text' must be at most 1000 characters, got {len(self.text)}")
        _check_sound(self, MAX_LINE_BYTES, E_TOO_LARGE, jaw_fits=True)


COMMANDS = ("interrupt", "mute", "unmute", "attract")


@dataclass(frozen=True)
class Command(Message):
    """The operator's command, to a skull that offered ``hello.controls``: ``interrupt`` (stop
    what it says; a turn ends "interrupted"), ``mute`` (stop, and start no turn and say nothing
    until ``unmute``), ``unmute``, ``attract`` (say one of its attract lines, if no turn runs)."""
    type: ClassVar[str] = "command"
    action: str

    def validate(self) -> None:
        if self.action not in COMMANDS:
            raise _fail(E_BAD_FIELD, f"field 'action' must be one of {', '.join(COMMANDS)}, got {self.action[:40]!r}")


@dataclass(frozen=True)
class Say(Message):
    """A line the operator typed, synthesised by the host's voice like a reply's sentence, for the
    skull to say now (cutting whatever it says; a running turn ends "interrupted"); one binary
    frame of raw PCM (``bytes`` bytes) follows, as after ``line``. Only to a skull that offered
    ``hello.controls``."""
    type: ClassVar[str] = "say"
    has_payload: ClassVar[bool] = True
    text: str
    rate: int
    """Hertz"""
    width: int
    channels: int
    bytes: int
    jaw_fps: int
    """frames per second of ``jaw``"""
    jaw: list = field(default_factory=list)
    """jaw opening per frame, 0 (closed) .. 1 (fully open), frame k at k/jaw_fps seconds"""

    def validate(self) -> None:
        if len(self.text) > 1000:
            raise _fail(E_BAD_FIELD, f"field 'text' must be at most 1000 characters, got {len(self.text)}")
        _check_sound(self, MAX_LINE_BYTES, E_TOO_LARGE, jaw_fits=True)


@dataclass(frozen=True)
class Done(Message):
    """The host has sent every segment of the turn."""
    type: ClassVar[str] = "done"
    turn: int
    segments: int
    reply: str
    timings_ms: dict = field(default_factory=dict)
    """stage name -> milliseconds (stt, vision, reply, tts, ...)"""


@dataclass(frozen=True)
class Error(Message):
    """Something was wrong; the connection stays open. ``turn`` is set when it concerns a turn."""
    type: ClassVar[str] = "error"
    code: str
    message: str
    turn: Union[int, None] = None


CLIENT_MESSAGES = {m.type: m for m in (Hello, Listen, Image, AudioStart, Stop, Played, Status)}
HOST_MESSAGES = {m.type: m for m in (Welcome, Ack, Heard, Speech, Line, Say, Command, Done, Error)}

def encode(msg: Message, payload: bytes | None = None) -> list[Union[str, bytes]]:
    """Frames for ``msg``: its JSON text frame, then its binary payload when it has one."""
    msg.validate()
    text = json.dumps(msg.to_dict(), separators=(",", ":"), ensure_ascii=False)
    if not msg.has_payload:
        return [text]
    if payload is None or len(payload) != msg.bytes:
        raise ValueError(f"{msg.type} announces {msg.bytes} bytes but the payload has "
                         f"{None if payload is None else len(payload)}")
    return [text, payload]


def decode_text(text: str, registry: dict[str, type[Message]]) -> Message:
    """One text frame -> a validated message of a type in ``registry``. Whatever the frame holds
    (nesting past the decoder's depth, an integer of thousands of digits, a lone surrogate), the
    answer is a message or a ProtocolError, never another exception."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
        raise _fail(E_TOO_LARGE, f"text frame is over the {MAX_TEXT_BYTES}-byte limit")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(E_BAD_JSON, f"text frame is not JSON ({exc.msg} at character {exc.pos}); "
                                f"send one JSON object per text frame") from None
    except RecursionError:
        raise _fail(E_BAD_JSON, "text frame nests arrays or objects too deeply to read; "
                                "a message is one flat JSON object") from None
    except ValueError as exc:  # e.g. an integer past Python's 4300-digit limit
        raise _fail(E_BAD_JSON, f"text frame cannot be read as JSON ({str(exc)[:80]})") from None
    if not isinstance(obj, dict):
        raise _fail(E_BAD_MESSAGE, f"a message must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise _fail(E_MISSING_FIELD, "message has no 'type' field (a string)")
    cls = registry.get(kind)
    if cls is None:
        shown = kind[:40].encode("utf-8", "backslashreplace").decode()
        raise _fail(E_UNKNOWN_TYPE, f"unknown message type {shown!r}; expected one of {sorted(registry)}")
    try:
        # fields a newer peer adds are ignored; known ones must have the right type
        return build(cls, {k: v for k, v in obj.items() if k != "type"}, f"{kind} message", unknown="ignore")
    except ValidationError as exc:
        raise _fail(E_MISSING_FIELD if exc.rule_kind == "missing" else E_BAD_FIELD, str(exc)) from None


class FrameReader:
    """Turns the frames of one direction of a connection into messages.

    ``read_text`` returns a message; when that message announces a payload, the next binary
    frame is its payload and ``read_binary`` returns ``(message, payload)``. Between
    ``audio_start`` and ``stop`` binary frames are microphone audio: ``(AudioStart, chunk)``.
    Anything else raises ProtocolError; the reader stays usable afterwards. A text frame where an
    announced payload belongs raises :class:`PayloadMissing`, which carries that text frame's
    message so the caller can still handle it.
    """

    def __init__(self, registry: dict[str, type[Message]]):
        self.registry = registry
        self.awaiting: Message | None = None  # a message whose payload is the next binary frame
        self.stream: AudioStart | None = None  # open microphone stream

    def read_text(self, text: str) -> Message:
        if self.awaiting is not None:
            missing = self.awaiting
            self.awaiting = None
            msg = decode_text(text, self.registry)  # still decode, so nothing valid is lost
            self._track(msg)
            raise PayloadMissing(f"{missing.type} announced a {missing.bytes}-byte binary frame but a {msg.type} "
                                 f"text frame came first; the {missing.type} is dropped and the {msg.type} handled",
                                 msg)
        msg = decode_text(text, self.registry)
        self._track(msg)
        return msg

    def _track(self, msg: Message) -> None:
        if msg.has_payload:
            self.awaiting = msg
        elif isinstance(msg, AudioStart):
            self.stream = msg
        elif isinstance(msg, (Stop, Listen)):
            self.stream = None

    def read_binary(self, data: bytes) -> tuple[Message, bytes]:
        if len(data) > MAX_BINARY_BYTES:
            self.awaiting = None
            raise _fail(E_TOO_LARGE, f"binary frame of {len(data)} bytes is over the {MAX_BINARY_BYTES}-byte limit; "
                                     f"it was dropped")
        if self.awaiting is not None:
            msg, self.awaiting = self.awaiting, None
            if len(data) != msg.bytes:
                raise _fail(E_BAD_FIELD, f"{msg.type} announced {msg.bytes} bytes but its binary frame has {len(data)}")
            return msg, data
        if self.stream is not None:
            frame = self.stream.width * self.stream.channels
            if len(data) % frame:
                raise _fail(E_BAD_FIELD, f"audio chunk of {len(data)} bytes is not a whole number of "
                                         f"{frame}-byte frames")
            return self.stream, data
        raise _fail(E_UNEXPECTED_BINARY, "binary frame not expected here: send 'image', 'speech', 'line' "
                                         "or 'audio_start' first")
