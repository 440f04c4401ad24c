"""What starts and ends a turn. A trigger calls ``press()`` when the visitor starts talking and
``release()`` when they stop; the agent turns those into the machine's ``ButtonDown`` and
``ButtonUp``, so the talk machine is the same whatever started the turn.

* :class:`ButtonTrigger`: the push button, held while talking. Always there, in every mode; it
  is also what interrupts a reply.
* :class:`VoiceTrigger`: speech starts a turn, a pause ends it (Silero voice activity,
  :mod:`skull.core.vad`).
* :class:`WakeTrigger`: a wake word ("okay nabu") starts a turn, the pause after the question
  ends it (microWakeWord through pymicro-wakeword, plus the same voice activity).

The two hands-free triggers (``hands_free = True``) listen to the microphone. The agent keeps
the mic open while such a trigger is configured and gives every chunk to :meth:`HandsFree.hear`
with its position in the mic stream, except while the skull thinks or speaks and for
``[listen] echo_tail_s`` after its reply was heard: the skull never hears itself. A gap in the
positions restarts detection from scratch. A hands-free trigger calls ``press(onset)`` with the
stream position where the speech that fired it began, so the turn's audio starts there and
nothing the visitor said is lost (the agent keeps the last :data:`PREROLL_KEEP_S` of the stream
for this). Detection runs on the trigger's own thread: the mic's thread only queues.

:func:`make_triggers` builds the configured set; :func:`check_trigger` says, before anything
is opened, when the configured one cannot run on this machine.
"""
from __future__ import annotations

import abc
import logging
import math
import queue
import threading
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from .config import ListenConfig
from .core import vad
from .core.errors import ConfigError
from .ports import Button, Device

log = logging.getLogger("skull.triggers")

RATE = vad.RATE
"""Hertz: the hands-free triggers take the 16 kHz mic stream (both models are made for it)"""
PREROLL_S = 0.5
"""the turn's audio starts this long before the first window the voice detector called speech:
a soft first sound (an 'h', an 'f', a word said into noise) can come 0.1 s or more before the
detector is sure; the host's own voice detector trims what is silence"""
PREROLL_KEEP_S = 3.0
"""how much of the mic stream the agent keeps while idle, seconds: enough for a wake word
(~1 s) said before the detector fires (~0.2 s after it), with room for a busy machine"""
WAKE_ONSET_S = 1.5
"""when the voice detector did not mark the wake word as speech, the turn's audio starts this
long before the wake word was recognised"""
WAKE_AFTER_S = 0.2
"""speech this long after the wake word was recognised is the question, not the word's end"""
QUEUE_CHUNKS = 20
"""mic chunks a hands-free trigger may fall behind (2 s at the default 100 ms) before chunks
are dropped and detection restarts"""


@runtime_checkable
class Trigger(Protocol):
    """A trigger may also have ``hands_free = True``: then the agent gives it the mic stream
    (:meth:`HandsFree.hear`, ``speech_dbfs``, ``on_error``); without it, it is left alone."""
    name: str

    def start(self, press: Callable[..., None], release: Callable[[], None]) -> None:
        """Begin watching; call ``press``/``release`` from any thread. Hands-free triggers call
        ``press(onset)`` with the mic stream position where the speech began."""

    def close(self) -> None:
        """Stop watching. Idempotent."""


class ButtonTrigger(Device):
    """The push button (a Pi's GPIO, a board's pin or MockFactory): down = talking."""

    name = "button"
    hands_free = False

    def __init__(self, button: Button):
        self.button = button

    def start(self, press: Callable[..., None], release: Callable[[], None]) -> None:
        self.button.when_pressed = press
        self.button.when_released = release

    def close(self) -> None:
        self.button.when_pressed = None
        self.button.when_released = None


class _Windows:
    """Silero's probability per 32 ms window, noting each window's energy and probability for
    the speech meter and the wake word's question check (a Segmenter's ``probability``)."""

    def __init__(self):
        self.model = vad.SpeechProbability()
        self.seen: list[tuple[float, float]] = []
        """(sum of squares, probability) of the windows decided since the last take()"""

    def __call__(self, window: np.ndarray) -> float:
        p = self.model(window)
        self.seen.append((float(np.dot(window, window)), p))
        return p

    def take(self) -> list[tuple[float, float]]:
        seen, self.seen = self.seen, []
        return seen

    def reset(self) -> None:
        self.model.reset()
        self.seen = []


class HandsFree(Device):
    """Base of the triggers that listen to the microphone (see the module's docstring).

    ``speech_dbfs``: the level of the audio in the last chunk that the voice detector called
    speech, dB below full scale; -120 when it heard none (the second mic meter)."""

    name = "hands-free"
    hands_free = True

    def __init__(self, settings: ListenConfig, rate: int = RATE):
        if rate != RATE:
            raise ConfigError(f"the {self.name} trigger needs the microphone at {RATE} Hz, not {rate} Hz")
        self.settings, self.rate = settings, rate
        self.speech_dbfs = -120.0
        self.on_error: Callable[[BaseException], None] | None = None
        """a failure on the detection thread goes here (the agent logs it once and goes on)"""
        self.dropped = 0
        """chunks dropped because detection fell more than QUEUE_CHUNKS behind the mic"""
        self._windows = _Windows()
        self._seg: vad.Segmenter | None = None
        self._origin = 0  # stream position of the segmenter's first sample
        self._next: int | None = None  # stream position expected next
        self._press: Callable[..., None] = lambda onset=None: None
        self._release: Callable[[], None] = lambda: None
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, press: Callable[..., None], release: Callable[[], None]) -> None:
        self._press, self._release = press, release
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-trigger", daemon=True)
        self._thread.start()

    def hear(self, chunk: bytes, position: int) -> None:
        """One chunk of the mic stream (16-bit mono at ``rate``) whose first sample is at
        ``position``. Called from the mic's thread: it only queues."""
        try:
            self._queue.put_nowait((position, chunk))
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        self._thread = None

    # --- the detection thread -----------------------------------------------------------

    def _run(self) -> None:
        dropped = 0
        while not self._stop.is_set():
            try:
                position, chunk = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if self.dropped > dropped:
                log.warning("the %s trigger fell %d chunks behind the microphone and skipped %d; this machine "
                            "is too busy for it", self.name, QUEUE_CHUNKS, self.dropped - dropped)
                dropped = self.dropped
            try:
                if position != self._next:
                    self._restart(position)
                self._next = position + len(chunk) // 2
                self._detect(chunk, np.frombuffer(chunk, "<i2").astype(np.float32) / 32768.0)
            except Exception as exc:  # reported; detection starts afresh with the next chunk
                self._next = None
                if self.on_error is None:
                    raise
                self.on_error(exc)

    def _restart(self, position: int) -> None:
        """Forget everything heard: the stream goes on at ``position`` after a gap."""
        s = self.settings
        self._windows.reset()
        self._seg = vad.Segmenter(s.threshold, s.min_speech_s, s.end_silence_s, PREROLL_S, probability=self._windows)
        self._origin = position
        self.speech_dbfs = -120.0

    def _push(self, x: np.ndarray) -> tuple[list[vad.Segment], list[tuple[int, float]]]:
        """Voice activity on ``x``: the segments that started or ended, and (segmenter position,
        probability) of each window decided. Updates the speech meter."""
        first = self._seg.position
        segments = self._seg.push(x, RATE)
        seen = self._windows.take()
        speech = [(energy, p) for energy, p in seen if p >= self.settings.threshold]
        if speech:
            rms = math.sqrt(sum(e for e, _ in speech) / (len(speech) * vad.WINDOW))
            self.speech_dbfs = max(-120.0, 20.0 * math.log10(rms)) if rms > 0 else -120.0
        elif seen:
            self.speech_dbfs = -120.0
        return segments, [(first + k * vad.WINDOW, p) for k, (_, p) in enumerate(seen)]

    @abc.abstractmethod
    def _detect(self, chunk: bytes, x: np.ndarray) -> None:
        """One chunk (its bytes and as float samples) after the ones before it: press or release."""


class VoiceTrigger(HandsFree):
    """Speech starts a turn: ``press`` once the detector has heard ``min_speech_s`` of it (the
    onset is ``PREROLL_S`` before the first speech window); ``release`` after ``end_silence_s`` of
    silence. Claps, bangs and music are not speech to Silero (docs/listening.md)."""

    name = "voice"

    def _detect(self, chunk: bytes, x: np.ndarray) -> None:
        segments, _ = self._push(x)
        for s in segments:
            if s.end is None:
                self._press(self._origin + s.start)
            else:
                self._release()


class WakeTrigger(HandsFree):
    """The wake word starts a turn; the question after it ends the turn at its first pause of
    ``end_silence_s``, or ``wake_wait_s`` after the word when no question follows.

    The turn's audio starts where the voice detector heard the wake word begin: the host hears
    the wake word too (cutting it at the moment it is recognised, ~0.2 s after the word, would
    either leave its tail or clip a question said in one breath)."""

    name = "wake"

    def __init__(self, settings: ListenConfig, rate: int = RATE):
        super().__init__(settings, rate)
        self._model, self._features = load_wake_word(settings.wake_word)
        self._fed = 0  # segmenter position of the next sample the wake model gets
        self._woke_at: int | None = None
        self._asked = False
        self._last: vad.Segment | None = None  # the latest speech segment (end None while it goes on)

    def _restart(self, position: int) -> None:
        super()._restart(position)
        self._model.reset()
        self._features.reset()
        self._fed, self._woke_at, self._asked, self._last = 0, None, False, None

    def _detect(self, chunk: bytes, x: np.ndarray) -> None:
        segments, windows = self._push(x)
        ended = False
        for s in segments:
            self._last = s
            ended = ended or s.end is not None
        if self._woke_at is None:
            for features in self._features.process_streaming(chunk):
                self._fed += 160  # one feature per 10 ms
                if self._model.process_streaming(features):
                    self._woke(self._fed)
                    return
            self._fed = self._seg.received
            return
        woke, s = self._woke_at, self.settings
        self._asked = self._asked or any(at >= woke + WAKE_AFTER_S * RATE and p >= s.threshold for at, p in windows)
        if (self._asked and ended) or (not self._asked and self._seg.position - woke >= s.wake_wait_s * RATE):
            self._woke_at = None
            self._model.reset()
            self._features.reset()
            self._fed = self._seg.received
            self._release()

    def _woke(self, at: int) -> None:
        last = self._last
        recent = last is not None and (last.end is None or last.end >= at - int(0.5 * RATE))
        onset = last.start if recent and last.start >= at - 3 * RATE else at - int(WAKE_ONSET_S * RATE)
        self._woke_at, self._asked = at, False
        log.info("heard the wake word %r", self.settings.wake_word)
        self._press(self._origin + max(0, onset))

    def close(self) -> None:
        super().close()
        model, self._model = self._model, None
        if model is not None:
            model.close()


# --- building them ---------------------------------------------------------------------------

def load_wake_word(word: str):
    """The microWakeWord model of ``word`` and its feature front end (ConfigError, saying why,
    where they cannot load)."""
    why = ""
    try:
        from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model
        return MicroWakeWord.from_builtin(Model(word)), MicroWakeWordFeatures()
    except (ImportError, OSError, ValueError, RuntimeError) as exc:
        why = f"{type(exc).__name__}: {exc}"
    raise ConfigError(f"[listen] trigger = 'wake' cannot run on this machine: the wake word model {word!r} "
                      f"does not load ({why}); it needs pymicro-wakeword 2.5.0 from the 'wake' extra, whose "
                      f"wheel needs glibc 2.35 or later ('make bootstrap' installs it where it can); set "
                      f"trigger = 'voice' or 'button' in skull.toml [listen]")


def check_trigger(listen: ListenConfig) -> None:
    """Raise ConfigError, saying why and what to do, when ``listen.trigger`` cannot run here.
    Loads the models once (~0.2 s), so a skull refuses to start rather than fail at a show."""
    if listen.trigger == "button":
        return
    why = vad.available()
    if not why:
        try:
            vad.SpeechProbability()
        except Exception as exc:  # a wheel that imports but whose model cannot load
            why = f"the Silero model does not load ({type(exc).__name__}: {exc})"
    if why:
        raise ConfigError(f"[listen] trigger = {listen.trigger!r} cannot run on this machine: the voice detector "
                          f"is unavailable: {why}; set trigger = 'button' in skull.toml [listen]")
    if listen.trigger == "wake":
        model, _ = load_wake_word(listen.wake_word)
        model.close()


def make_triggers(listen: ListenConfig, button: Button, rate: int = RATE) -> list:
    """The button, and the hands-free trigger ``listen.trigger`` names (if any)."""
    triggers: list = [ButtonTrigger(button)]
    if listen.trigger == "voice":
        triggers.append(VoiceTrigger(listen, rate))
    elif listen.trigger == "wake":
        triggers.append(WakeTrigger(listen, rate))
    return triggers
