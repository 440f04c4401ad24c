"""Turn content that must not break the voice, over a real loopback websocket against the fake
model servers and the real espeak-ng: text that looks like a command-line option or holds
control characters, a sentence too long for one frame, a reply too long to speak, a segment
that cannot be sent, and a model server that starts listening after the turn began."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import threading
import time

import numpy as np
import pytest
from websockets.asyncio.client import connect

from conftest import start_host
from host import events as ev
from host.backends.tts import EspeakTTS, EspeakSettings
from host.backends.registry import BackendContext
from host.build import build_backends
from host.check import check_backends, render
from host.config import HostConfig, ServerConfig, StageConfig
from host.fakes import LlamaCppFake, OpenAIAudioFake, WhisperCppFake
from host.http import Http
from host.text import speakable
from host.turn import REPLY_MAX_S, SEGMENT_MAX_S, Turn
from skull.core import protocol as p
from skull.core.errors import BackendError, ProtocolError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def servers():
    started = []

    def start(srv):
        started.append(srv)
        return srv.start()
    yield start
    for srv in started:
        srv.stop()


def config(llm_url: str, stt_url: str, *, tts: StageConfig | None = None, reply_timeout_s: float = 10.0,
           **top) -> HostConfig:
    return HostConfig(server=ServerConfig(port=0, ping_interval_s=5.0, ping_timeout_s=10.0),
                      stt=StageConfig.of("stt", "whisper.cpp", timeout_s=5.0, url=stt_url),
                      vision=StageConfig.of("vision", "reply"),
                      reply=StageConfig.of("reply", "openai-chat", timeout_s=reply_timeout_s, url=llm_url,
                                           max_tokens=4096),
                      tts=tts or StageConfig.of("tts", "espeak-ng", timeout_s=20.0), **top)


@dataclasses.dataclass
class Answer:
    segments: list
    """(speech message, PCM bytes) in the order they arrived"""
    errors: list
    done: p.Done
    listen_to_done_s: float

    @property
    def texts(self) -> list[str]:
        return [m.text for m, _ in self.segments]

    def seconds(self) -> list[float]:
        return [len(pcm) / 2 / m.rate for m, pcm in self.segments]


async def raw_turn(port: int, *, play_rate: int = 0, at_listen=None, timeout_s: float = 60.0) -> Answer:
    """One push-to-talk turn as a skull's link sends it (hello, listen, a second of audio, stop),
    and everything the host answers until ``done``."""
    async with connect(f"ws://127.0.0.1:{port}", max_size=p.TRANSPORT_MAX_BYTES) as ws:
        await ws.send(json.dumps({"type": "hello", "protocol": 1, "skull": "bones", "play_rate": play_rate}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "welcome"
        t0 = time.monotonic()
        await ws.send(json.dumps({"type": "listen", "turn": 1}))
        if at_listen is not None:
            at_listen()
        audio = (np.random.default_rng(1).normal(0, 300, 16000)).astype("<i2").tobytes()
        await ws.send(json.dumps({"type": "audio_start", "turn": 1, "rate": 16000, "width": 2, "channels": 1}))
        await ws.send(audio)
        await ws.send(json.dumps({"type": "stop", "turn": 1}))
        reader, segments, errors = p.FrameReader(p.HOST_MESSAGES), [], []
        while True:
            frame = await asyncio.wait_for(ws.recv(), timeout_s)
            if isinstance(frame, bytes):
                segments.append(reader.read_binary(frame))
                continue
            msg = reader.read_text(frame)
            if isinstance(msg, p.Error):
                errors.append(f"{msg.code}: {msg.message}")
            if isinstance(msg, p.Done):
                return Answer(segments, errors, msg, time.monotonic() - t0)


def answer(cfg: HostConfig, **kw) -> Answer:
    async def go():
        host = await start_host(cfg, build_backends(cfg))
        try:
            return await raw_turn(host.port, **kw)
        finally:
            await host.stop()
    return asyncio.run(go())


# --- espeak-ng: the text is never taken for an option --------------------------------------------

def espeak() -> EspeakTTS:
    return EspeakTTS(EspeakSettings(), BackendContext(stage="tts", timeout_s=10.0))


@pytest.mark.parametrize("text,clean", [
    ("-x marks the spot", "x marks the spot"),
    ("--help is on the way", "help is on the way"),
    ("-v", "v"),
    ("boo\x00 hoo, a NUL in the middle", "boo hoo, a NUL in the middle"),
    ("\x1b[31mred\x1b[0m eyes\x07 and a bell\x08", "red eyes and a bell"),
])
def test_espeak_speaks_options_nul_bytes_and_control_characters(text, clean):
    voice = espeak()
    said, plain = voice.synthesize(text), voice.synthesize(clean)
    seconds, plain_s = len(said.samples) / said.rate, len(plain.samples) / plain.rate
    assert seconds > 0.3, f"{text!r} was not spoken"
    assert abs(seconds - plain_s) < 0.5 * plain_s, f"{text!r}: {seconds:.2f} s, {clean!r}: {plain_s:.2f} s"


def test_espeak_skips_text_with_nothing_to_say():
    for text in ("\x00", "\x1b[2J\x1b[H", "\x07\x08\x7f", " \n\t "):
        assert len(espeak().synthesize(text).samples) == 0


def test_speakable_removes_escapes_control_format_and_surrogate_characters():
    assert speakable("-x \x00marks\x1b[1;31m the\x1b]0;title\x07 spot\u202e\ud800\u200b!\r\nBoo\x9b2J") == \
        "-x marks the spot! Boo"


@pytest.mark.parametrize("streaming", [True, False])
def test_a_reply_that_starts_with_a_dash_and_holds_control_characters_is_spoken(servers, streaming):
    llm = servers(LlamaCppFake(reply="-x marks the spot where I buried my\x00 brain.\x1b[31m Boo\x07 to you!"))
    cfg = config(llm.url, servers(WhisperCppFake()).url, streaming=streaming)
    got = answer(cfg)
    assert got.errors == []
    assert cfg.fallback.reply not in got.done.reply and cfg.fallback.tts not in got.done.reply
    assert got.done.reply == "-x marks the spot where I buried my brain. Boo to you!"
    assert " ".join(got.texts) == got.done.reply
    assert sum(got.seconds()) > 2.0


def test_no_voice_is_handed_control_characters(servers):
    llm = servers(LlamaCppFake(reply="Hello\x00 there\x1b[2J.\tHow\rare\x0b you\x7f?"))
    tts = servers(OpenAIAudioFake(flavor="kokoro"))
    cfg = config(llm.url, servers(WhisperCppFake()).url,
                 tts=StageConfig.of("tts", "openai", timeout_s=5.0, url=tts.url, voice="bm_george"))
    got = answer(cfg)
    assert got.errors == [] and got.texts == ["Hello there.", "How are you?"]
    inputs = [json.loads(body)["input"] for method, path, _, body in tts.requests if path == "/v1/audio/speech"]
    assert inputs == ["Hello there.", "How are you?"]


# --- long audio -------------------------------------------------------------------------------------

LONG = " ".join(["the bones of my ancestors rattle in the cellar every night"] * 50)
"""about 2 minutes of espeak-ng speech, without a single full stop"""


@pytest.mark.parametrize("streaming,play_rate", [(True, 0), (False, 48000)])
def test_a_2_minute_sentence_goes_out_in_several_segments(servers, streaming, play_rate):
    llm = servers(LlamaCppFake(reply=LONG))
    got = answer(config(llm.url, servers(WhisperCppFake()).url, streaming=streaming), play_rate=play_rate)
    seconds = got.seconds()
    assert got.errors == []
    assert 100 < sum(seconds) < REPLY_MAX_S, f"{sum(seconds):.1f} s"
    assert len(got.segments) >= 4 and got.done.segments == len(got.segments)
    assert [m.seq for m, _ in got.segments] == list(range(len(got.segments)))
    for (msg, pcm), s in zip(got.segments, seconds):
        assert len(pcm) <= p.MAX_BINARY_BYTES and s <= SEGMENT_MAX_S
        assert msg.rate == (play_rate or 22050)
        assert abs(len(msg.jaw) - s * msg.jaw_fps) <= 2  # each piece has its own jaw track
    assert " ".join(got.texts) == LONG == got.done.reply  # every word, shared out over the pieces


def test_a_reply_longer_than_the_cap_ends_at_the_cap(servers, caplog):
    llm = servers(LlamaCppFake(reply=" ".join([LONG + "."] * 3)))
    with caplog.at_level(logging.WARNING, logger="host.turn"):
        got = answer(config(llm.url, servers(WhisperCppFake()).url))
    total = sum(got.seconds())
    assert REPLY_MAX_S - 4 < total <= REPLY_MAX_S + 0.01, f"{total:.1f} s"
    assert got.done.segments == len(got.segments) and got.errors == []
    assert len(got.done.reply) < 2 * len(LONG)
    assert any(f"longer than {REPLY_MAX_S:g} s of speech" in r.getMessage() for r in caplog.records)


def test_a_segment_that_cannot_be_sent_ends_the_turn_with_an_error_and_done(servers):
    """A link that carries frames of at most 64 KiB: the second sentence's audio does not fit."""
    llm = servers(LlamaCppFake(reply="Boo! " + " ".join(["I am a very long sentence indeed"] * 12) + ". Bye now!"))
    cfg = config(llm.url, servers(WhisperCppFake()).url)
    sent = []

    async def small_link(msg, payload):
        frames = p.encode(msg, payload)
        if any(len(f) > 64 * 1024 for f in frames):
            raise ProtocolError(p.E_TOO_LARGE, f"frame of {max(map(len, frames))} bytes is over the 65536-byte limit")
        sent.append(msg)

    async def go():
        host = await start_host(cfg, build_backends(cfg))
        try:
            host.events.emit(ev.TurnStarted("bones", 1))
            turn = Turn(1, host.backends, host.config, skull="bones", events=host.events, timings=host.timings,
                        executor=host.executor)
            turn.on_audio(p.AudioStart(1, 16000, 2, 1), bytes(32000))
            await asyncio.wait_for(turn.run(small_link), 30)
        finally:
            await host.stop()
    asyncio.run(go())
    kinds = [m.type for m in sent]
    assert kinds[-1] == "done" and kinds.count("done") == 1
    speech = [m for m in sent if isinstance(m, p.Speech)]
    assert [m.text for m in speech] == ["Boo!"]
    [error] = [m for m in sent if isinstance(m, p.Error)]
    assert error.code == p.E_INTERNAL and "could not send segment 1 of turn 1" in error.message
    assert "65536-byte limit" in error.message and "the rest of the answer is skipped" in error.message
    assert sent[-1].segments == 1 and sent[-1].reply == "Boo!"


# --- a model server that is still starting -----------------------------------------------------------

def test_a_model_server_listening_3_s_after_the_turn_began_is_answered(servers):
    port = free_port()
    llm = LlamaCppFake(reply="Sorry, I was still waking up. Boo!", port=port)
    cfg = config(f"http://127.0.0.1:{port}", servers(WhisperCppFake()).url, reply_timeout_s=10.0)
    late = threading.Timer(3.0, lambda: servers(llm))
    try:
        got = answer(cfg, at_listen=late.start)
    finally:
        late.cancel()
    assert got.errors == []
    assert got.texts == ["Sorry, I was still waking up.", "Boo!"]
    assert got.listen_to_done_s > 3.0
    assert llm.requests, "the model server was never asked"


def test_a_server_that_stays_down_is_reported_and_then_refused_at_once():
    url = f"http://127.0.0.1:{free_port()}"
    http = Http("tts", "openai", url, timeout_s=1.5)
    t0 = time.monotonic()
    with pytest.raises(BackendError) as first:
        http.request("GET", "/health")
    waited = time.monotonic() - t0
    assert 1.0 < waited < 1.5, f"{waited:.2f} s"  # asked again and again, then named before the deadline
    assert first.value.retryable and f"openai at {url} is not reachable (connection refused, tried for" in \
        str(first.value) and "start it, or fix [tts.openai] url in host.toml" in str(first.value)
    t0 = time.monotonic()
    with pytest.raises(BackendError) as second:  # the next sentence of the turn does not wait again
        http.request("GET", "/health")
    assert time.monotonic() - t0 < 0.3
    assert "connection refused, as throughout the last request" in str(second.value)


def test_check_says_not_reachable_yet_with_the_url(servers):
    llm, stt = servers(LlamaCppFake()), servers(WhisperCppFake())
    url = f"http://127.0.0.1:{free_port()}"
    cfg = config(llm.url, stt.url, tts=StageConfig.of("tts", "openai", timeout_s=5.0, url=url, voice="bm_george"))
    t0 = time.monotonic()
    lines = check_backends(cfg, build_backends(cfg))
    assert time.monotonic() - t0 < 3.0  # a check reports, it does not wait for the server to start
    out = render(lines)
    [tts] = [ln for ln in out.splitlines() if ln.startswith("tts")]
    assert "DOWN" in tts and f"openai at {url} is not reachable (connection refused) yet" in tts, out
