"""One turn on the host: collect the question, hear it, look, reply, speak.

The caption starts as soon as the snapshot arrives (at button-down), so it runs while the
visitor is still talking. After ``stop``: speech to text, then the reply. With streaming on
(the default) the reply is read piece by piece as the language model writes it; each sentence
goes to the voice the moment it is complete, and each synthesised sentence goes to the skull at
once as a ``speech`` segment while the next is synthesised, so the skull starts talking after
the first sentence, not the whole answer. A failed or slow stage never leaves the skull mute:
it is retried once when that is safe, and otherwise the skull speaks a fallback line (in the
espeak-ng voice if the configured voice is what failed); the cause is logged with the stage.

Timings (``done.timings_ms``): ``stt`` and ``vision`` are how long those stages took;
``llm_first_token``, ``llm_first_sentence``, ``tts_first_segment`` and ``total`` are
milliseconds after ``stop`` (the button release); ``reply`` is how long the reply took to write.
The skull adds ``first_audio``: release to the first reply sample at its speaker.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np

from skull.core import protocol as p
from skull.core.envelope import JawShape, jaw_track
from skull.core.wav import pcm16_to_audio, resample, to_mono_rate, to_pcm16
from skull.core.errors import BackendError

from .backends import Captioner, ReplyContext, ReplyWriter, SpeechToText, TextToSpeech
from .config import HostConfig
from .filter import FamilyFilter
from .sentences import SentenceSplitter

log = logging.getLogger("host.turn")

Send = Callable[[p.Message, "bytes | None"], Awaitable[None]]
STT_RATE = 16000


@dataclass
class Backends:
    stt: SpeechToText
    vision: Captioner | None
    """None: no caption (the reply model looks at the snapshot itself, or no vision at all)"""
    reply: ReplyWriter
    tts: TextToSpeech
    fallback_voice: TextToSpeech | None = None
    """speaks the fallback line when the configured voice fails (espeak-ng, no server)"""


@dataclass
class Turn:
    turn: int
    backends: Backends
    config: HostConfig
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
    timings_ms: dict = field(default_factory=dict)
    transcript: str = ""
    caption: str = ""
    reply: str = ""
    t_stop: float = 0.0

    # --- collecting the question ---------------------------------------------------------

    def on_image(self, image: bytes) -> None:
        """Keep the snapshot; start captioning at once, concurrently with the recording."""
        self.image = image
        if self.backends.vision is not None:
            self.caption_task = asyncio.create_task(self._caption(image), name=f"caption-{self.turn}")

    async def _caption(self, image: bytes) -> str:
        t0 = time.monotonic()
        try:
            return await self._stage("vision", self.backends.vision.caption, image)
        finally:
            self.timings_ms["vision"] = _ms(t0)

    def on_audio(self, stream: p.AudioStart, chunk: bytes) -> bool:
        """Keep a microphone chunk; False when the turn is over its length limit (chunk dropped)."""
        fmt = (stream.rate, stream.width, stream.channels)
        if self.audio and self.stream is not None and fmt != (self.stream.rate, self.stream.width, self.stream.channels):
            raise p.ProtocolError(p.E_BAD_STATE, "audio_start changed the format in the middle of a turn")
        self.stream = stream
        limit = int(self.config.server.max_record_s * stream.rate) * stream.width * stream.channels
        if len(self.audio) + len(chunk) > limit:
            return False
        self.audio.extend(chunk)
        return True

    # --- answering ------------------------------------------------------------------------

    async def _stage(self, stage: str, fn, *args):
        """Run a blocking backend call in a worker thread within the stage's timeout, asking
        once more when the failure is one that asking again can cure."""
        cfg = getattr(self.config, stage)
        deadline = time.monotonic() + cfg.timeout_s
        attempt = 0
        while True:
            try:
                return await asyncio.wait_for(asyncio.to_thread(fn, *args), max(0.01, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise BackendError(stage, f"no answer within {cfg.timeout_s:g} s") from None
            except BackendError as exc:
                if not exc.retryable or attempt >= cfg.retries or deadline - time.monotonic() < 0.05:
                    raise
                attempt += 1
                log.warning("turn %d: %s; asking again", self.turn, exc)
            except Exception as exc:  # a backend library failing in any way is a stage failure
                raise BackendError(stage, f"{type(exc).__name__}: {exc}") from exc

    async def _hear(self) -> str:
        if not self.audio or self.stream is None:
            return ""
        audio = pcm16_to_audio(bytes(self.audio), self.stream.rate, self.stream.channels)
        samples = to_mono_rate(audio, STT_RATE)
        t0 = time.monotonic()
        try:
            return await self._stage("stt", self.backends.stt.transcribe, samples, STT_RATE)
        finally:
            self.timings_ms["stt"] = _ms(t0)

    def _mark(self, key: str) -> None:
        """A milestone: milliseconds since the button release (first time only)."""
        self.timings_ms.setdefault(key, _ms(self.t_stop))

    async def _failed(self, send: Send, exc: BackendError) -> None:
        log.error("turn %d: %s", self.turn, exc)
        await send(p.Error(p.E_STAGE_FAILED, str(exc), self.turn), None)

    async def run(self, send: Send) -> None:
        """Everything after ``stop``: ends with ``done``, whatever fails on the way."""
        self.t_stop = time.monotonic()
        voice = Voice(self, send)
        try:
            try:
                self.transcript = await self._hear()
            except BackendError as exc:
                await self._failed(send, exc)
                voice.say(self.config.fallback.stt)
                return await self._finish(send, voice)
            if self.caption_task is not None:
                try:
                    self.caption = await self.caption_task
                except BackendError as exc:
                    log.error("turn %d: %s", self.turn, exc)
                    self.caption = self.config.fallback.vision
            await send(p.Heard(self.turn, self.transcript, self.caption), None)
            ctx = ReplyContext(self.transcript, self.caption, self.history,
                               self.image if self.config.vision.backend == "reply" else None)
            t0 = time.monotonic()
            if self.config.streaming:
                await self._reply_streaming(send, voice, ctx)
            else:
                await self._reply_whole(send, voice, ctx)
            self.timings_ms["reply"] = _ms(t0)
            await self._finish(send, voice)
        finally:
            voice.cancel()

    async def _reply_whole(self, send: Send, voice: "Voice", ctx: ReplyContext) -> None:
        """The sequential way: the whole reply, then the whole of it spoken in one piece."""
        try:
            text = (await self._stage("reply", self.backends.reply.reply, ctx)).strip()
            if not text:
                raise BackendError("reply", "the reply was empty")
        except BackendError as exc:
            await self._failed(send, exc)
            text = self.config.fallback.reply
        self._mark("llm_first_token")
        self._mark("llm_first_sentence")
        voice.say(text)

    async def _reply_streaming(self, send: Send, voice: "Voice", ctx: ReplyContext) -> None:
        cfg = self.config.reply
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            pieces: asyncio.Queue = asyncio.Queue()
            cancel = threading.Event()
            voice.cancels.append(cancel)
            threading.Thread(target=_pump, args=(self.backends.reply, ctx, cancel, loop, pieces),
                             name=f"reply-{self.turn}", daemon=True).start()
            splitter, got = SentenceSplitter(), False
            try:
                while True:
                    kind, value = await asyncio.wait_for(pieces.get(), cfg.timeout_s)
                    if kind == "error":
                        raise value
                    if kind == "end":
                        for sentence in splitter.flush():
                            self._sentence(voice, sentence)
                        break
                    if not got:
                        got = True
                        self._mark("llm_first_token")
                    for sentence in splitter.feed(value):
                        self._sentence(voice, sentence)
                if not voice.said:
                    raise BackendError("reply", "the reply was empty")
                return
            except (asyncio.TimeoutError, Exception) as exc:
                cancel.set()
                if isinstance(exc, asyncio.TimeoutError):
                    exc = BackendError("reply", f"no answer within {cfg.timeout_s:g} s"
                                       + (" since the last piece" if got else ""))
                elif not isinstance(exc, BackendError):
                    exc = BackendError("reply", f"{type(exc).__name__}: {exc}")
                if not got and exc.retryable and attempt < cfg.retries:
                    attempt += 1
                    log.warning("turn %d: %s; asking again", self.turn, exc)
                    continue
                await self._failed(send, exc)
                if not voice.said:  # nothing of the answer was spoken: say the fallback line
                    voice.say(self.config.fallback.reply)
                return  # an answer cut short ends with its last whole sentence

    def _sentence(self, voice: "Voice", sentence: str) -> None:
        self._mark("llm_first_sentence")
        voice.say(sentence)

    async def _finish(self, send: Send, voice: "Voice") -> None:
        await voice.drain()
        if not voice.segments and self.backends.fallback_voice is not None:
            # the voice failed for the whole answer: the skull still speaks, in the fallback voice
            await voice.speak(self.config.fallback.tts, self.backends.fallback_voice)
        self.reply = " ".join(voice.spoken)
        self.timings_ms["total"] = _ms(self.t_stop)
        await send(p.Done(self.turn, voice.segments, self.reply, dict(self.timings_ms)), None)


class Voice:
    """Sentences in, ``speech`` segments out, one after another: sentence k+1 is synthesised
    while sentence k travels to the skull and plays."""

    def __init__(self, turn: Turn, send: Send):
        self.turn, self.send = turn, send
        self.queue: asyncio.Queue = asyncio.Queue()
        self.said = 0
        """sentences handed to the voice"""
        self.segments = 0
        """segments sent to the skull"""
        self.spoken: list[str] = []
        self.cancels: list[threading.Event] = []
        self.task = asyncio.create_task(self._work(), name=f"voice-{turn.turn}")

    def say(self, sentence: str) -> None:
        self.said += 1
        self.queue.put_nowait(sentence)

    async def drain(self) -> None:
        self.queue.put_nowait(None)
        await self.task

    def cancel(self) -> None:
        for event in self.cancels:
            event.set()
        if not self.task.done():
            self.task.cancel()

    async def _work(self) -> None:
        while (sentence := await self.queue.get()) is not None:
            await self.speak(sentence, None)

    async def speak(self, sentence: str, voice: TextToSpeech | None) -> None:
        t = self.turn
        text = t.filter.clean(sentence)
        try:
            if voice is None:
                speech = await t._stage("tts", t.backends.tts.synthesize, text)
            else:
                speech = await asyncio.wait_for(asyncio.to_thread(voice.synthesize, text), 10.0)
        except (BackendError, asyncio.TimeoutError) as exc:
            await t._failed(self.send, exc if isinstance(exc, BackendError) else BackendError("tts", "no answer"))
            return
        if len(speech.samples) == 0:
            return
        t._mark("tts_first_segment")
        await self.send(*speech_segment(t.turn, self.segments, text, speech.samples, speech.rate,
                                        t.shape or t.config.shape, t.play_rate))
        self.segments += 1
        self.spoken.append(text)


def _pump(writer: ReplyWriter, ctx: ReplyContext, cancel: threading.Event, loop, pieces: asyncio.Queue) -> None:
    """Worker thread: the streamed reply into the turn's queue."""
    def put(item):
        if not cancel.is_set():
            loop.call_soon_threadsafe(pieces.put_nowait, item)
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
            pass


def _ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 1)


def speech_segment(turn: int, seq: int, text: str, samples: np.ndarray, rate: int,
                   shape: JawShape = JawShape(), play_rate: int = 0) -> tuple[p.Speech, bytes]:
    """A ``speech`` message with its jaw track, and its PCM payload (at ``play_rate`` if set)."""
    track = jaw_track(samples, rate, shape)
    if play_rate and play_rate != rate:
        samples, rate = resample(samples, rate, play_rate), play_rate
    pcm = to_pcm16(samples)
    msg = p.Speech(turn=turn, seq=seq, text=text, rate=rate, width=2, channels=1, bytes=len(pcm),
                   jaw_fps=shape.fps, jaw=[round(float(v), 3) for v in track])
    return msg, pcm
