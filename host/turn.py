"""One turn on the host: collect the question, hear it, look, reply, speak.

The caption starts as soon as the snapshot arrives (at button-down), so it runs while the
visitor is still talking. After ``stop``: speech to text, then the reply. With streaming on
(the default) the reply is read piece by piece as the language model writes it; each sentence
goes to the voice the moment it is complete, and each synthesised sentence goes to the skull at
once as a ``speech`` segment while the next is synthesised, so the skull starts talking after
the first sentence, not the whole answer. A failed or slow stage never leaves the skull mute:
it is retried once when that is safe, and otherwise the skull speaks a fallback line (in the
espeak-ng voice if the configured voice is what failed); the cause is logged with the stage.

Every blocking backend call (the streamed reply's reader included) runs on the host's bounded
thread pool, never on the event loop. The turn publishes what happens as events
(:mod:`host.events`) on the host's bus; the timings, the log line and any dashboard subscribe.

Timings (``done.timings_ms``, built by :class:`host.events.TurnTimings`): ``stt`` and
``vision`` are how long those stages took; ``llm_first_token``, ``llm_first_sentence``,
``tts_first_segment`` and ``total`` are milliseconds after ``stop`` (the button release);
``reply`` is how long the reply took to write. The skull adds ``first_audio``: release to the
first reply sample at its speaker.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, field
from typing import Awaitable, Callable, Iterator

import numpy as np
from websockets.exceptions import ConnectionClosed

from skull.core import protocol as p
from skull.core.bus import Bus
from skull.core.envelope import JawShape, jaw_track
from skull.core.errors import BackendError
from skull.core.wav import pcm16_to_audio, resample, to_mono_rate, to_pcm16

from . import events as ev
from .backends import Captioner, ReplyContext, ReplyWriter, Speech, SpeechToText, TextToSpeech
from .backends.vision import reduce_snapshot
from .config import HostConfig
from .filter import FamilyFilter
from .listen import Listener, ListenSettings, take_model
from .pool import EnginePool
from .sentences import SentenceSplitter
from .text import clip_words, speakable

log = logging.getLogger("host.turn")


def vad_missing() -> str:
    """Why the voice activity model cannot run here ('' when it can); said once in the log."""
    global _VAD_WHY
    if _VAD_WHY is None:
        from skull.core.vad import available
        _VAD_WHY = available()
        if _VAD_WHY:
            log.warning("%s; questions are transcribed whole, silence and all", _VAD_WHY)
    return _VAD_WHY


_VAD_WHY: str | None = None


@functools.cache
def vad_engine() -> str:
    """The engine the voice activity model runs on here (skull.core.vad.ENGINES; '' for none)."""
    from skull.core.vad import engine_here
    return engine_here()

Send = Callable[[p.Message, "bytes | None"], Awaitable[None]]
STT_RATE = 16000
SEGMENT_MAX_S = 30.0
"""seconds: a sentence whose audio is longer goes out as several ``speech`` segments (also
when one would not fit a binary frame: ~47 s at 44.1 kHz)"""
SEGMENT_FILL = 0.98
"""the share of that limit a segment fills at most, so resampling never pushes it over"""
REPLY_MAX_S = 150.0
"""seconds: the most a reply is spoken; past it the answer ends at a pause and the rest is logged
as not spoken (a visitor is long gone, and the next one waits)"""
CUT_SEARCH_S = 3
"""seconds before the cap searched for a pause to end a too-long reply at"""
SENTENCE_MAX_CHARS = 4000
"""characters of one sentence handed to a voice (about three minutes of speech); the rest of a
longer one is not spoken"""


@dataclass
class Backends:
    stt: SpeechToText
    vision: Captioner | None
    """None: no caption (the reply model looks at the snapshot itself, or no vision at all)"""
    reply: ReplyWriter
    tts: TextToSpeech
    fallback_voice: TextToSpeech | None = None
    """speaks the fallback line when the configured voice fails (espeak-ng, no server)"""
    pool: "EnginePool | None" = None
    """the worker processes the embedded engines among these run in (host.pool); closed by
    whoever built them"""


@dataclass
class _StageRun:
    error: str = ""
    """set when the stage failed but the turn carries on (a fallback follows)"""


@dataclass
class Turn:
    turn: int
    backends: Backends
    config: HostConfig
    _: KW_ONLY
    skull: str
    """the skull's name: every event of this turn carries it"""
    events: Bus
    """the host's turn event bus"""
    timings: ev.TurnTimings
    """the subscriber that builds ``done.timings_ms``"""
    executor: Executor
    """the host's bounded thread pool for blocking backend calls"""
    history: tuple = ()
    play_rate: int = 0
    """the skull speaker's rate; speech is resampled to it (0: send the voice's own rate)"""
    filter: FamilyFilter = field(default_factory=FamilyFilter)
    shape: JawShape | None = None
    """this skull's jaw shape (None: the host's [shape])"""
    audio: bytearray = field(default_factory=bytearray)
    stream: p.AudioStart | None = None
    image: bytes | None = None
    caption_task: asyncio.Task | None = None
    transcript: str = ""
    caption: str = ""
    vision_failure: BackendError | None = None
    """why the snapshot was refused or not captioned (sent as ``stage_failed`` after ``stop``)"""
    reply: str = ""
    segments: int = 0
    """speech segments sent to the skull"""
    notices: int = 0
    """of which "one moment" lines spoken while the turn waited for a place (not the reply)"""
    spoken: list = field(default_factory=list)
    """the text of each segment sent, in order"""
    t_stop: float = 0.0
    """monotonic seconds of the button release"""
    send: Send | None = None
    """how this turn's messages reach the skull (given to :meth:`run`)"""
    listener: Listener | None = None
    """voice activity on the question as it arrives (None: not started, or no model here)"""
    _sentences: int = field(default=0, init=False, repr=False)
    _spoken_s: float = field(default=0.0, init=False, repr=False)
    """seconds of speech sent to the skull in this turn"""
    _unsent: str = field(default="", init=False, repr=False)
    """why a segment could not be sent ('' while every one went out): the turn then ends"""
    _cancels: list = field(default_factory=list, init=False, repr=False)
    _heard: dict = field(default_factory=dict, init=False, repr=False)
    _abandoned: bool = field(default=False, init=False, repr=False)
    """segment start -> task transcribing it while the visitor talks"""

    # --- collecting the question ---------------------------------------------------------

    def on_image(self, image: bytes) -> None:
        """Start looking at the snapshot at once, concurrently with the recording: its size is
        checked and it is reduced (:func:`reduce_snapshot`), then captioned; a reply model that
        looks itself ([vision] backend = 'reply') gets the reduced picture."""
        self.image = None
        if self.caption_task is not None:  # a second snapshot in one turn replaces the first
            self.caption_task.cancel()
        if self.backends.vision is not None or self.config.vision.backend == "reply":
            self.caption_task = asyncio.create_task(self._caption(image), name=f"caption-{self.turn}")

    async def _caption(self, image: bytes) -> str:
        """The caption, or the vision fallback (usually empty) when the snapshot is refused or
        captioning fails; the failure is kept in ``vision_failure`` for a ``stage_failed``."""
        max_pixels, vision = int(self.config.server.max_image_mp * 1e6), self.backends.vision
        deadline = time.monotonic() + self.config.vision.timeout_s

        def look() -> tuple[bytes, str]:  # one call, so reducing and captioning share the stage's budget
            small = reduce_snapshot(image, max_pixels, deadline=deadline)
            return small, vision.caption(small) if vision is not None else ""
        try:
            with self._stage("vision"):
                self.image, caption = await self.call("vision", look)
                return caption
        except BackendError as exc:
            log.error("%s: turn %d: %s", self.skull, self.turn, exc)
            self._emit(ev.TurnError, stage="vision", message=str(exc))
            self.vision_failure = exc
            return self.config.fallback.vision

    def on_audio(self, stream: p.AudioStart, chunk: bytes) -> bool:
        """Keep a microphone chunk; False when the turn is over its length limit (chunk dropped)."""
        fmt = (stream.rate, stream.width, stream.channels)
        if self.audio and self.stream is not None and fmt != (self.stream.rate, self.stream.width, self.stream.channels):
            raise p.ProtocolError(p.E_BAD_STATE, "audio_start changed the format in the middle of a turn")
        self.stream = stream
        limit = int(self.config.server.max_record_s * stream.rate) * stream.width * stream.channels
        if len(self.audio) + len(chunk) > limit:
            return False
        if self.listener is None and not self.audio:
            self.listener = self._listen()
        self.audio.extend(chunk)
        if self.listener is not None and stream.width == 2:
            self.listener.feed(chunk, stream.rate, stream.channels)
        return True

    def _listen(self) -> Listener | None:
        """Voice activity for this question, where the model can run (it is in the 'ears' extra)."""
        if vad_missing():
            return None
        stt = self.config.stt
        most = stt.listen_at_once(self.config.server.max_turns, vad_engine())
        model = take_model(most)
        if model is None:
            log.info("%s: turn %d is transcribed whole: %d questions are listened to already ([stt] "
                     "voice_activity_max)", self.skull, self.turn, most)
            return None
        return Listener(ListenSettings(pause_s=stt.pause_s), asyncio.get_running_loop(),
                        on_segment=self._segment_ended, on_speech=self._speech_started, model=model)

    def _speech_started(self, seg) -> None:
        self._emit(ev.SpeechStarted, at_s=round(seg.start_s, 3))

    def _segment_ended(self, seg, samples: np.ndarray) -> None:
        """A stretch of speech ended while the visitor talks: transcribe it now (segmented)."""
        if not self.config.stt.segmented or self.t_stop or self._abandoned:
            return
        previous = self._heard[max(self._heard)] if self._heard else None
        self._heard[seg.start] = asyncio.create_task(self._interim(seg, samples, previous),
                                                     name=f"stt-segment-{self.turn}")

    async def _interim(self, seg, samples: np.ndarray, previous: asyncio.Task | None) -> str | None:
        """The words of one stretch; None when it failed (it is heard again after the release)."""
        t0 = time.monotonic()
        try:
            text = await self.call("stt", self.backends.stt.transcribe, samples, STT_RATE)
        except BackendError as exc:
            log.warning("%s: turn %d: a stretch of the question: %s; it is heard again after the release",
                        self.skull, self.turn, exc)
            return None
        if previous is not None:  # interim text comes out in the order it was said
            await asyncio.gather(previous, return_exceptions=True)
        self._emit(ev.Interim, text=text, start_s=round(seg.start_s, 3), end_s=round(seg.end_s, 3), ms=_ms(t0))
        return text

    def cancel(self) -> None:
        """Abandon the turn's background work: the caption and any reply still being read."""
        for event in self._cancels:
            event.set()
        if self.caption_task is not None:
            self.caption_task.cancel()
        self._abandoned = True
        for task in self._heard.values():
            task.cancel()
        if self.listener is not None:
            self.listener.stop()

    # --- calling backends ------------------------------------------------------------------

    async def call(self, stage: str, fn, *args):
        """Run a blocking backend call on the host's thread pool within ``[stage] timeout_s``,
        asking once more when the failure is one that asking again can cure. Whatever the
        backend raises comes out as a BackendError naming the stage."""
        cfg = getattr(self.config, stage)
        deadline = time.monotonic() + cfg.timeout_s
        attempt = 0
        while True:
            try:
                return await self._blocking(stage, max(0.01, deadline - time.monotonic()), fn, *args)
            except asyncio.TimeoutError:
                raise BackendError(stage, f"no answer within {cfg.timeout_s:g} s") from None
            except BackendError as exc:
                if not exc.retryable or attempt >= cfg.retries or deadline - time.monotonic() < 0.05:
                    raise
                attempt += 1
                log.warning("%s: turn %d: %s; asking again", self.skull, self.turn, exc)

    async def _blocking(self, stage: str, timeout_s: float, fn, *args):
        loop = asyncio.get_running_loop()
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancel that arrives
            # as the call finishes (CPython gh-86296), and an abandoned turn would go on speaking
            async with asyncio.timeout(timeout_s):
                return await loop.run_in_executor(self.executor, fn, *args)
        except (asyncio.TimeoutError, BackendError):
            raise
        except Exception as exc:  # a backend library failing in any way is a stage failure
            raise BackendError(stage, f"{type(exc).__name__}: {exc}") from exc

    # --- events ------------------------------------------------------------------------------

    def _emit(self, kind: type, **fields) -> None:
        self.events.emit(kind(self.skull, self.turn, **fields))

    def _since_stop_ms(self) -> float:
        """Milliseconds since the button release."""
        return _ms(self.t_stop)

    @contextmanager
    def _stage(self, stage: str) -> Iterator[_StageRun]:
        """StageStarted now, StageFinished (with how long, and what failed) at the end."""
        run = _StageRun()
        self._emit(ev.StageStarted, stage=stage)
        t0 = time.monotonic()
        try:
            yield run
        except asyncio.CancelledError:
            run.error = "abandoned"
            raise
        except Exception as exc:
            run.error = str(exc) or type(exc).__name__
            raise
        finally:
            self._emit(ev.StageFinished, stage=stage, ms=_ms(t0), error=run.error)

    async def _failed(self, exc: BackendError) -> None:
        log.error("%s: turn %d: %s", self.skull, self.turn, exc)
        self._emit(ev.TurnError, stage=exc.stage, message=str(exc))
        await self.send(p.Error(p.E_STAGE_FAILED, str(exc), self.turn), None)

    # --- answering ------------------------------------------------------------------------

    def stopped(self) -> None:
        """The recording is over (``stop`` came, or the host ended it at its limit): the clock of
        every after-the-release timing starts here, before any wait for a place to answer it."""
        if self.t_stop:
            return
        self.t_stop = time.monotonic()
        bytes_per_s = self.stream.width * self.stream.channels * self.stream.rate if self.stream else 0
        self._emit(ev.Stopped, audio_s=round(len(self.audio) / bytes_per_s, 3) if bytes_per_s else 0.0)
        if self.stream is not None and self.audio:
            self._emit(ev.QuestionAudio, rate=self.stream.rate, channels=self.stream.channels, pcm=bytes(self.audio))

    async def run(self, send: Send) -> None:
        """Everything after ``stop``: ends with ``done`` whatever a stage does. An unexpected
        fault (a bug, not a failing backend) is raised; the caller logs it and calls
        :meth:`recover`, which still ends the turn with speech and ``done``."""
        self.send = send
        self.stopped()
        voice = Voice(self)
        try:
            try:
                self.transcript = await self._hear()
            except BackendError as exc:
                await self._failed(exc)
                self._fallback(voice, "stt", self.config.fallback.stt)
                return await self._finish(voice)
            self._emit(ev.Transcript, text=self.transcript)
            if self.caption_task is not None:
                self.caption = await self.caption_task
            if self.vision_failure is not None:  # the turn goes on without the picture; the skull is told
                await send(p.Error(p.E_STAGE_FAILED, str(self.vision_failure), self.turn), None)
            self._emit(ev.Caption, text=self.caption)
            await send(p.Heard(self.turn, self.transcript, self.caption), None)
            ctx = ReplyContext(self.transcript, self.caption, self.history,
                               self.image if self.config.vision.backend == "reply" else None)
            with self._stage("reply") as stage:
                write = self._reply_streaming if self.config.streaming else self._reply_whole
                failure = await write(voice, ctx)
                stage.error = str(failure) if failure else ""
            await self._finish(voice)
        finally:
            self.cancel()
            voice.cancel()

    async def _hear(self) -> str:
        """The question's words. With voice activity: only the speech is transcribed; segmented,
        the stretches that ended before the release are already done or under way, and only the
        tail is left. Without it (or when it heard no speech at all): the whole recording."""
        if not self.audio or self.stream is None:
            return ""
        with self._stage("stt"):
            segments = await self.listener.finish() if self.listener is not None else []
            if not segments:
                audio = pcm16_to_audio(bytes(self.audio), self.stream.rate, self.stream.channels)
                samples = to_mono_rate(audio, STT_RATE)
                self._emit(ev.Hearing, segments=0, before_release=0, tail_audio_s=round(len(samples) / STT_RATE, 3),
                           audio_s=round(len(samples) / STT_RATE, 3))
                return await self.call("stt", self.backends.stt.transcribe, samples, STT_RATE)
            total_s = round(self.listener.segmenter.received / STT_RATE, 3)
            if not self.config.stt.segmented:  # the speech, without the silence around it
                speech = self.listener.samples(segments[0].start, segments[-1].end)
                self._emit(ev.Hearing, segments=len(segments), before_release=0,
                           tail_audio_s=round(len(speech) / STT_RATE, 3), audio_s=total_s)
                return await self.call("stt", self.backends.stt.transcribe, speech, STT_RATE)
            texts, tail = [], 0
            for seg in segments:
                task = self._heard.get(seg.start)
                text = await task if task is not None else None
                if text is None:  # the tail, or a stretch whose transcription failed
                    samples = self.listener.samples(seg.start, seg.end)
                    tail += len(samples)
                    text = await self.call("stt", self.backends.stt.transcribe, samples, STT_RATE)
                texts.append(text)
            self._emit(ev.Hearing, segments=len(segments), before_release=len(self._heard),
                       tail_audio_s=round(tail / STT_RATE, 3), audio_s=total_s)
            return " ".join(" ".join(t for t in texts if t).split())

    def _fallback(self, voice: "Voice", stage: str, line: str) -> None:
        self._emit(ev.Fallback, stage=stage, line=line)
        voice.say(line)

    def _sentence(self, voice: "Voice", sentence: str) -> None:
        self._emit(ev.Sentence, text=sentence, index=self._sentences, at_ms=self._since_stop_ms())
        self._sentences += 1
        voice.say(sentence)

    async def _reply_whole(self, voice: "Voice", ctx: ReplyContext) -> BackendError | None:
        """The sequential way: the whole reply, then the whole of it spoken in one piece."""
        try:
            text = (await self.call("reply", self.backends.reply.reply, ctx)).strip()
            if not text:
                raise BackendError("reply", "the reply was empty")
        except BackendError as exc:
            await self._failed(exc)
            self._fallback(voice, "reply", self.config.fallback.reply)
            return exc
        self._emit(ev.FirstPiece, at_ms=self._since_stop_ms())
        self._sentence(voice, text)
        return None

    async def _reply_streaming(self, voice: "Voice", ctx: ReplyContext) -> BackendError | None:
        """Sentences to the voice as the reply is written; the failure, if any (already reported)."""
        cfg = self.config.reply
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            pieces: asyncio.Queue = asyncio.Queue()
            cancel = threading.Event()
            self._cancels.append(cancel)
            splitter, got = SentenceSplitter(), False
            try:
                loop.run_in_executor(self.executor, _pump, self.backends.reply, ctx, cancel, loop, pieces)
                # one deadline moved on at every piece (not a wait_for per piece: a task each,
                # for every token of every turn)
                async with asyncio.timeout(cfg.timeout_s) as deadline:
                    while True:
                        kind, value = await pieces.get()
                        deadline.reschedule(loop.time() + cfg.timeout_s)
                        if kind == "error":
                            raise value
                        if kind == "end":
                            for sentence in splitter.flush():
                                self._sentence(voice, sentence)
                            break
                        if not got:
                            got = True
                            self._emit(ev.FirstPiece, at_ms=self._since_stop_ms())
                        for sentence in splitter.feed(value):
                            self._sentence(voice, sentence)
                if not self._sentences:
                    raise BackendError("reply", "the reply was empty")
                return None
            except (asyncio.TimeoutError, Exception) as exc:
                cancel.set()
                if isinstance(exc, asyncio.TimeoutError):
                    exc = BackendError("reply", f"no answer within {cfg.timeout_s:g} s"
                                       + (" since the last piece" if got else ""))
                elif not isinstance(exc, BackendError):
                    exc = BackendError("reply", f"{type(exc).__name__}: {exc}")
                if not got and exc.retryable and attempt < cfg.retries:
                    attempt += 1
                    log.warning("%s: turn %d: %s; asking again", self.skull, self.turn, exc)
                    continue
                await self._failed(exc)
                if not self._sentences:  # nothing of the answer was spoken: say the fallback line
                    self._fallback(voice, "reply", self.config.fallback.reply)
                return exc  # an answer cut short ends with its last whole sentence

    async def speak(self, sentence: str, *, fallback_voice: bool = False) -> bool:
        """Synthesise one sentence (after the family filter, without control characters, at
        most ``SENTENCE_MAX_CHARS``) and send it as the next ``speech`` segment, or several
        when its audio is longer than ``SEGMENT_MAX_S``. ``fallback_voice``: in the fallback
        voice, within ``[fallback] timeout_s``. A voice that fails is reported to the skull
        (``error``) and nothing is sent; so is a segment that cannot be sent, and then the rest
        of the answer is skipped. Speech past ``REPLY_MAX_S`` of the turn is not spoken. True
        when a segment went out."""
        if self._unsent or self._spoken_s >= REPLY_MAX_S:
            self._skipped(sentence)
            return False
        text = clip_words(speakable(self.filter.clean(sentence)), SENTENCE_MAX_CHARS)
        if not text:  # nothing a voice could say (control characters, escapes): skipped
            return False
        failure = None
        with self._stage("tts") as stage:
            try:
                if fallback_voice:
                    speech = await self._fallback_voice(text)
                else:
                    speech = await self.call("tts", self.backends.tts.synthesize, text)
            except BackendError as exc:
                failure = exc
                stage.error = str(exc)
        if failure is not None:
            await self._failed(failure)
            return False
        samples, rate = speech.samples, speech.rate
        if len(samples) == 0:
            return False
        room_s = REPLY_MAX_S - self._spoken_s
        if len(samples) > room_s * rate:  # the reply is too long to speak: it ends at a pause near the cap
            end = int(room_s * rate)
            samples = samples[:quiet_cut(samples, rate, max(0, end - CUT_SEARCH_S * rate), end)]
            if len(samples) == 0:  # the cap is reached to within a sample
                self._skipped(sentence)
                return False
            text = clip_words(text, max(1, round(len(text) * len(samples) / len(speech.samples))))
            log.warning("%s: turn %d: the reply is longer than %g s of speech; it ends at %.1f s and the rest "
                        "is not spoken", self.skull, self.turn, REPLY_MAX_S, self._spoken_s + len(samples) / rate)
        # the jaw track and the PCM: ~0.3 ms of numpy per second of speech, resampling up to ~0.5
        # more. A sentence of a few seconds is shaped right here: handing it to a worker thread
        # cost far more than the work once a crowd's threads contend for the GIL (64 skulls: a
        # first sentence waited 226 ms for its turn, p95 528 ms); a longer one goes to a worker,
        # so the event loop keeps every other skull's audio moving meanwhile
        args = (self.turn, self.segments, text, samples, rate, self.shape or self.config.shape, self.play_rate)
        if len(samples) <= SHAPE_HERE_S * rate:
            pieces = speech_segments(*args)
        else:
            pieces = await asyncio.get_running_loop().run_in_executor(self.executor, _shaped, *args)
        sent = []
        for msg, pcm in pieces:
            try:
                await self.send(msg, pcm)
            except ConnectionClosed:
                raise
            except Exception as exc:  # a segment the link cannot carry: the turn ends, the skull is told
                await self._send_failed(msg, exc)
                break
            sent.append(msg.text)
            self.segments += 1
            audio_s = len(pcm) / (msg.width * msg.channels) / msg.rate
            self._spoken_s += audio_s
            self._emit(ev.SegmentSent, seq=msg.seq, text=msg.text, audio_s=round(audio_s, 3),
                       at_ms=self._since_stop_ms())
            self._emit(ev.ReplyAudio, seq=msg.seq, rate=msg.rate, pcm=pcm)
        if not sent:
            return False
        self.spoken.append(text if len(sent) == len(pieces) else " ".join(sent))
        return True

    async def _send_failed(self, msg: p.Speech, exc: Exception) -> None:
        """A segment could not go out (not a closed connection: that ends the turn by itself).
        The skull is told, the rest of the answer is skipped and the turn ends with ``done``."""
        self._unsent = (f"the host could not send segment {msg.seq} of turn {self.turn} "
                        f"({type(exc).__name__}: {str(exc)[:200]}); the rest of the answer is skipped")
        log.error("%s: turn %d: %s", self.skull, self.turn, self._unsent)
        self._emit(ev.TurnError, stage="send", message=self._unsent)
        try:
            await self.send(p.Error(p.E_INTERNAL, self._unsent, self.turn), None)
        except ConnectionClosed:
            raise
        except Exception as again:  # done still goes out
            log.error("%s: turn %d: the error could not be sent either: %s: %s", self.skull, self.turn,
                      type(again).__name__, again)

    def _skipped(self, sentence: str) -> None:
        why = "a segment could not be sent" if self._unsent else f"the reply is past {REPLY_MAX_S:g} s of speech"
        log.info("%s: turn %d: not spoken (%s): %.80r", self.skull, self.turn, why, sentence)
    async def notice(self, send: Send, line: str) -> None:
        """Speak ``line`` in the fallback voice as the next segment while the turn waits for its
        place (admission); it is not part of the reply and adds no stage timings."""
        speech = await self._fallback_voice(self.filter.clean(line))
        msg, pcm = speech_segment(self.turn, self.segments, line, speech.samples, speech.rate,
                                  self.shape or self.config.shape, self.play_rate)
        await send(msg, pcm)
        self.segments += 1
        self.notices += 1

    async def _fallback_voice(self, text: str) -> Speech:
        voice, timeout_s = self.backends.fallback_voice, self.config.fallback.timeout_s
        if voice is None:
            raise BackendError("tts", "there is no fallback voice")
        try:
            return await self._blocking("tts", timeout_s, voice.synthesize, text)
        except asyncio.TimeoutError:
            raise BackendError("tts", f"the fallback voice gave no answer within {timeout_s:g} s") from None

    async def _finish(self, voice: "Voice") -> None:
        await voice.drain()
        if self.segments == self.notices and not self._unsent and self.backends.fallback_voice is not None:
            # the voice failed for the whole answer: the skull still speaks, in the fallback voice
            self._emit(ev.Fallback, stage="tts", line=self.config.fallback.tts)
            await self.speak(self.config.fallback.tts, fallback_voice=True)
        await self._done()

    async def _done(self) -> None:
        self.reply = " ".join(self.spoken)
        timings = self.timings.finish(self.skull, self.turn)
        await self.send(p.Done(self.turn, self.segments, self.reply, timings), None)
        self._emit(ev.Done, reply=self.reply, segments=self.segments, timings_ms=timings)

    async def recover(self, fault: Exception) -> None:
        """End the turn after an unexpected fault in :meth:`run` (the caller has logged it): an
        ``error`` (internal_error), the fallback line if nothing was spoken yet, then ``done``,
        so the skull is never left waiting in silence."""
        self.cancel()
        message = (f"the host hit an unexpected fault in turn {self.turn} ({type(fault).__name__}: "
                   f"{str(fault)[:200]}); it is logged on the host, ask again")
        self._emit(ev.TurnError, stage="turn", message=message)
        await self.send(p.Error(p.E_INTERNAL, message, self.turn), None)
        if self.segments == self.notices:
            line = self.config.fallback.reply
            self._emit(ev.Fallback, stage="turn", line=line)
            try:
                if not await self.speak(line) and self.backends.fallback_voice is not None:
                    await self.speak(line, fallback_voice=True)
            except ConnectionClosed:
                raise
            except Exception as exc:  # the fault may lie in speaking itself: done still goes out
                log.error("%s: turn %d: the fallback line could not be spoken: %s: %s",
                          self.skull, self.turn, type(exc).__name__, exc)
        await self._done()


class Voice:
    """Sentences in, ``speech`` segments out, one after another: sentence k+1 is synthesised
    while sentence k travels to the skull and plays."""

    def __init__(self, turn: Turn):
        self.turn = turn
        self.queue: asyncio.Queue = asyncio.Queue()
        self.closed: ConnectionClosed | None = None
        """the skull went away while a sentence was on its way"""
        self._given_up = False
        self._drained = False
        self.task = asyncio.create_task(self._work(), name=f"voice-{turn.turn}")
        self.task.add_done_callback(self._ended)

    def say(self, sentence: str) -> None:
        self.queue.put_nowait(sentence)

    async def drain(self) -> None:
        """Wait until every sentence said so far was spoken (or failed); raises
        ConnectionClosed when the skull went away meanwhile, and what the voice task raised,
        if anything unexpected."""
        self.queue.put_nowait(None)
        try:
            await self.task
        except asyncio.CancelledError:
            raise  # the turn's own cancel, or the voice's: cancel() still tells a fault nobody saw
        except BaseException:
            self._drained = True  # the fault goes up through the turn
            raise
        self._drained = True
        if self.closed is not None:
            raise self.closed

    def cancel(self) -> None:
        if not self.task.done():
            self._given_up = True
            self.task.cancel()
        elif not self._drained and not self.task.cancelled() and self.task.exception() is not None:
            self._drained = True  # told once
            self._fault(self.task.exception())  # the turn ended another way: nothing raised it

    async def _work(self) -> None:
        try:
            while (sentence := await self.queue.get()) is not None:
                await self.turn.speak(sentence)
        except ConnectionClosed as exc:  # nothing more reaches this skull; drain() tells the turn
            self.closed = exc

    def _ended(self, task: asyncio.Task) -> None:
        """Whatever the task ended with is taken here, so it is never left unretrieved. A fault
        is raised into the turn by drain(); one that came after the turn gave up on its voice
        (a cancel lost on the way, as asyncio.wait_for loses one on Python 3.11) is logged
        here, and one the turn never drained is logged by cancel()."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self._given_up:
            self._fault(exc)

    def _fault(self, exc: BaseException) -> None:
        log.error("%s: turn %d: the voice failed and the turn had ended without it: %s: %s", self.turn.skull,
                  self.turn.turn, type(exc).__name__, exc, exc_info=exc)


def _pump(writer: ReplyWriter, ctx: ReplyContext, cancel: threading.Event, loop, pieces: asyncio.Queue) -> None:
    """On the host's thread pool: the streamed reply into the turn's queue. Pieces that arrive
    while the event loop is busy wait in a list and go over together, one wake-up of the loop
    for all of them (with a crowd, every token of every reply would wake it otherwise)."""
    waiting: list = []
    lock = threading.Lock()

    def hand_over():
        with lock:
            items = waiting[:]
            waiting.clear()
        for item in items:
            pieces.put_nowait(item)

    def put(item):
        if cancel.is_set():
            return
        with lock:
            waiting.append(item)
            if len(waiting) > 1:  # a hand-over is on its way already
                return
        loop.call_soon_threadsafe(hand_over)
    if cancel.is_set():  # the turn gave up while this waited for a free thread
        return
    try:
        for piece in writer.stream(ctx, cancel):
            if cancel.is_set():
                return
            put(("piece", piece))
        put(("end", None))
    except BaseException as exc:  # handed to the turn, which logs it with the stage
        try:
            put(("error", exc))
        except RuntimeError:  # the loop is gone (host shutting down)
            return


def _ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 1)


SHAPE_HERE_S = 4.0
"""seconds of speech up to which a sentence is shaped on the event loop (a few ms)"""
_SHAPING = threading.BoundedSemaphore(os.cpu_count() or 1)
"""sentences turned into segments at once: it is CPU work, so more at once than there are cores
finish no sooner, and each holds a few MB of numpy while it runs (a crowd would hold them all)"""


def _shaped(*args) -> list:
    """:func:`speech_segments`, at most one per core at a time."""
    with _SHAPING:
        return speech_segments(*args)


def speech_segments(turn: int, seq: int, text: str, samples: np.ndarray, rate: int,
                    shape: JawShape = JawShape(), play_rate: int = 0) -> list[tuple[p.Speech, bytes]]:
    """One sentence's ``speech`` segments, numbered from ``seq``: one, or several when its audio
    is longer than ``SEGMENT_MAX_S`` or than one binary frame can carry (``MAX_BINARY_BYTES`` at
    the rate sent). Each cut falls at the quietest moment of the last quarter of the piece, a
    pause between words as a rule; the skull plays the pieces back to back. The words are
    shared out in proportion to each piece's length."""
    out_rate = play_rate or rate
    longest = min(SEGMENT_MAX_S * rate, p.MAX_BINARY_BYTES // 2 * rate / out_rate)
    longest = max(1, int(longest * SEGMENT_FILL))  # resampling may round a sample or two up
    cuts, start = [0], 0
    while len(samples) - start > longest:
        start = quiet_cut(samples, rate, start + longest * 3 // 4, start + longest)
        cuts.append(start)
    cuts.append(len(samples))
    if len(cuts) == 2:
        return [speech_segment(turn, seq, text, samples, rate, shape, play_rate)]
    words, out, said = text.split(), [], 0
    for i in range(len(cuts) - 1):
        upto = round(len(words) * cuts[i + 1] / len(samples))
        piece = " ".join(words[said:upto])
        said = upto
        out.append(speech_segment(turn, seq + i, piece, samples[cuts[i]:cuts[i + 1]], rate, shape, play_rate))
    return out


def quiet_cut(samples: np.ndarray, rate: int, lo: int, hi: int) -> int:
    """The sample index in ``lo..hi`` at the middle of its quietest 10 ms: where to cut speech."""
    frame = max(1, rate // 100)
    n = (hi - lo) // frame
    if n < 2:
        return hi
    energy = np.square(samples[lo:lo + n * frame].astype(np.float32)).reshape(n, frame).mean(axis=1)
    return lo + int(np.argmin(energy)) * frame + frame // 2


def speech_segment(turn: int, seq: int, text: str, samples: np.ndarray, rate: int,
                   shape: JawShape = JawShape(), play_rate: int = 0) -> tuple[p.Speech, bytes]:
    """A ``speech`` message with its jaw track, and its PCM payload (at ``play_rate`` if set).
    Audio longer than a binary frame can carry needs :func:`speech_segments`."""
    track = jaw_track(samples, rate, shape)
    if play_rate and play_rate != rate:
        samples, rate = resample(samples, rate, play_rate), play_rate
    pcm = to_pcm16(samples)
    msg = p.Speech(turn=turn, seq=seq, text=text, rate=rate, width=2, channels=1, bytes=len(pcm),
                   jaw_fps=shape.fps, jaw=np.round(track.astype(np.float64), 3).tolist())
    return msg, pcm
