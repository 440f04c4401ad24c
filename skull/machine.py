"""The talk state machine, without I/O: typed events in, typed actions out.

    OFFLINE --Connected--> IDLE --ButtonDown--> LISTENING --ButtonUp / RecordLimit / AckStop--> THINKING
    THINKING --SegmentArrived--> SPEAKING --HostDone and Drained--> IDLE
    SPEAKING --ReplyTimeout after the last segment played, no done--> IDLE (a host that never finishes)
    THINKING/SPEAKING --ButtonDown--> LISTENING (interrupt: stop audio, close jaw, new turn)
    any --Disconnected--> OFFLINE (stop mic and audio, close jaw, LED blinks; a turn cut before any
        of its answer came says a cached "offline" line, so the visitor is not left in silence)
    any --Fault--> safe again (jaw closed, audio and mic stopped, LED off; the turn ends "failed")
    OFFLINE --ButtonDown--> OFFLINE saying a cached "offline" line (PlayLine), never two at once
    OFFLINE/IDLE --IdleLine(kind)--> saying that line (attract, greeting) unless one plays already
    IDLE saying --ButtonDown--> LISTENING (the line is cut, the turn starts)
    LISTENING/THINKING/SPEAKING --Interrupt--> IDLE (the operator: audio and mic stopped, jaw closed)
    any but OFFLINE --SayNow(kind)--> saying that line now (whatever played is cut, a turn ends)

Events and actions are small frozen dataclasses, so tests list them literally and the agent
dispatches them exhaustively (every action type in :data:`ACTIONS` has a handler, checked when
the agent module is imported). Events of an older turn (a late segment after an interrupt)
are dropped.
"""
from __future__ import annotations

import enum
import logging
import typing
from dataclasses import dataclass

from .segment import ReplySegment

log = logging.getLogger("skull.machine")


class State(enum.Enum):
    OFFLINE = "offline"
    IDLE = "idle"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"


class LedPattern(enum.Enum):
    OFF = "off"
    ON = "on"
    """listening: the host is taking the question"""
    OFFLINE = "offline"
    """slow blink: no host"""
    BREATHE = "breathe"
    """idle life: a slow breathing pulse (a slow blink where the LED cannot dim)"""


# --- events ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Connected:
    """The link to the host is up (welcome received)."""


@dataclass(frozen=True)
class Disconnected:
    """The link to the host went down."""


@dataclass(frozen=True)
class ButtonDown:
    """The visitor starts talking (the button went down, or another trigger fired)."""


@dataclass(frozen=True)
class ButtonUp:
    """The visitor stopped talking (the button went up)."""


@dataclass(frozen=True)
class RecordLimit:
    """The recording of ``turn`` reached [audio] max_record_s (a stuck button)."""
    turn: int


@dataclass(frozen=True)
class AckListen:
    turn: int


@dataclass(frozen=True)
class AckStop:
    turn: int


@dataclass(frozen=True)
class SegmentArrived:
    """One spoken sentence of the reply, decoded and ready to play."""
    turn: int
    segment: ReplySegment


@dataclass(frozen=True)
class HostDone:
    """The host has sent every segment of ``turn``."""
    turn: int


@dataclass(frozen=True)
class Drained:
    """Everything queued for the speaker has been played."""


@dataclass(frozen=True)
class ReplyTimeout:
    """The host took too long with ``turn``. ``after_segments`` None: no reply at all in the
    time allowed after ``stop``. ``after_segments`` N: the first N segments had all played and
    neither another segment nor ``done`` came within [link] done_timeout_s (a host that never
    finishes); the turn ends "no done" unless something arrived since."""
    turn: int
    after_segments: typing.Optional[int] = None


@dataclass(frozen=True)
class IdleLine:
    """Say a line of ``kind`` (attract, greeting, offline) from the skull's own lines, when no
    turn runs and no line is playing."""
    kind: str


@dataclass(frozen=True)
class Interrupt:
    """The operator stops the skull: a turn ends "interrupted", a line playing is cut."""


@dataclass(frozen=True)
class SayNow:
    """The operator has the skull say a line of ``kind`` now (``puppet``: the line the host sent
    with ``say``), cutting whatever it says; a running turn ends "interrupted"."""
    kind: str


@dataclass(frozen=True)
class Fault:
    """Something failed unexpectedly (a device, a message handler, the link task): leave the
    hardware safe and end the turn; the skull goes on with the next one."""
    what: str


Event = typing.Union[Connected, Disconnected, ButtonDown, ButtonUp, RecordLimit, AckListen, AckStop,
                     SegmentArrived, HostDone, Drained, ReplyTimeout, IdleLine, Interrupt, SayNow, Fault]
EVENTS: tuple[type, ...] = typing.get_args(Event)
_TURN_EVENTS = (RecordLimit, AckListen, AckStop, SegmentArrived, HostDone, ReplyTimeout)


# --- actions --------------------------------------------------------------------------------

@dataclass(frozen=True)
class MicStart:
    """Open the microphone for ``turn`` (it buffers until the host acknowledges)."""
    turn: int


@dataclass(frozen=True)
class SendListen:
    turn: int


@dataclass(frozen=True)
class Snapshot:
    """Grab a webcam picture for ``turn`` and send it."""
    turn: int


@dataclass(frozen=True)
class StreamAudio:
    """The host said yes: send the recording so far, then every new chunk."""
    turn: int


@dataclass(frozen=True)
class MicStop:
    turn: int


@dataclass(frozen=True)
class SendStop:
    turn: int
    reason: str
    """released or max_length"""


@dataclass(frozen=True)
class Play:
    turn: int
    segment: ReplySegment


@dataclass(frozen=True)
class PlayLine:
    """Say one of the skull's own lines of ``kind`` with its jaw track (the last resort for
    ``offline``: espeak-ng with a live-level jaw); ``Drained`` says it is over."""
    kind: str


@dataclass(frozen=True)
class StopPlayback:
    """Drop what is queued for the speaker and cut what plays (also stops the mic)."""


@dataclass(frozen=True)
class JawClose:
    """Shut the jaw now."""


@dataclass(frozen=True)
class Led:
    pattern: LedPattern


@dataclass(frozen=True)
class TurnEnd:
    turn: int
    reason: str
    """answered, no reply, timeout, no done, interrupted, disconnected or failed"""


Action = typing.Union[MicStart, SendListen, Snapshot, StreamAudio, MicStop, SendStop, Play, PlayLine, StopPlayback,
                      JawClose, Led, TurnEnd]
ACTIONS: tuple[type, ...] = typing.get_args(Action)


class TalkMachine:
    def __init__(self, first_turn: int = 1):
        self.state = State.OFFLINE
        self.turn = first_turn - 1
        self.done = False  # the host has sent every segment of the current turn
        self.drained = True  # everything received so far has been played
        self.segments = 0
        self.saying = False
        """one of the skull's own lines is playing (offline, attract, greeting)"""

    @property
    def waiting_for_done(self) -> bool:
        """Speaking, everything received has played, and the host has not said ``done``: only
        more speech or ``done`` can go on from here (or [link] done_timeout_s ends the turn)."""
        return self.state is State.SPEAKING and self.drained and not self.done

    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, _TURN_EVENTS) and event.turn != self.turn:
            log.debug("dropped %s of old turn %s (current %d)", type(event).__name__, event.turn, self.turn)
            return []
        before = self.state
        actions = self._handle(event)
        if self.state is not before:
            log.debug("%s --%s--> %s", before.name, type(event).__name__, self.state.name)
        return actions

    def _new_turn(self) -> list[Action]:
        self.turn += 1
        self.done, self.drained, self.segments = False, True, 0
        self.state = State.LISTENING
        t = self.turn
        # the mic opens at once and buffers until the host acknowledges: no first word lost
        return [MicStart(t), SendListen(t), Snapshot(t)]

    def _end_turn(self, reason: str) -> list[Action]:
        self.state = State.IDLE
        return [JawClose(), Led(LedPattern.OFF), TurnEnd(self.turn, reason)]

    def _segment(self, event: SegmentArrived) -> list[Action]:
        self.state = State.SPEAKING
        self.segments += 1
        self.drained = False
        return [Play(self.turn, event.segment)]

    def _say(self, kind: str) -> list[Action]:
        if self.saying:  # a press while a line plays does not stack lines
            return []
        self.saying = True
        return [PlayLine(kind)]

    def _stop_all(self) -> list[Action]:
        """The operator cuts in: the mic and audio stop, the jaw shuts, a running turn ends."""
        s, self.saying = self.state, False
        acts: list[Action] = [MicStop(self.turn)] if s is State.LISTENING else []
        acts += [StopPlayback(), JawClose()]
        if s in (State.LISTENING, State.THINKING, State.SPEAKING):
            acts += [Led(LedPattern.OFF), TurnEnd(self.turn, "interrupted")]
            self.state = State.IDLE
        return acts

    def _handle(self, event: Event) -> list[Action]:
        s = self.state
        in_turn = s in (State.LISTENING, State.THINKING, State.SPEAKING)
        if isinstance(event, Interrupt):
            return [] if s is State.OFFLINE or (s is State.IDLE and not self.saying) else self._stop_all()
        if isinstance(event, SayNow):
            if s is State.OFFLINE:
                return []
            acts = self._stop_all() if in_turn or self.saying else []
            self.saying = True
            return acts + [PlayLine(event.kind)]
        if s in (State.OFFLINE, State.IDLE):
            if isinstance(event, IdleLine):
                return self._say(event.kind)
            if isinstance(event, Drained):
                self.saying = False
                return []
        if isinstance(event, Disconnected):
            if s is State.OFFLINE:
                return []
            self.saying = False
            acts: list[Action] = [MicStop(self.turn)] if s is State.LISTENING else []
            acts += [StopPlayback(), JawClose(), Led(LedPattern.OFFLINE)]
            if in_turn:
                acts.append(TurnEnd(self.turn, "disconnected"))
            self.state = State.OFFLINE
            if s in (State.LISTENING, State.THINKING):  # nothing of the answer came: say why
                acts += self._say("offline")
            return acts
        if isinstance(event, Fault):
            self.saying = False
            acts = [MicStop(self.turn)] if s is State.LISTENING else []
            acts += [StopPlayback(), JawClose(), Led(LedPattern.OFFLINE if s is State.OFFLINE else LedPattern.OFF)]
            if in_turn:
                acts.append(TurnEnd(self.turn, "failed"))
                self.state = State.IDLE
            return acts
        if s is State.OFFLINE:
            if isinstance(event, Connected):
                self.state = State.IDLE
                # a line still playing (the apology) ends by itself, its jaw track with it
                return [Led(LedPattern.OFF)] if self.saying else [JawClose(), Led(LedPattern.OFF)]
            if isinstance(event, ButtonDown):  # no host: the skull answers with a line of its own
                return self._say("offline")
            return []
        if isinstance(event, ButtonDown):
            if s is State.IDLE:
                if self.saying:  # a visitor: the idle line is cut and the turn starts
                    self.saying = False
                    return [StopPlayback(), JawClose(), *self._new_turn()]
                return self._new_turn()
            if s in (State.THINKING, State.SPEAKING):  # interrupt
                old = self.turn
                return [StopPlayback(), JawClose(), Led(LedPattern.OFF), TurnEnd(old, "interrupted"),
                        *self._new_turn()]
            return []
        if s is State.LISTENING:
            if isinstance(event, AckListen):
                return [Led(LedPattern.ON), StreamAudio(self.turn)]
            if isinstance(event, (ButtonUp, RecordLimit)):
                self.state = State.THINKING
                reason = "released" if isinstance(event, ButtonUp) else "max_length"
                return [MicStop(self.turn), SendStop(self.turn, reason)]
            # the host ended the recording itself (its max_record_s came first): listen no more
            # and take its answer
            if isinstance(event, AckStop):
                self.state = State.THINKING
                return [MicStop(self.turn), Led(LedPattern.OFF)]
            if isinstance(event, SegmentArrived):
                return [MicStop(self.turn), *self._segment(event)]
            if isinstance(event, HostDone):
                self.done, self.state = True, State.THINKING
                return [MicStop(self.turn), *self._end_turn("no reply")]
            return []
        if isinstance(event, AckStop):
            return [Led(LedPattern.OFF)]
        if s is State.THINKING:
            if isinstance(event, SegmentArrived):
                return self._segment(event)
            if isinstance(event, HostDone):
                self.done = True
                return self._end_turn("no reply") if self.segments == 0 else []
            if isinstance(event, ReplyTimeout):
                return self._end_turn("timeout")
            return []
        if s is State.SPEAKING:
            if isinstance(event, SegmentArrived):
                return self._segment(event)
            if isinstance(event, ReplyTimeout):
                if event.after_segments == self.segments and self.waiting_for_done:
                    return self._end_turn("no done")
                return []  # a segment came since, or the reply is still playing
            if isinstance(event, HostDone):
                self.done = True
            elif isinstance(event, Drained):
                self.drained = True
            else:
                return []
            return self._end_turn("answered") if self.done and self.drained else []
        return []
