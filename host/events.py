"""The turn's events, and the subscribers the host always runs: timings and the per-turn log line.

Every turn of every skull publishes to one bus, ``Host.events`` (a :class:`skull.core.bus.Bus`).
Events are small frozen dataclasses; each names its ``skull`` and ``turn``. They are emitted on
the event loop, in the order things happen, so a subscriber must return quickly and must not
block (hand slow work to a task or a thread). A subscriber that raises is logged by the bus and
never reaches the turn. See docs/events.md.

A turn's events, in order: :class:`TurnStarted` (``listen``), :class:`StageStarted` /
:class:`StageFinished` for ``vision`` (from the snapshot on, while the visitor talks),
:class:`SpeechStarted` and :class:`Interim` while the visitor talks (segmented speech to text),
:class:`Stopped` (the button release), ``stt``, :class:`Hearing`, :class:`Transcript`, :class:`Caption`, ``reply``
with :class:`FirstPiece` and a :class:`Sentence` for each sentence written, ``tts`` per sentence
with a :class:`SegmentSent` for each segment that went out, then :class:`Done`, and
:class:`Played` when the skull reports its first reply sample. :class:`TurnError` and
:class:`Fallback` come when a stage fails. :class:`Snapshot`, :class:`QuestionAudio` and
:class:`ReplyAudio` carry the picture and the sound of the turn, for a dashboard or a recorder.

Beside the turns: :class:`SkullConnected`, :class:`SkullLeft`, :class:`SkullStatus` (a skull's
own ``status``: state, LED, jaw, levels) and :class:`Control` (the operator used a control).
"""
from __future__ import annotations

import abc
import asyncio
import logging
import time
from dataclasses import dataclass, field

from skull.core.bus import Bus

# --- events --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TurnEvent:
    """Base of every turn event."""
    skull: str
    """the skull's name (from its hello)"""
    turn: int
    """the turn id the skull chose"""


@dataclass(frozen=True)
class TurnStarted(TurnEvent):
    """The host accepted ``listen``: the button went down and a new turn began."""


@dataclass(frozen=True)
class Stopped(TurnEvent):
    """The button went up (``stop``); the ``at_ms`` of later events count from here."""
    audio_s: float
    """seconds of question audio kept"""


@dataclass(frozen=True)
class StageStarted(TurnEvent):
    """A stage began: ``stt``, ``vision``, ``reply``, or ``tts`` (once per sentence)."""
    stage: str


@dataclass(frozen=True)
class StageFinished(TurnEvent):
    """A stage ended, well or not."""
    stage: str
    ms: float
    """how long the stage took, milliseconds"""
    error: str = ""
    """empty when the stage succeeded; otherwise what went wrong"""

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class SpeechStarted(TurnEvent):
    """The voice activity model heard the visitor start a stretch of speech."""
    at_s: float
    """seconds into the question's audio"""


@dataclass(frozen=True)
class Interim(TurnEvent):
    """A stretch of speech was transcribed while the visitor went on talking (segmented STT)."""
    text: str
    """what this stretch said"""
    start_s: float
    end_s: float
    """where it lies in the question's audio, seconds"""
    ms: float
    """how long transcribing it took"""


@dataclass(frozen=True)
class Hearing(TurnEvent):
    """How the question was heard, at the end of ``stt``."""
    segments: int
    """stretches of speech found (0: no voice activity model, or none heard: the whole was transcribed)"""
    before_release: int
    """of those, transcribed while the visitor still held the button"""
    tail_audio_s: float
    """seconds of audio transcribed after the release"""
    audio_s: float
    """seconds of question audio"""


@dataclass(frozen=True)
class Transcript(TurnEvent):
    """What speech to text heard ('' when nothing was understood)."""
    text: str


@dataclass(frozen=True)
class Caption(TurnEvent):
    """What the reply writer is told about the snapshot ('' when nothing)."""
    text: str


@dataclass(frozen=True)
class FirstPiece(TurnEvent):
    """The first piece of the reply arrived from the reply writer."""
    at_ms: float
    """milliseconds after the button release"""


@dataclass(frozen=True)
class Sentence(TurnEvent):
    """A whole sentence of the reply, handed to the voice."""
    text: str
    index: int
    """0, 1, 2... within the reply"""
    at_ms: float
    """milliseconds after the button release"""


@dataclass(frozen=True)
class SegmentSent(TurnEvent):
    """A ``speech`` segment went out to the skull."""
    seq: int
    text: str
    """the words spoken, after the family filter"""
    audio_s: float
    """length of the segment's audio, seconds"""
    at_ms: float
    """milliseconds after the button release"""


@dataclass(frozen=True)
class Fallback(TurnEvent):
    """A stage failed and the skull speaks a fallback line instead."""
    stage: str
    """the stage that failed (``turn`` for an unexpected fault in the host)"""
    line: str


@dataclass(frozen=True)
class TurnError(TurnEvent):
    """A failure the turn reported (the skull gets an ``error`` message for it, except for
    ``vision``, whose failure only leaves the caption empty)."""
    stage: str
    """``stt``, ``vision``, ``reply``, ``tts``, or ``turn`` for an unexpected fault"""
    message: str


@dataclass(frozen=True)
class Done(TurnEvent):
    """``done`` went out: every segment of the turn has been sent."""
    reply: str
    """the words spoken, sentence after sentence"""
    segments: int
    timings_ms: dict = field(default_factory=dict)
    """exactly the ``timings_ms`` of the ``done`` message (see :class:`TurnTimings`)"""


@dataclass(frozen=True)
class Played(TurnEvent):
    """The skull's ``played``: its first reply sample reached the audio device."""
    first_audio_ms: float
    """button release -> first reply sample at the skull's speaker, milliseconds, as the skull measured it"""


@dataclass(frozen=True)
class Snapshot(TurnEvent):
    """The skull's webcam picture for the turn arrived (before it is captioned)."""
    format: str
    """jpeg or png"""
    image: bytes = field(repr=False)


@dataclass(frozen=True)
class QuestionAudio(TurnEvent):
    """The visitor's question as the host kept it, at the button release (after :class:`Stopped`)."""
    rate: int
    """Hertz"""
    channels: int
    pcm: bytes = field(repr=False)
    """signed 16-bit little-endian"""


@dataclass(frozen=True)
class ReplyAudio(TurnEvent):
    """The audio of a ``speech`` segment that went out (after its :class:`SegmentSent`)."""
    seq: int
    rate: int
    """Hertz"""
    pcm: bytes = field(repr=False)
    """mono, signed 16-bit little-endian"""


# --- the skulls themselves (``turn`` is the skull's current or last turn, 0 before any) --------


@dataclass(frozen=True)
class SkullConnected(TurnEvent):
    """A skull said hello and was welcomed."""
    peer: str
    """its address, ``host:port``"""
    controls: bool
    """it takes the operator's commands and reports its status (``hello.controls``)"""


@dataclass(frozen=True)
class SkullLeft(TurnEvent):
    """A skull's connection closed."""


@dataclass(frozen=True)
class SkullStatus(TurnEvent):
    """A skull's ``status``: what it is doing, its LED, jaw and levels (see docs/protocol.md)."""
    state: str
    led: str
    jaw: float
    """0 (closed) .. 1 (open)"""
    mic_dbfs: float
    mic_vad_dbfs: float
    speaker_dbfs: float
    muted: bool


@dataclass(frozen=True)
class Control(TurnEvent):
    """The operator used a control on a skull (the dashboard): ``interrupt``, ``mute``, ``unmute``,
    ``say``, ``attract`` or ``reset``."""
    action: str
    text: str = ""
    """what ``say`` had the skull say"""
    by: str = ""
    """where the operator was, ``host:port``"""


SKULL_EVENTS = (SkullConnected, SkullLeft, SkullStatus, Control)
"""events about a skull rather than one of its turns"""
TURN_EVENTS = (TurnStarted, Stopped, StageStarted, StageFinished, SpeechStarted, Interim, Hearing, Transcript, Caption,
               FirstPiece, Sentence, SegmentSent, Fallback, TurnError, Done, Played, Snapshot, QuestionAudio,
               ReplyAudio)
"""the events of a turn (subscribe with ``*TURN_EVENTS`` to get only these)"""


# --- subscribers -----------------------------------------------------------------------------


class Subscriber(abc.ABC):
    """A bus subscriber that can attach itself to a bus and detach again."""

    def __init__(self):
        self._unsubscribe = None

    def attach(self, bus: Bus) -> "Subscriber":
        self.detach()
        self._unsubscribe = bus.subscribe(self)
        return self

    def detach(self) -> None:
        """Stop receiving events (idempotent)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    @abc.abstractmethod
    def __call__(self, event: TurnEvent) -> None:
        """Take one event; called on the event loop, must return quickly."""


class TurnTimings(Subscriber):
    """Builds each turn's ``done.timings_ms`` from its events, all in milliseconds:

    * ``queued``: how long the turn waited for a place (``[server] max_turns``), when it waited;
    * ``stt``, ``vision``: how long those stages took (``stt``: after the release; with segmented
      speech to text only the tail since the visitor's last pause is left by then);
    * ``stt_tail_audio``: milliseconds of question audio transcribed after the release;
    * ``reply``: how long the reply took to write;
    * ``tts``: the total synthesis time of the turn's sentences (added up, fallback voice included);
    * ``llm_first_token``, ``llm_first_sentence``, ``tts_first_segment``: after the button release
      (from :class:`FirstPiece`, the first :class:`Sentence`, the first :class:`SegmentSent`);
    * ``total``: from the button release to :meth:`finish` (the moment ``done`` is sent).

    Keeps only the latest turn of each skull; a skull's next :class:`TurnStarted` forgets the one
    before, so events of an abandoned turn that arrive late change nothing.
    """

    STAGES = ("queued", "stt", "vision", "reply")

    def __init__(self):
        super().__init__()
        self._turns: dict[str, tuple[int, dict, list]] = {}
        """skull -> (turn id, timings, [monotonic seconds of the button release or None])"""

    def __call__(self, event: TurnEvent) -> None:
        if isinstance(event, TurnStarted):
            self._turns[event.skull] = (event.turn, {}, [None])
            return
        current = self._turns.get(event.skull)
        if current is None or current[0] != event.turn:
            return
        _, t, stopped = current
        if isinstance(event, Stopped):
            stopped[0] = time.monotonic()
        elif isinstance(event, StageFinished) and event.stage in self.STAGES:
            t[event.stage] = event.ms
        elif isinstance(event, StageFinished) and event.stage == "tts":
            t["tts"] = round(t.get("tts", 0.0) + event.ms, 1)
        elif isinstance(event, Hearing):
            t["stt_tail_audio"] = round(event.tail_audio_s * 1000.0, 1)
        elif isinstance(event, FirstPiece):
            t.setdefault("llm_first_token", event.at_ms)
        elif isinstance(event, Sentence):
            t.setdefault("llm_first_sentence", event.at_ms)
        elif isinstance(event, SegmentSent):
            t.setdefault("tts_first_segment", event.at_ms)

    def forget(self, skull: str) -> None:
        """Drop what is kept for ``skull`` (the host forgot its conversation)."""
        self._turns.pop(skull, None)

    def of(self, skull: str, turn: int) -> dict:
        """The timings collected so far for this turn (empty if it is not the skull's latest)."""
        current = self._turns.get(skull)
        return dict(current[1]) if current is not None and current[0] == turn else {}

    def finish(self, skull: str, turn: int) -> dict:
        """The turn's timings with ``total`` (release until now), as ``done`` carries them."""
        current = self._turns.get(skull)
        if current is None or current[0] != turn:
            return {}
        _, t, stopped = current
        if stopped[0] is not None:
            t["total"] = round((time.monotonic() - stopped[0]) * 1000, 1)
        return dict(t)


@dataclass
class _Line:
    turn: int
    heard: str = ""
    caption: str = ""
    done: Done | None = None
    first_audio_ms: float | None = None
    timer: asyncio.TimerHandle | None = None
    errors: list = field(default_factory=list)
    """``stage: message`` of each TurnError, in order"""


class TurnLog(Subscriber):
    """One log line per turn: ``<skull>: turn N stt=.. vision=.. ... first_audio=.. heard=..
    caption=.. reply=..``; with ``jsonl`` (a :class:`skull.core.jsonlog.JsonLines`) also one
    JSON object per turn there: time, skull, turn, transcript, caption, reply, outcome
    (``answered``, or ``no reply`` when nothing was spoken), timings_ms.

    The skull's ``played`` (first_audio) usually arrives before ``done``, sometimes after. The
    line is written when ``done`` and ``played`` have both arrived, or ``played_wait_s`` seconds
    after ``done`` without it, or when the skull's next turn starts, whichever comes first.
    """

    def __init__(self, logger: logging.Logger | None = None, played_wait_s: float = 2.0, jsonl=None):
        super().__init__()
        self.log = logger or logging.getLogger("host.turns")
        self.jsonl = jsonl
        self.played_wait_s = played_wait_s
        self._lines: dict[str, _Line] = {}
        """skull -> its latest turn, until its line is written"""

    def __call__(self, event: TurnEvent) -> None:
        if isinstance(event, TurnStarted):
            self._write(event.skull)  # the previous turn of this skull, whatever it still lacks
            self._lines[event.skull] = _Line(event.turn)
            return
        line = self._lines.get(event.skull)
        if line is None or line.turn != event.turn:
            return
        if isinstance(event, Transcript):
            line.heard = event.text
        elif isinstance(event, TurnError):
            line.errors.append(f"{event.stage}: {event.message}")
        elif isinstance(event, Caption):
            line.caption = event.text
        elif isinstance(event, Played):
            line.first_audio_ms = event.first_audio_ms
            if line.done is not None:
                self._write(event.skull)
        elif isinstance(event, Done):
            line.done = event
            if line.first_audio_ms is not None:
                self._write(event.skull)
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # published outside an event loop: nothing to wait with
                self._write(event.skull)
                return
            line.timer = loop.call_later(self.played_wait_s, self._write, event.skull, line)

    def _write(self, skull: str, line: _Line | None = None) -> None:
        """Log the skull's pending line (only ``line``, when given) if its turn is done."""
        current = self._lines.get(skull)
        if current is None or (line is not None and current is not line):
            return
        del self._lines[skull]
        if current.timer is not None:
            current.timer.cancel()
        if current.done is None:  # abandoned before done: nothing to report
            return
        t = dict(current.done.timings_ms)
        if current.first_audio_ms is not None:
            t["first_audio"] = current.first_audio_ms
        self.log.info("%s: turn %d %s heard=%r caption=%r reply=%r%s", skull, current.turn,
                      " ".join(f"{k}={v:.0f}" for k, v in t.items()), current.heard, current.caption,
                      current.done.reply, f" errors={current.errors!r}" if current.errors else "")
        if self.jsonl is not None:  # a failed write is logged by it, once; the turn never notices
            self.jsonl.write({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "skull": skull,
                              "turn": current.turn, "transcript": current.heard, "caption": current.caption,
                              "reply": current.done.reply,
                              "outcome": "answered" if current.done.segments else "no reply", "timings_ms": t})

    def detach(self) -> None:
        """Stop logging turns; a turn already done but still waiting for ``played`` is written now."""
        super().detach()
        self.close()

    def close(self) -> None:
        """Write every pending line now (the host is stopping)."""
        for skull in list(self._lines):
            self._write(skull)
