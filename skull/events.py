"""What the skull publishes on its bus (``Agent.events``) for views: the terminal view of
``skull demo``, a dashboard, a log, the turn recorder. Emitted on the event loop's thread.

* :class:`StateChanged`: the talk machine moved (offline, idle, listening, thinking, speaking);
* :class:`LedChanged`: the LED pattern;
* :class:`Heard`: what the host understood and saw;
* :class:`JawMoved` and :class:`Levels`: sampled at most 10 times a second,
  only when they changed;
* :class:`Faulted`: a failure the skull survived (what failed, the error);
* :class:`TurnEnded`: a turn is over, with its record (transcript, reply, timings, audio);
* :class:`ButtonStuck` / :class:`ButtonFreed`: the button was held down for ``[button] stuck_s``
  and is ignored until it comes up / it came up;
* :class:`RecordingPaused` / :class:`RecordingResumed`: the record folder's disk has less than
  ``[record] min_free_mb`` free, turns are not recorded (still answered) / there is room again;
* :class:`LineSaid`: the skull said one of its own lines (offline, attract, greeting...);
* :class:`LinesCached`: a set of lines is ready to say (sent by the host and written to
  disk, or loaded from disk at start);
* :class:`Muted`: the operator muted or unmuted the skull from the host's dashboard.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass

from .machine import LedPattern, State
from .record import TurnRecord


@dataclass(frozen=True)
class StateChanged:
    state: State
    turn: int


@dataclass(frozen=True)
class LedChanged:
    pattern: LedPattern


@dataclass(frozen=True)
class Heard:
    turn: int
    transcript: str
    caption: str


@dataclass(frozen=True)
class JawMoved:
    opening: float
    """0 (closed) .. 1 (open); 0 when detached"""
    pulse_us: float | None
    """the pulse width sent, microseconds; None when detached (no pulses)"""


@dataclass(frozen=True)
class Levels:
    """Two mic meters and the speaker's: the mic before and after voice activity detection."""
    mic_dbfs: float
    """the microphone's last chunk, dB below full scale (-120 when silent or not recording; a
    hands-free skull records all the time, so this is the room while it waits)"""
    speaker_dbfs: float
    """what the speaker is playing now, dB below full scale"""
    mic_vad_dbfs: float = -120.0
    """the level of the audio in the mic's last chunk that the voice detector called speech, dB
    below full scale; -120 when it heard none, when no voice detector runs ([listen] trigger =
    "button") and while the skull is deaf to itself (thinking, speaking, and the echo tail)"""


@dataclass(frozen=True)
class Faulted:
    what: str
    error: str


@dataclass(frozen=True, eq=False)
class TurnEnded:
    record: TurnRecord


@dataclass(frozen=True)
class ButtonStuck:
    """The button has been down for ``[button] stuck_s``: reported once, ignored until released."""
    held_s: float
    """how long it has been down, seconds"""


@dataclass(frozen=True)
class ButtonFreed:
    """A stuck button came up: it starts turns again."""
    held_s: float
    """how long it was down, seconds"""


@dataclass(frozen=True)
class RecordingPaused:
    """The record folder's disk is below ``[record] min_free_mb``: turns are answered but not
    recorded (nothing already recorded is deleted)."""
    folder: str
    free_mb: float
    min_free_mb: float


@dataclass(frozen=True)
class RecordingResumed:
    """The record folder's disk has ``[record] min_free_mb`` free again: turns are recorded."""
    folder: str
    free_mb: float


@dataclass(frozen=True)
class LineSaid:
    kind: str
    """offline, closer, wait, attract or greeting"""
    text: str
    source: str
    """cache: a line the host synthesised; espeak: the skull's own espeak-ng (no cached line);
    host: the operator's typed line (kind ``puppet``), synthesised by the host just now"""


@dataclass(frozen=True)
class LinesCached:
    set_id: str
    kinds: dict
    """kind -> how many lines of it"""
    source: str
    """host: just received and written to disk; disk: loaded at start"""


@dataclass(frozen=True)
class Muted:
    """The operator muted the skull (``muted`` True: presses start no turn, no attract or greeting
    line is said) or unmuted it."""
    muted: bool


SkullEvent = typing.Union[StateChanged, LedChanged, Heard, JawMoved, Levels, Faulted, TurnEnded, ButtonStuck,
                          ButtonFreed, RecordingPaused, RecordingResumed, LineSaid, LinesCached, Muted]
