"""The Wyoming backends against real Wyoming servers on loopback: servers built on the wyoming
library's own AsyncServer and AsyncEventHandler, with the host's embedded engines behind them
(moonshine hears, espeak-ng speaks), holding the same conversations as wyoming-faster-whisper
and wyoming-piper."""
from __future__ import annotations

import asyncio
import socket
import threading
import time

import numpy as np
import pytest
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioChunkConverter, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.server import AsyncEventHandler, AsyncServer
from wyoming.tts import Synthesize

from conftest import one_turn
from host.backends.registry import BackendContext
from host.backends.tts import EspeakSettings, EspeakTTS
from host.build import build_backends, build_stage
from host.config import HostConfig, ServerConfig, StageConfig, load_host_config
from host.fakes import WhisperCppFake
from skull.core.data import bundled
from skull.core.errors import BackendError, ConfigError
from skull.core.wav import read_wav, to_mono

ATTRIBUTION = Attribution(name="talking skull tests", url="https://example.invalid/skull")
VOICES = ("en-us+m3", "en-gb+m1")
"""the voices the test voice server lists, as wyoming-piper lists its installed voices"""


class WyomingServer:
    """A Wyoming server on a free loopback port, run by the wyoming library's AsyncServer in its
    own thread and event loop. ``handler(reader, writer)`` makes one AsyncEventHandler per
    connection, as the real servers do."""

    def __init__(self, handler, port: int = 0):
        self.handler = handler
        self.loop = asyncio.new_event_loop()
        self.server = AsyncServer.from_uri(f"tcp://127.0.0.1:{port}")
        self.port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, name="wyoming-test-server", daemon=True)

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self) -> "WyomingServer":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(self.handler), self.loop).result(5)
        # AsyncTcpServer has no public way to tell the port it bound: its asyncio server knows
        self.port = self.server._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class EarsHandler(AsyncEventHandler):
    """wyoming-faster-whisper's conversation with the host's embedded ears doing the hearing:
    describe -> info; transcribe, audio-start, audio-chunk..., audio-stop -> transcript, then
    the connection closes. A language the ears do not hear is refused with an error event at
    once, and the connection closes with the question's audio still arriving."""

    def __init__(self, ears, heard: list, reader, writer):
        super().__init__(reader, writer)
        self.ears, self.heard = ears, heard
        self.converter = AudioChunkConverter(rate=16000, width=2, channels=1)
        self.pcm = bytearray()
        self.formats = []

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            model = AsrModel(name=f"{self.ears.name}-en", attribution=ATTRIBUTION, installed=True,
                             description="the host's embedded ears", version="1", languages=["en"])
            program = AsrProgram(name=self.ears.name, attribution=ATTRIBUTION, installed=True,
                                 description="embedded speech to text", version="0.1.0", models=[model])
            await self.write_event(Info(asr=[program]).event())
            return True
        if Transcribe.is_type(event.type):
            language = Transcribe.from_event(event).language
            if language not in (None, "en"):  # refused at once, while the audio is still coming
                await self.write_event(Error(text=f"{self.ears.name} hears English only, not {language!r}",
                                             code="LanguageNotSupported").event())
                return False
        elif AudioStart.is_type(event.type):
            start = AudioStart.from_event(event)
            self.formats.append((start.rate, start.width, start.channels))
            self.pcm.clear()
        elif AudioChunk.is_type(event.type):
            chunk = AudioChunk.from_event(event)
            self.formats.append(chunk.samples)
            self.pcm += self.converter.convert(chunk).audio
        elif AudioStop.is_type(event.type):
            samples = np.frombuffer(bytes(self.pcm), "<i2").astype(np.float32) / 32768.0
            text = await asyncio.get_running_loop().run_in_executor(None, self.ears.transcribe, samples, 16000)
            self.heard.append((text, len(samples) / 16000, self.formats))
            await self.write_event(Transcript(text=text).event())
            return False
        return True


def to_pcm(samples: np.ndarray, width: int, channels: int) -> bytes:
    """Float mono -> little-endian PCM of ``width`` bytes (8-bit unsigned), ``channels`` copies."""
    x = np.repeat(np.clip(samples, -1, 1)[:, None], channels, axis=1).ravel()
    if width == 1:
        return np.round(x * 127 + 128).astype(np.uint8).tobytes()
    if width == 3:
        v = np.round(x * 8388607).astype("<i4")
        return np.stack([v & 0xFF, (v >> 8) & 0xFF, (v >> 16) & 0xFF], axis=1).astype(np.uint8).tobytes()
    return np.round(x * (2 ** (8 * width - 1) - 1)).astype(f"<i{width}").tobytes()


class VoiceHandler(AsyncEventHandler):
    """wyoming-piper's conversation with espeak-ng doing the speaking: describe -> info;
    synthesize -> audio-start, audio-chunk..., audio-stop, in ``width`` bytes and ``channels``.
    A voice it does not list is answered with an error event."""

    def __init__(self, voices: dict, said: list, width: int, channels: int, reader, writer):
        super().__init__(reader, writer)
        self.voices, self.said, self.width, self.channels = voices, said, width, channels

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            voices = [TtsVoice(name=name, attribution=ATTRIBUTION, installed=True, description=None,
                               version=None, languages=["en"]) for name in self.voices]
            program = TtsProgram(name="espeak-ng", attribution=ATTRIBUTION, installed=True,
                                 description="embedded voice", version="1.51", voices=voices)
            await self.write_event(Info(tts=[program]).event())
        elif Synthesize.is_type(event.type):
            request = Synthesize.from_event(event)
            name = request.voice.name if request.voice is not None else VOICES[0]
            if name not in self.voices:
                await self.write_event(Error(text=f"Voice not found: {name}", code="VoiceNotFound").event())
                return True
            speech = await asyncio.get_running_loop().run_in_executor(None, self.voices[name].synthesize,
                                                                      request.text)
            self.said.append((request.text, name))
            fmt = dict(rate=speech.rate, width=self.width, channels=self.channels)
            await self.write_event(AudioStart(**fmt).event())
            for i in range(0, len(speech.samples), 1024):
                pcm = to_pcm(speech.samples[i:i + 1024], self.width, self.channels)
                await self.write_event(AudioChunk(audio=pcm, **fmt).event())
            await self.write_event(AudioStop().event())
        return True


class CutOffHandler(AsyncEventHandler):
    """A voice server that starts answering and closes the connection half way."""

    async def handle_event(self, event: Event) -> bool:
        if Synthesize.is_type(event.type):
            await self.write_event(AudioStart(rate=22050, width=2, channels=1).event())
            await self.write_event(AudioChunk(rate=22050, width=2, channels=1, audio=bytes(2048)).event())
            return False
        return True


class SilentHandler(AsyncEventHandler):
    """A server that takes every event and never answers."""

    async def handle_event(self, event: Event) -> bool:
        return True


@pytest.fixture(scope="module")
def ears():
    return build_stage(HostConfig().stt)  # moonshine, or pocketsphinx where moonshine cannot load


@pytest.fixture(scope="module")
def espeak_voices():
    voices = {name: EspeakTTS(EspeakSettings(voice=name), BackendContext("tts")) for name in VOICES}
    for voice in voices.values():  # the program: the same samples for the same text every time, compared exactly
        voice.speakers, voice.computes_here = None, True
    return voices


@pytest.fixture
def servers():
    started = []

    def start(handler, port: int = 0) -> WyomingServer:
        started.append(WyomingServer(handler, port).start())
        return started[-1]
    yield start
    for server in started:
        server.stop()


@pytest.fixture
def ears_server(servers, ears):
    heard = []
    server = servers(lambda r, w: EarsHandler(ears, heard, r, w))
    server.heard = heard
    return server


@pytest.fixture
def voice_server(servers, espeak_voices):
    said = []
    server = servers(lambda r, w: VoiceHandler(espeak_voices, said, 2, 1, r, w))
    server.said = said
    return server


def make(stage: str, url: str, timeout_s: float = 10.0, **settings):
    """Backend wyoming of ``stage`` at ``url``, built as host.toml would build it."""
    return build_stage(StageConfig.of(stage, "wyoming", timeout_s=timeout_s, retries=0, url=url, **settings))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


QUESTION = to_mono(read_wav(bundled("question.wav")))


# --- a whole turn -----------------------------------------------------------------------------

def test_a_turn_hears_and_speaks_through_wyoming_servers(ears_server, voice_server):
    config = HostConfig(server=ServerConfig(port=0, ping_interval_s=1.0, ping_timeout_s=2.0),
                        stt=StageConfig.of("stt", "wyoming", timeout_s=30.0, url=ears_server.url, language="en"),
                        tts=StageConfig.of("tts", "wyoming", url=voice_server.url, voice="en-gb+m1"))

    agent, rec = one_turn(config, build_backends(config))
    body = agent.body
    assert rec.outcome == "answered"
    assert "costume" in rec.transcript
    # the question went to the ears server as 16 kHz 16-bit mono in 100 ms chunks
    [(heard, seconds, formats)] = ears_server.heard
    assert heard == rec.transcript and seconds > 1.5
    assert formats[0] == (16000, 2, 1) and set(formats[1:-1]) == {1600}
    # every sentence of the reply was spoken by the voice server, in the voice host.toml chose
    assert len(rec.segments) >= 2
    # (the voice server also spoke the skull's line set for when the host is gone: docs/show.md)
    lines = [text for _, text in config.lines.texts()]
    said = sorted(text for text, _ in voice_server.said if text not in lines or text in rec.reply)
    assert sorted(seg.text for seg in rec.segments) == said
    assert {voice for _, voice in voice_server.said} == {"en-gb+m1"}
    # and the jaw moved to the voice server's audio
    openings = [o for _, o, _ in body.jaw.log]
    assert max(openings) > 0.5 and openings[-1] == 0.0


# --- check --------------------------------------------------------------------------------------

def test_check_reports_what_the_servers_describe(ears_server, voice_server, ears):
    detail = make("stt", ears_server.url).check()
    assert detail == f"{ears.name} 0.1.0, model {ears.name}-en"
    detail = make("tts", voice_server.url, voice="en-gb+m1").check()
    assert detail == "espeak-ng 1.51, voice en-gb+m1; voices en-us+m3, en-gb+m1"
    assert make("tts", voice_server.url).check().startswith("espeak-ng 1.51, its default voice")
    # what the server does not have is named, with what it has
    with pytest.raises(BackendError, match=r"has no voice 'en_US-lessac-medium' \(it has en-us\+m3, en-gb\+m1\); "
                                           r"fix \[tts.wyoming\] voice"):
        make("tts", voice_server.url, voice="en_US-lessac-medium").check()
    with pytest.raises(BackendError, match=r"does not hear language 'de' \(it hears en\); "
                                           r"fix \[stt.wyoming\] language"):
        make("stt", ears_server.url, language="de").check()
    # a voice server given as the ears, and the other way round
    with pytest.raises(BackendError, match=r"has no speech-to-text program \(it offers tts\); fix \[stt.wyoming\] url"):
        make("stt", voice_server.url).check()
    with pytest.raises(BackendError, match=r"has no text-to-speech program \(it offers asr\)"):
        make("tts", ears_server.url).check()


# --- failures -----------------------------------------------------------------------------------

def test_a_server_that_starts_listening_during_the_request_is_asked_again(servers, ears):
    """A Wyoming server still starting refuses connections: the request asks again with a
    backoff and is answered once the server listens, 1.5 s later."""
    port, heard = free_port(), []
    late = threading.Timer(1.5, lambda: servers(lambda r, w: EarsHandler(ears, heard, r, w), port))
    stt = make("stt", f"tcp://127.0.0.1:{port}")
    t0 = time.monotonic()
    late.start()
    try:
        text = stt.transcribe(QUESTION, 16000)
    finally:
        late.cancel()
        late.join()
    assert time.monotonic() - t0 > 1.5 and len(heard) == 1
    assert "costume" in text.lower() and text == heard[0][0], text


def test_a_dead_address_is_named_with_the_server_to_start():
    url = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(BackendError) as e:
        make("stt", url, timeout_s=1.0).transcribe(QUESTION, 16000)
    assert 0.5 < time.monotonic() - t0 < 1.0  # asked again until shortly before the stage's timeout
    assert e.value.retryable and e.value.stage == "stt"
    assert f"wyoming at {url} is not reachable (connection refused, tried for" in str(e.value)
    assert "start it, e.g. 'wyoming-faster-whisper --uri tcp://0.0.0.0:10300" in str(e.value)
    assert "or fix [stt.wyoming] url in host.toml" in str(e.value)
    with pytest.raises(BackendError) as e:
        make("tts", url, timeout_s=1.0).synthesize("Boo!")
    assert e.value.retryable and url in str(e.value)
    assert "start it, e.g. 'wyoming-piper --uri tcp://0.0.0.0:10200" in str(e.value)
    with pytest.raises(BackendError, match="is not reachable"):
        make("tts", url, timeout_s=1.0).check()


def test_error_events_come_back_with_the_servers_text(ears_server, voice_server):
    with pytest.raises(BackendError) as e:
        make("tts", voice_server.url, voice="en_US-lessac-medium").synthesize("Boo!")
    assert str(e.value) == (f"tts: wyoming at {voice_server.url} answered with an error: "
                            f"Voice not found: en_US-lessac-medium (VoiceNotFound)")
    assert not e.value.retryable  # the same request would fail the same way
    with pytest.raises(BackendError, match="answered with an error: .* hears English only, not 'de'") as e:
        make("stt", ears_server.url, language="de").transcribe(QUESTION, 16000)
    assert not e.value.retryable
    assert ears_server.heard == [] and voice_server.said == []


def test_a_server_that_is_not_wyoming_is_named_as_such():
    http = WhisperCppFake().start()  # an HTTP server where a Wyoming one was expected
    try:
        url = f"tcp://127.0.0.1:{http.port}"
        with pytest.raises(BackendError, match=r"answered something that is not a Wyoming event: '.+'; "
                                               r"is \[stt.wyoming\] url the address of a Wyoming server\?") as e:
            make("stt", url).transcribe(QUESTION, 16000)
        assert not e.value.retryable
        with pytest.raises(BackendError, match=r"not a Wyoming event.*\[tts.wyoming\] url"):
            make("tts", url).check()
    finally:
        http.stop()


def test_a_voice_cut_off_half_way_is_worth_asking_again(servers):
    cut = servers(CutOffHandler)
    with pytest.raises(BackendError) as e:
        make("tts", cut.url).synthesize("Boo!")
    assert str(e.value) == f"tts: wyoming at {cut.url} closed the connection before the end of the audio"
    assert e.value.retryable


def test_a_silent_server_is_cut_off_at_the_stages_timeout(servers):
    silent = servers(SilentHandler)
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=rf"wyoming at {silent.url} gave no answer within 1 s") as e:
        make("tts", silent.url, timeout_s=1.0).synthesize("Boo!")
    assert e.value.retryable and 1.0 <= time.monotonic() - t0 < 2.0


def test_a_server_that_accepts_no_connection_is_cut_off_at_connect_timeout_s():
    with socket.socket() as busy:  # a listening port whose backlog is full: connections hang unanswered
        busy.bind(("127.0.0.1", 0))
        busy.listen(0)
        port = busy.getsockname()[1]
        waiting = [socket.socket() for _ in range(4)]
        for s in waiting:
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
        try:
            t0 = time.monotonic()
            with pytest.raises(BackendError) as e:
                make("stt", f"tcp://127.0.0.1:{port}", connect_timeout_s=0.5).transcribe(QUESTION, 16000)
            assert 0.5 <= time.monotonic() - t0 < 1.5
        finally:
            for s in waiting:
                s.close()
    assert e.value.retryable
    assert f"wyoming at tcp://127.0.0.1:{port} did not accept the connection within 0.5 s; start it" in str(e.value)


# --- audio --------------------------------------------------------------------------------------

@pytest.mark.parametrize("width,channels", [(2, 1), (1, 1), (3, 2), (4, 2)])
def test_the_voice_arrives_as_mono_float_whatever_its_sample_format(servers, espeak_voices, width, channels):
    server = servers(lambda r, w: VoiceHandler(espeak_voices, [], width, channels, r, w))
    speech = make("tts", server.url, voice="en-us+m3").synthesize("Welcome to my crypt.")
    direct = espeak_voices["en-us+m3"].synthesize("Welcome to my crypt.")
    assert speech.rate == direct.rate and speech.samples.dtype == np.float32 and speech.samples.ndim == 1
    assert len(speech.samples) == len(direct.samples) and len(speech.samples) / speech.rate > 0.8
    step = 1 / 2 ** (8 * min(width, 2) - 1)  # one step of the coarser of the two formats
    assert np.max(np.abs(speech.samples - direct.samples)) <= 2 * step


# --- configuration ------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["http://127.0.0.1:10300", "tcp://127.0.0.1", "127.0.0.1:10300"])
def test_a_bad_url_names_the_table_and_the_usual_ports(tmp_path, url):
    path = tmp_path / "host.toml"
    path.write_text(f'[stt]\nbackend = "wyoming"\n\n[stt.wyoming]\nurl = "{url}"\n')
    with pytest.raises(ConfigError) as e:
        load_host_config(path)
    assert f"host.toml [stt.wyoming]: url = '{url}' is out of range: must be tcp://host:port" in str(e.value)
    assert "10300 (wyoming-faster-whisper) and 10200 (wyoming-piper)" in str(e.value)
    path.write_text('[tts]\nbackend = "wyoming"\n')  # no table: no address
    with pytest.raises(ConfigError, match=r"\[tts.wyoming\]: url = '' is out of range: .*e.g. tcp://127.0.0.1:10200"):
        load_host_config(path)
    path.write_text('[tts]\nbackend = "wyoming"\n\n[tts.wyoming]\nurl = "tcp://127.0.0.1:10200"\nspeaker = "3"\n')
    with pytest.raises(ConfigError, match=r"\[tts.wyoming\]: speaker = '3' .*set voice too"):
        load_host_config(path)


def test_the_example_config_builds():
    from pathlib import Path
    config = load_host_config(Path(__file__).resolve().parent.parent / "host" / "examples" / "wyoming.toml")
    backends = build_backends(config)
    assert (backends.stt.url, backends.tts.url) == ("tcp://127.0.0.1:10300", "tcp://127.0.0.1:10200")
    assert (config.vision.backend, config.reply.backend) == ("opencv", "jokes")
