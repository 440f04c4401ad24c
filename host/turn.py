"""One turn on the host: collect the question, hear it, look, reply, speak.

The caption starts as soon as the snapshot arrives (at button-down), so it runs while the
visitor is still talking. After ``stop``: speech to text, then the reply, split into sentences;
each sentence is synthesised and sent as a ``speech`` segment as soon as it is ready, while the
next one is being synthesised. A failed or slow stage never leaves the skull mute: it speaks a
fallback line instead, and the cause is logged with the stage name.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np

from skull import protocol as p
from skull.audio.envelope import JawShape, jaw_track
from skull.audio.wav import pcm16_to_audio, to_mono_rate, to_pcm16
from skull.errors import BackendError

from .backends import Captioner, ReplyContext, ReplyWriter, SpeechToText, TextToSpeech
from .config import HostConfig
from .sentences import split_sentences

log = logging.getLogger("host.turn")

Send = Callable[[p.Message, "bytes | None"], Awaitable[None]]
STT_RATE = 16000


@dataclass
class Backends:
    stt: SpeechToText
    vision: Captioner
    reply: ReplyWriter
    tts: TextToSpeech


@dataclass
class Turn:
    turn: int
    backends: Backends
    config: HostConfig
    history: tuple = ()
    audio: bytearray = field(default_factory=bytearray)
    stream: p.AudioStart | None = None
    caption_task: asyncio.Task | None = None
    timings_ms: dict = field(default_factory=dict)
    transcript: str = ""
    caption: str = ""
    reply: str = ""

    # --- collecting the question ---------------------------------------------------------

    def on_image(self, image: bytes) -> None:
        """Start captioning at once, concurrently with the recording."""
        self.caption_task = asyncio.create_task(self._caption(image), name=f"caption-{self.turn}")

    async def _caption(self, image: bytes) -> str:
        t0 = time.monotonic()
        try:
            return await self._stage("vision", self.backends.vision.caption, image)
        finally:
            self.timings_ms["vision"] = round((time.monotonic() - t0) * 1000, 1)

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
        """Run a blocking backend call in a worker thread with the stage's timeout."""
        timeout = getattr(self.config, stage).timeout_s
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout)
        except asyncio.TimeoutError:
            raise BackendError(stage, f"no answer within {timeout} s") from None
        except BackendError:
            raise
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
            self.timings_ms["stt"] = round((time.monotonic() - t0) * 1000, 1)

    async def run(self, send: Send) -> None:
        """Everything after ``stop``: ends with ``done``, whatever fails on the way."""
        t_start = time.monotonic()
        fallback = self.config.fallback
        try:
            self.transcript = await self._hear()
        except BackendError as exc:
            log.error("turn %d: %s", self.turn, exc)
            await send(p.Error(p.E_STAGE_FAILED, str(exc), self.turn), None)
            return await self._speak_and_finish(send, fallback.stt, t_start)
        if self.caption_task is not None:
            try:
                self.caption = await self.caption_task
            except BackendError as exc:
                log.error("turn %d: %s", self.turn, exc)
                self.caption = fallback.vision
        await send(p.Heard(self.turn, self.transcript, self.caption), None)
        t0 = time.monotonic()
        try:
            ctx = ReplyContext(self.transcript, self.caption, self.history)
            self.reply = (await self._stage("reply", self.backends.reply.reply, ctx)).strip()
            if not self.reply:
                raise BackendError("reply", "the reply was empty")
        except BackendError as exc:
            log.error("turn %d: %s", self.turn, exc)
            await send(p.Error(p.E_STAGE_FAILED, str(exc), self.turn), None)
            self.reply = fallback.reply
        self.timings_ms["reply"] = round((time.monotonic() - t0) * 1000, 1)
        await self._speak_and_finish(send, self.reply, t_start)

    async def _speak_and_finish(self, send: Send, text: str, t_start: float) -> None:
        self.reply = text
        sentences = split_sentences(text) or [text]
        t0 = time.monotonic()
        seq = 0
        # synthesis of sentence k+1 starts while sentence k is being sent and played
        pending = asyncio.create_task(self._stage("tts", self.backends.tts.synthesize, sentences[0]))
        for i, sentence in enumerate(sentences):
            try:
                speech = await pending
            except BackendError as exc:
                log.error("turn %d: sentence %d: %s", self.turn, i, exc)
                await send(p.Error(p.E_STAGE_FAILED, str(exc), self.turn), None)
                speech = None
            if i + 1 < len(sentences):
                pending = asyncio.create_task(self._stage("tts", self.backends.tts.synthesize, sentences[i + 1]))
            if speech is None or len(speech.samples) == 0:
                continue
            if seq == 0:
                self.timings_ms["tts_first"] = round((time.monotonic() - t0) * 1000, 1)
            await send(*speech_segment(self.turn, seq, sentence, speech.samples, speech.rate, self.config.shape))
            seq += 1
        self.timings_ms["tts"] = round((time.monotonic() - t0) * 1000, 1)
        self.timings_ms["total"] = round((time.monotonic() - t_start) * 1000, 1)
        await send(p.Done(self.turn, seq, self.reply, dict(self.timings_ms)), None)


def speech_segment(turn: int, seq: int, text: str, samples: np.ndarray, rate: int,
                   shape: JawShape = JawShape()) -> tuple[p.Speech, bytes]:
    """A ``speech`` message with its jaw track, and its PCM payload."""
    pcm = to_pcm16(samples)
    track = jaw_track(samples, rate, shape)
    msg = p.Speech(turn=turn, seq=seq, text=text, rate=rate, width=2, channels=1, bytes=len(pcm),
                   jaw_fps=shape.fps, jaw=[round(float(v), 3) for v in track])
    return msg, pcm
