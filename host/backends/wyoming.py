"""Home Assistant's Wyoming servers: wyoming-faster-whisper (speech to text) and wyoming-piper
(text to speech), or any other server that speaks the Wyoming protocol over TCP.

A Wyoming conversation is a few events on one connection, each a JSON line with an optional
JSON data block and binary payload after it:

- speech to text: ``transcribe``, ``audio-start``, ``audio-chunk``..., ``audio-stop`` out;
  ``transcript`` back (streaming servers send ``transcript-start``/``-chunk``/``-stop`` first);
- text to speech: ``synthesize`` out; ``audio-start``, ``audio-chunk``..., ``audio-stop`` back,
  in whatever rate, sample width and channel count the voice has;
- ``describe`` out, ``info`` back: the server's programs, models and voices (``--check``);
- ``error`` back from either, with the server's own text.

The backends are blocking, as every backend is: each call runs a private event loop in the
worker thread, bounded by the stage's ``timeout_s``. The wyoming library supplies the events
and writes them; incoming events are read here rather than with its reader, which turns a
malformed line into a silent end of stream, so that a server that is not Wyoming is named as such.
"""
from __future__ import annotations

import asyncio
import importlib
import io
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import urlparse

import numpy as np

from skull.core.errors import BackendError
from skull.core.validate import need
from skull.core.wav import resample, to_pcm16

from ..http import Refusals
from . import Speech
from .registry import BackendContext, backend

log = logging.getLogger("host.wyoming")

STT_RATE = 16000
"""Hertz: the question goes out as 16 kHz 16-bit mono, what Wyoming speech servers expect"""
CHUNK_SAMPLES = 1600
"""samples per audio-chunk event sent: 100 ms at 16 kHz, as Home Assistant sends them"""
MAX_LINE = 1 << 20
"""bytes: the longest event header line read before the answer counts as garbage"""


def _reason(exc: OSError) -> str:
    """Why a connection failed, in a few words: 'connection refused', 'name or service not known'.
    asyncio words a refusal as "Connect call failed ('127.0.0.1', 10300)", once per address tried."""
    if isinstance(exc, socket.gaierror):
        return str(exc.strerror or exc).lower()
    codes = [exc.errno] if exc.errno else [int(n) for n in re.findall(r"\[Errno (\d+)\]", str(exc))]
    words = dict.fromkeys(os.strerror(code).lower() for code in codes if code > 0)
    return ", ".join(words) or str(exc).lower()


def _url_ok(url: str) -> bool:
    try:
        parts = urlparse(url)
        return parts.scheme == "tcp" and bool(parts.hostname) and parts.port is not None \
            and 0 < parts.port and parts.path in ("", "/") and not parts.query
    except ValueError:  # a port that is not a number, or out of range
        return False


@dataclass(frozen=True)
class WyomingSettings:
    """What every Wyoming backend has: the server's address and how long to wait for it."""
    url: str = ""
    """the server as tcp://host:port (10300: wyoming-faster-whisper, 10200: wyoming-piper)"""
    connect_timeout_s: float = 3.0
    """seconds to wait for the server to accept the connection"""
    example_url: ClassVar[str] = "tcp://127.0.0.1:10300"

    def check(self, where: str) -> None:
        need(_url_ok(self.url), where, "url", self.url,
             f"must be tcp://host:port, e.g. {self.example_url}; Wyoming servers listen on port 10300 "
             f"(wyoming-faster-whisper) and 10200 (wyoming-piper) unless started with another --uri")
        need(0.1 <= self.connect_timeout_s <= 60, where, "connect_timeout_s", self.connect_timeout_s,
             "must be 0.1..60 s")


@dataclass(frozen=True)
class WyomingSTTSettings(WyomingSettings):
    """``[stt.wyoming]``: wyoming-faster-whisper, or any Wyoming speech-to-text server."""
    language: str = ""
    """spoken language code sent with each question ('en', 'de'...); empty: the server's own
    --language, or its guess"""


@dataclass(frozen=True)
class WyomingTTSSettings(WyomingSettings):
    """``[tts.wyoming]``: wyoming-piper, or any Wyoming text-to-speech server."""
    voice: str = ""
    """a voice the server lists, e.g. 'en_US-lessac-medium'; empty: the server's own --voice"""
    speaker: str = ""
    """one speaker of a multi-speaker voice (a name or number the voice lists); needs voice"""
    example_url: ClassVar[str] = "tcp://127.0.0.1:10200"

    def check(self, where: str) -> None:
        super().check(where)
        need(not self.speaker or bool(self.voice), where, "speaker", self.speaker,
             "a speaker belongs to a voice: set voice too (the server's default voice cannot be given a speaker)")


class _Session:
    """One connection to a Wyoming server, for one question, one sentence or one describe.

    The socket is used directly (the event loop's sock_* calls) rather than through asyncio
    streams: a server that refuses a question while its audio is still going out answers and
    closes, the next write fails, and a stream transport then drops the answer with the socket.
    Here the answer is still read from the socket after the failed write."""

    def __init__(self, client: "_WyomingClient", sock: socket.socket):
        self.client, self.sock = client, sock
        self.loop = asyncio.get_running_loop()
        self.buffer = bytearray()
        self.ended = False
        """the server closed its side (or reset the connection): only the buffer is left"""

    async def send(self, message) -> None:
        """Write one wyoming message (Transcribe, AudioChunk, Synthesize...), encoded by the library."""
        from wyoming.event import write_event
        out = io.BytesIO()
        write_event(message.event(), out)
        await self.loop.sock_sendall(self.sock, out.getvalue())

    async def _more(self) -> bool:
        if self.ended:
            return False
        try:
            data = await self.loop.sock_recv(self.sock, 65536)
        except ConnectionError:  # reset: whatever came before it was read already
            data = b""
        if not data:
            self.ended = True
            return False
        self.buffer += data
        return True

    async def _line(self) -> bytes | None:
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end + 1])
                del self.buffer[:end + 1]
                return line
            if len(self.buffer) > MAX_LINE:
                raise self.client.garbage(bytes(self.buffer[:120]))
            if not await self._more():
                if self.buffer:
                    raise self.client.garbage(bytes(self.buffer))
                return None

    async def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not await self._more():
                raise BackendError(self.client.stage, f"{self.client.where} closed the connection in the middle of "
                                                      f"an event", retryable=True)
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    async def receive(self):
        """The next event from the server; None when it closed the connection. An ``error``
        event becomes a BackendError with the server's text; anything that is not an event, too."""
        from wyoming.error import Error
        from wyoming.event import Event
        c = self.client
        line = await self._line()
        if line is None:
            return None
        try:
            head = json.loads(line)
            if not isinstance(head, dict) or not isinstance(head.get("type"), str):
                raise ValueError("not an event")
            data = head.get("data") or {}
            if head.get("data_length"):
                data = {**data, **json.loads(await self._exactly(int(head["data_length"])))}
            payload = await self._exactly(int(head["payload_length"])) if head.get("payload_length") else None
        except (ValueError, TypeError):
            raise c.garbage(line) from None
        event = Event(type=head["type"], data=data if isinstance(data, dict) else {}, payload=payload)
        if Error.is_type(event.type):
            text = str(event.data.get("text") or "no text")
            code = event.data.get("code")
            raise BackendError(c.stage, f"{c.where} answered with an error: {text}" + (f" ({code})" if code else ""))
        return event


class _WyomingClient:
    """The part both Wyoming backends share: address, table, timeouts and how failures read."""

    name = "wyoming"
    computes_here = False
    """the server computes; this only waits (host.server.heavy_stages)"""
    start_hint: ClassVar[str] = ""
    """how to start the server this stage usually talks to, shown when it is not there"""

    def __init__(self, settings: WyomingSettings, ctx: BackendContext):
        try:
            importlib.import_module("wyoming")  # a dependency; checked here so the host names it if missing
        except ImportError as exc:  # pragma: no cover - it is a dependency
            raise BackendError(ctx.stage, f"the wyoming package is not installed ({exc}); run 'make bootstrap'") \
                from None
        parts = urlparse(settings.url)
        self.url, self.host, self.port = settings.url, parts.hostname, parts.port
        self.stage, self.timeout_s, self.connect_timeout_s = ctx.stage, ctx.timeout_s, settings.connect_timeout_s
        self.table = f"[{ctx.stage}.wyoming]"
        """where this server's settings live in host.toml"""
        self.where = f"wyoming at {self.url}"
        self.refusals = Refusals()
        self.wait_loading = True
        """ask again, with a backoff, while the server refuses connections (one that is starting;
        a turn does; a health check reports it as it is)"""

    def absent(self, why: str) -> BackendError:
        """The server is not there: say so, how to start it, and where its address is set."""
        return BackendError(self.stage, f"{self.where} {why}; {self.start_hint}, or fix {self.table} url in host.toml",
                            retryable=True)

    def garbage(self, what: bytes) -> BackendError:
        text = what.decode("utf-8", errors="replace").strip()[:120]
        return BackendError(self.stage, f"{self.where} answered something that is not a Wyoming event: {text!r}; "
                                        f"is {self.table} url the address of a Wyoming server?")

    def programs(self, info, kind: str, what: str) -> list:
        """The server's programs of ``kind`` ('asr', 'tts') from its ``info``; BackendError saying
        what it offers instead when it has none."""
        programs = getattr(info, kind)
        if not programs:
            offers = [k for k in ("asr", "tts", "wake", "intent", "handle") if k != kind and getattr(info, k)]
            raise BackendError(self.stage, f"{self.where} has no {what} program (it offers "
                                           f"{', '.join(offers) or 'nothing'}); fix {self.table} url")
        return programs

    def run(self, exchange) -> object:
        """Run ``exchange(session)`` on a fresh connection, in a private event loop, within the
        stage's timeout; every way it can fail comes out as a BackendError naming the server."""
        return asyncio.run(self._run(exchange))

    async def _run(self, exchange):
        try:
            return await asyncio.wait_for(self._connected(exchange), self.timeout_s)
        except asyncio.TimeoutError:
            raise BackendError(self.stage, f"{self.where} gave no answer within {self.timeout_s:g} s",
                               retryable=True) from None

    async def _connect(self) -> socket.socket:
        """A connected non-blocking socket: each address the host name has, in turn."""
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        for family, kind, proto, _, address in await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, address)
                return sock
            except OSError as exc:
                sock.close()
                last = exc
            except BaseException:  # cancelled by the connect timeout
                sock.close()
                raise
        raise last or OSError(f"no address for {self.host}")

    async def _connected(self, exchange):
        deadline = time.monotonic() + self.timeout_s
        refused, tries = None, 0  # when the server first refused, and how often since
        while True:
            try:
                sock = await asyncio.wait_for(self._connect(), min(self.connect_timeout_s, self.timeout_s))
                break
            except asyncio.TimeoutError:
                raise self.absent(f"did not accept the connection within {self.connect_timeout_s:g} s") from None
            except OSError as exc:
                reason = _reason(exc)
                if reason == "connection refused" and self.wait_loading:
                    refused = time.monotonic() if refused is None else refused
                    pause = self.refusals.pause(tries, refused, deadline)
                    if pause is not None:  # not listening yet: a server that is starting binds its port soon
                        tries += 1
                        await asyncio.sleep(pause)
                        continue
                    reason += (f", tried for {time.monotonic() - refused:.1f} s" if tries
                               else ", as throughout the last request")
                raise self.absent(f"is not reachable ({reason})") from None
        self.refusals.answered()
        session = _Session(self, sock)
        try:
            return await exchange(session)
        except ConnectionError as exc:  # reset, broken pipe: perhaps the server refused while audio was going out
            while await session.receive() is not None:  # what it said before closing: its error, or garbage
                pass
            raise BackendError(self.stage, f"{self.where} dropped the connection ({_reason(exc)})",
                               retryable=True) from None
        finally:
            sock.close()

    async def info(self, session: _Session):
        """Describe, then the Info the server answers with."""
        from wyoming.info import Describe, Info
        await session.send(Describe())
        while True:
            event = await session.receive()
            if event is None:
                raise BackendError(self.stage, f"{self.where} closed the connection without describing itself",
                                   retryable=True)
            if Info.is_type(event.type):
                try:
                    return Info.from_event(event)
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    raise BackendError(self.stage, f"{self.where} described itself in a form this client cannot "
                                                   f"read ({type(exc).__name__}: {exc})") from None


def _names(artifacts) -> list[str]:
    """Installed first: wyoming-piper lists every voice it could download, installed or not."""
    return [a.name for a in sorted(artifacts, key=lambda a: not a.installed)]


def _listing(names: list[str], most: int = 6) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


@backend("wyoming", "stt", settings=WyomingSTTSettings)
class WyomingSTT(_WyomingClient):
    """A Wyoming speech-to-text server (wyoming-faster-whisper, wyoming-whisper-cpp...): the
    question goes out as 100 ms chunks of 16 kHz 16-bit mono between audio-start and
    audio-stop, after a transcribe event carrying the language."""

    start_hint = ("start it, e.g. 'wyoming-faster-whisper --uri tcp://0.0.0.0:10300 --model tiny-int8 "
                  "--language en --data-dir ./whisper-data --download-dir ./whisper-data'")

    def __init__(self, settings: WyomingSTTSettings, ctx: BackendContext):
        super().__init__(settings, ctx)
        self.language = settings.language

    def transcribe(self, samples: np.ndarray, rate: int) -> str:
        pcm = to_pcm16(resample(np.asarray(samples, np.float32), rate, STT_RATE))
        return self.run(lambda session: self._transcribe(session, pcm))

    async def _transcribe(self, session: _Session, pcm: bytes) -> str:
        from wyoming.asr import Transcribe, Transcript
        from wyoming.audio import AudioChunk, AudioStart, AudioStop
        await session.send(Transcribe(language=self.language or None))
        await session.send(AudioStart(rate=STT_RATE, width=2, channels=1))
        step = CHUNK_SAMPLES * 2
        for i in range(0, len(pcm), step):
            await session.send(AudioChunk(rate=STT_RATE, width=2, channels=1, audio=pcm[i:i + step]))
        await session.send(AudioStop())
        while True:  # a streaming server sends transcript-start/-chunk/-stop before the whole transcript
            event = await session.receive()
            if event is None:
                raise BackendError(self.stage, f"{self.where} closed the connection without a transcript",
                                   retryable=True)
            if Transcript.is_type(event.type):
                return " ".join(str(event.data.get("text") or "").split())

    def check(self) -> str:
        info = self.run(self.info)
        programs = self.programs(info, "asr", "speech-to-text")
        program = programs[0]
        models = _names(program.models)
        if self.language:
            known = {lang for m in program.models for lang in (m.languages or [])}
            if known and self.language not in known:
                raise BackendError(self.stage, f"{self.where} ({program.name}) does not hear language "
                                               f"{self.language!r} (it hears {_listing(sorted(known), 10)}); fix "
                                               f"{self.table} language")
        version = f" {program.version}" if program.version else ""
        return f"{program.name}{version}, model {_listing(models) or 'unnamed'}"


@backend("wyoming", "tts", settings=WyomingTTSSettings)
class WyomingTTS(_WyomingClient):
    """A Wyoming text-to-speech server (wyoming-piper...): one synthesize event per sentence,
    naming the voice and speaker when set; the audio comes back in chunks, in whatever rate,
    width and channel count the voice has, and leaves as mono float at the voice's rate."""

    start_hint = ("start it, e.g. 'wyoming-piper --uri tcp://0.0.0.0:10200 --voice en_US-lessac-medium "
                  "--data-dir ./piper-data --download-dir ./piper-data'")

    def __init__(self, settings: WyomingTTSSettings, ctx: BackendContext):
        super().__init__(settings, ctx)
        self.voice, self.speaker = settings.voice, settings.speaker

    def synthesize(self, text: str) -> Speech:
        return self.run(lambda session: self._synthesize(session, text))

    async def _synthesize(self, session: _Session, text: str) -> Speech:
        from wyoming.audio import AudioChunk, AudioStart, AudioStop
        from wyoming.tts import Synthesize, SynthesizeVoice
        voice = SynthesizeVoice(name=self.voice, speaker=self.speaker or None) if self.voice else None
        await session.send(Synthesize(text=text, voice=voice))
        pieces, rate = [], None
        while True:
            event = await session.receive()
            if event is None:
                raise BackendError(self.stage, f"{self.where} closed the connection before the end of the audio",
                                   retryable=True)
            if AudioStart.is_type(event.type):
                rate = rate or int(event.data.get("rate") or 0) or None
            elif AudioChunk.is_type(event.type):
                try:
                    chunk = AudioChunk.from_event(event)
                    rate = rate or chunk.rate
                    pieces.append(resample(self._mono(chunk), chunk.rate, rate))
                except (KeyError, TypeError, ValueError) as exc:
                    raise BackendError(self.stage, f"{self.where} sent an audio chunk this client cannot read "
                                                   f"({type(exc).__name__}: {exc})") from None
            elif AudioStop.is_type(event.type):
                break
        samples = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
        if not len(samples):
            raise BackendError(self.stage, f"{self.where} sent no audio for {text[:40]!r}")
        return Speech(samples.astype(np.float32), rate)

    @staticmethod
    def _mono(chunk) -> np.ndarray:
        """One chunk's PCM (8-bit unsigned, 16-, 24- or 32-bit signed, any channels) -> mono float."""
        width, channels = int(chunk.width), int(chunk.channels)
        if width not in (1, 2, 3, 4) or channels < 1 or chunk.rate <= 0:
            raise ValueError(f"rate {chunk.rate} Hz, width {width} bytes, {channels} channels")
        raw = chunk.audio[:len(chunk.audio) - len(chunk.audio) % (width * channels)]
        if width == 1:
            x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
        elif width == 3:
            b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
            x = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float32) / 8388608.0
        else:
            x = np.frombuffer(raw, f"<i{width}").astype(np.float32) / float(2 ** (8 * width - 1))
        return x.reshape(-1, channels).mean(axis=1).astype(np.float32)

    def check(self) -> str:
        info = self.run(self.info)
        programs = self.programs(info, "tts", "text-to-speech")
        program = programs[0]
        voices = {v.name: v for p in programs for v in p.voices}
        names = _names(voices.values())
        if self.voice and voices and self.voice not in voices:
            raise BackendError(self.stage, f"{self.where} ({program.name}) has no voice {self.voice!r} (it has "
                                           f"{_listing(names)}); fix {self.table} voice")
        if self.voice and self.speaker:
            speakers = [s.name for s in (voices[self.voice].speakers or [])] if self.voice in voices else []
            if speakers and self.speaker not in speakers:
                raise BackendError(self.stage, f"{self.where} voice {self.voice} has no speaker {self.speaker!r} "
                                               f"(it has {_listing(speakers)}); fix {self.table} speaker")
        version = f" {program.version}" if program.version else ""
        chosen = f"voice {self.voice}" + (f" speaker {self.speaker}" if self.speaker else "") if self.voice \
            else "its default voice"
        return f"{program.name}{version}, {chosen}; voices {_listing(names) or 'not listed'}"


__all__ = ["WyomingSTT", "WyomingTTS", "WyomingSTTSettings", "WyomingTTSSettings"]
