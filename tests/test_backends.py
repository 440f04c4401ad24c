"""Contract tests: every server backend against the fake of its server, error shapes and quirks
included (whisper.cpp's 200-with-error body, llama.cpp's 503 while loading and its 500 for an
image without mmproj, Ollama's refusal of data URIs, WAV headers with unpatched sizes, Piper's
three API forms, XTTS's float WAV and its everything-is-500 errors)."""
from __future__ import annotations

import base64
import dataclasses
import json
import logging
import sys
import time

import numpy as np
import pytest
import requests

from host.backends import ReplyContext
from host.build import build_backends, build_stage
from host.config import HostConfig, StageConfig
from host.fakes import Knobs, LlamaCppFake, OllamaFake, OpenAIAudioFake, PiperFake, WhisperCppFake, XttsFake, tokens
from host.http import error_message
from skull.core.wav import read_wav, to_mono
from skull.core.data import bundled
from skull.core.errors import BackendError, ConfigError

QUESTION = to_mono(read_wav(bundled("question.wav")))
SNAPSHOT = bundled("snapshot.jpg").read_bytes()
FAIL = Knobs(failure_rate=1.0)
CRASH = Knobs(crash_rate=1.0)


def make(stage: str, backend: str, url: str, *, sees_images: bool = False, timeout_s: float = 5.0, **settings):
    """The backend ``backend`` of ``stage`` on the server at ``url``, built as host.toml would build it."""
    cfg = StageConfig.of(stage, backend, timeout_s=timeout_s, retries=0, url=url, **settings)
    return build_stage(cfg, sees_images)


@pytest.fixture
def fake(request):
    servers = []

    def start(cls, *args, **kw):
        s = cls(*args, **kw).start()
        servers.append(s)
        return s
    yield start
    for s in servers:
        s.stop()


def free_url() -> str:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# --- error bodies -----------------------------------------------------------------------------

@pytest.mark.parametrize("body,ctype,expected", [
    ('{"error":{"code":500,"message":"boom","type":"server_error"}}', "application/json", "boom"),
    ('{"error":"model \'x\' not found"}', "application/json", "model 'x' not found"),
    ('{"detail":"Error: Speaker skull not found."}', "application/json", "Error: Speaker skull not found."),
    ('{"detail":{"error":"validation_error","message":"Voice \'zz\' not found"}}', "application/json",
     "Voice 'zz' not found"),
    ('{"detail":[{"loc":["body","input"],"msg":"Field required"}]}', "application/json", "body.input: Field required"),
    ('{"message":"No such model","code":400}', "application/json", "No such model"),
    ("<!doctype html><title>500 Internal Server Error</title><h1>Internal Server Error</h1>", "text/html",
     "500 Internal Server Error Internal Server Error"),
    ("Invalid request", "text/plain", "Invalid request"),
])
def test_error_message_reads_every_server_shape(body, ctype, expected):
    resp = requests.Response()
    resp.status_code, resp._content = 500, body.encode()
    resp.headers["Content-Type"] = ctype
    assert error_message(resp) == expected


def test_dead_server_is_named_with_what_to_do():
    url = free_url()
    with pytest.raises(BackendError) as e:
        make("stt", "whisper.cpp", url).transcribe(QUESTION, 16000)
    assert e.value.retryable and "whisper.cpp" in str(e.value) and url in str(e.value)
    assert "connection refused" in str(e.value) and "start it" in str(e.value)


# --- whisper.cpp ------------------------------------------------------------------------------

def test_whisper_transcribes_a_wav_as_multipart(fake):
    srv = fake(WhisperCppFake, transcript="nice costume")
    stt = make("stt", "whisper.cpp", srv.url)
    assert stt.transcribe(QUESTION, 16000) == "nice costume"
    method, path, headers, body = srv.requests[-1]
    assert (method, path) == ("POST", "/inference") and headers["Content-Type"].startswith("multipart/form-data")
    assert b'name="file"' in body and b"RIFF" in body and b'name="response_format"' in body
    assert stt.check() == "ready"


def test_whisper_old_server_200_with_error_body_is_an_error(fake):
    srv = fake(WhisperCppFake, legacy_errors=True)
    r = requests.post(srv.url + "/inference", files={"file": ("a.wav", b"not audio", "audio/wav")})
    assert r.status_code == 200 and r.json() == {"error": "failed to read audio data"}
    stt = make("stt", "whisper.cpp", srv.url)
    assert stt.transcribe(QUESTION, 16000) == "what do you think of my costume"  # good audio still works
    # whatever the server disliked, the backend sees the error key on a 200 and does not take it for words
    srv.handle = lambda h: srv._bad(h, "failed to read audio data")
    with pytest.raises(BackendError, match="refused the audio: failed to read audio data") as e:
        stt.transcribe(QUESTION, 16000)
    assert not e.value.retryable


def test_whisper_current_errors(fake):
    srv = fake(WhisperCppFake)
    r = requests.post(srv.url + "/inference", files={"file": ("a.wav", b"not audio", "audio/wav")})
    assert (r.status_code, r.text) == (400, "Invalid request")
    r = requests.post(srv.url + "/inference", data={"temperature": "0.0"})
    assert (r.status_code, r.text) == (400, "Invalid request")
    r = requests.get(srv.url + "/nowhere")
    assert (r.status_code, r.text) == (404, "File Not Found (/nowhere)")
    failing = fake(WhisperCppFake, FAIL)
    with pytest.raises(BackendError, match="HTTP 500: failed to process audio") as e:
        make("stt", "whisper.cpp", failing.url).transcribe(QUESTION, 16000)
    assert e.value.retryable
    crashing = fake(WhisperCppFake, CRASH)
    with pytest.raises(BackendError) as e:
        make("stt", "whisper.cpp", crashing.url).transcribe(QUESTION, 16000)
    assert e.value.retryable and "closed without answering" in str(e.value)


# --- OpenAI-compatible transcription (speaches) -----------------------------------------------

def test_openai_transcription_needs_model_and_names_a_missing_one(fake):
    srv = fake(OpenAIAudioFake, flavor="speaches", transcript="boo")
    assert make("stt", "openai", srv.url, model="Systran/faster-whisper-small").transcribe(QUESTION, 16000) == "boo"
    assert make("stt", "openai", srv.url, model="whisper-1").transcribe(QUESTION, 16000) == "boo"  # alias
    with pytest.raises(BackendError, match="not installed locally.*check \\[stt.openai\\] model"):
        make("stt", "openai", srv.url, model="large-v9").transcribe(QUESTION, 16000)
    with pytest.raises(ConfigError, match=r"\[stt.openai\]: model = '' .*needs a model"):
        make("stt", "openai", srv.url)
    r = requests.post(srv.url + "/v1/audio/transcriptions", data={"model": "whisper-1"},
                      files={"file": ("a.mp3", b"garbage", "audio/mpeg")})
    assert r.status_code == 415 and "Failed to decode audio" in r.json()["detail"]
    r = requests.post(srv.url + "/v1/audio/transcriptions", files={"file": ("a.wav", b"x", "audio/wav")})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "model"]


# --- llama.cpp --------------------------------------------------------------------------------

def ctx(image: bytes | None = None) -> ReplyContext:
    return ReplyContext("do you like my costume", "two faces", (("hello", "Boo!"),), image)


def test_llama_streams_the_reply_as_sse_and_sends_the_picture_as_a_data_uri(fake):
    srv = fake(LlamaCppFake, reply="Ooh, spooky! Nice {heard}. Bye now.")
    llm = make("reply", "openai-chat", srv.url, sees_images=True)
    pieces = list(llm.stream(ctx(SNAPSHOT)))
    assert pieces == tokens("Ooh, spooky! Nice do you like my costume. Bye now.")
    body = json.loads(srv.requests[-1][3])
    assert body["stream"] is True and body["max_tokens"] == 120
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    parts = body["messages"][-1]["content"]
    assert parts[0]["type"] == "text" and "do you like my costume" in parts[0]["text"]
    assert parts[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert base64.b64decode(parts[1]["image_url"]["url"].split(",", 1)[1]) == SNAPSHOT
    assert llm.check() == "model fake-vision-model.gguf"
    assert llm.reply(ctx()) == "Ooh, spooky! Nice do you like my costume. Bye now."


def test_llama_without_mmproj_is_detected_and_the_turn_goes_on_without_the_picture(fake, caplog):
    srv = fake(LlamaCppFake, mmproj=False, reply="Boo!")
    r = requests.post(srv.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}}]}]})
    assert r.status_code == 500 and "image input is not supported" in r.json()["error"]["message"]
    llm = make("reply", "openai-chat", srv.url, sees_images=True)
    with caplog.at_level(logging.ERROR, logger="host.llm"):
        assert "".join(llm.stream(ctx(SNAPSHOT))) == "Boo!"
        assert "".join(llm.stream(ctx(SNAPSHOT))) == "Boo!"
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "cannot take images" in said[0] and "--mmproj" in said[0]
    assert "image_url" not in srv.requests[-1][3].decode()  # asked again, words only
    with pytest.raises(BackendError, match="cannot take images \\(no mmproj\\)"):
        llm.check()
    with pytest.raises(BackendError, match="cannot take images"):
        make("vision", "openai-chat", srv.url, sees_images=True).caption(SNAPSHOT)


def test_llama_loading_503_is_waited_out(fake):
    srv = fake(LlamaCppFake, Knobs(loading_s=0.8), reply="Ready!")
    r = requests.get(srv.url + "/health")
    assert r.status_code == 503 and r.json() == {"error": {"code": 503, "message": "Loading model",
                                                           "type": "unavailable_error"}}
    t0 = time.monotonic()
    assert "".join(make("reply", "openai-chat", srv.url).stream(ctx())) == "Ready!"
    assert time.monotonic() - t0 >= 0.5
    still = fake(LlamaCppFake, Knobs(loading_s=30))
    with pytest.raises(BackendError, match="still loading its model") as e:
        make("reply", "openai-chat", still.url, timeout_s=0.6).reply(ctx())
    assert e.value.retryable


def test_llama_failures_before_and_during_the_stream(fake):
    srv = fake(LlamaCppFake, Knobs(failure_rate=1.0, seed=3), reply="One two three four five six seven eight.")
    seen = set()
    for _ in range(6):
        with pytest.raises(BackendError) as e:
            list(make("reply", "openai-chat", srv.url).stream(ctx()))
        assert e.value.retryable
        seen.add("mid-stream" in str(e.value))
    assert seen == {True, False}  # both the plain 500 and the error event after streaming began
    crashing = fake(LlamaCppFake, Knobs(crash_rate=1.0), reply="One two three four five six seven eight.")
    with pytest.raises(BackendError, match="dropped the connection mid-answer|closed without answering"):
        list(make("reply", "openai-chat", crashing.url).stream(ctx()))


def test_llama_caption_model(fake):
    srv = fake(LlamaCppFake, reply="A witch and a vampire in purple light.")
    cap = make("vision", "openai-chat", srv.url, sees_images=True)
    assert cap.caption(SNAPSHOT) == "A witch and a vampire in purple light."
    body = json.loads(srv.requests[-1][3])
    assert body["stream"] is False and "Describe in one short sentence" in body["messages"][0]["content"]


# --- Ollama -----------------------------------------------------------------------------------

def test_ollama_streams_ndjson_with_plain_base64_images(fake):
    srv = fake(OllamaFake, reply="Eek! A {heard}.")
    llm = make("reply", "ollama", srv.url, model="llava:7b", sees_images=True)
    assert "".join(llm.stream(ctx(SNAPSHOT))) == "Eek! A do you like my costume."
    body = json.loads(srv.requests[-1][3])
    image = body["messages"][-1]["images"][0]
    assert not image.startswith("data:") and base64.b64decode(image) == SNAPSHOT
    assert body["options"]["num_predict"] == 120 and body["stream"] is True
    assert llm.check() == "model llava:7b"


def test_ollama_refuses_data_uris_and_unknown_models(fake):
    srv = fake(OllamaFake)
    r = requests.post(srv.url + "/api/chat", json={"model": "llava:7b", "messages": [
        {"role": "user", "content": "hi", "images": ["data:image/jpeg;base64,/9j/4AAQ"]}]})
    assert (r.status_code, r.json()) == (400, {"error": "illegal base64 data at input byte 4"})
    with pytest.raises(BackendError, match="model 'mistral' not found"):
        make("reply", "ollama", srv.url, model="mistral").reply(ctx())
    with pytest.raises(ConfigError, match=r"\[reply.ollama\]: model = '' .*ollama needs a model"):
        make("reply", "ollama", srv.url)


def test_ollama_text_model_with_a_picture_is_caught_by_its_capabilities(fake, caplog):
    srv = fake(OllamaFake, reply="Hello {heard}!")
    llm = make("reply", "ollama", srv.url, model="llama3.2:3b", sees_images=True)
    with caplog.at_level(logging.ERROR, logger="host.llm"):
        assert "".join(llm.stream(ctx(SNAPSHOT))).startswith("Hello")
    assert "cannot take images" in caplog.text and "pull a vision model" in caplog.text
    assert "images" not in json.loads(srv.requests[-1][3])["messages"][-1]
    with pytest.raises(BackendError, match="cannot take images"):
        llm.check()


def test_ollama_mid_stream_error_line(fake):
    srv = fake(OllamaFake, Knobs(failure_rate=1.0, seed=1), reply="One two three four five six seven.")
    messages = set()
    for _ in range(6):
        with pytest.raises(BackendError) as e:
            list(make("reply", "ollama", srv.url, model="llava:7b").stream(ctx()))
        messages.add("mid-stream" in str(e.value))
        assert "llama runner process has terminated" in str(e.value)
    assert messages == {True, False}


# --- voices -----------------------------------------------------------------------------------

def _speechy(speech, min_s=0.4):
    assert speech.samples.dtype == np.float32 and len(speech.samples) / speech.rate > min_s
    assert 0.05 < float(np.max(np.abs(speech.samples))) <= 1.0


def test_kokoro_wav_stream_with_unpatched_header_and_pcm(fake):
    srv = fake(OpenAIAudioFake, flavor="kokoro")
    r = requests.post(srv.url + "/v1/audio/speech", json={"input": "Boo to you.", "response_format": "wav"})
    assert r.headers["Transfer-Encoding"] == "chunked" and r.content[4:8] == b"\0\0\0\0"  # sizes never patched
    wav = make("tts", "openai", srv.url, voice="bm_george").synthesize("Boo to you, my friend.")
    assert wav.rate == 24000
    _speechy(wav)
    pcm = make("tts", "openai", srv.url, format="pcm").synthesize("Boo to you, my friend.")
    assert pcm.rate == 24000 and abs(len(pcm.samples) - len(wav.samples)) < 2400
    body = json.loads(srv.requests[-1][3])
    assert body["response_format"] == "pcm" and body["voice"] == "af_heart" and body["model"] == "tts-1"


def test_speech_errors_name_the_voice_and_range(fake):
    srv = fake(OpenAIAudioFake, flavor="kokoro")
    with pytest.raises(BackendError, match="Voice 'zz_nobody' not found"):
        make("tts", "openai", srv.url, voice="zz_nobody").synthesize("Hi.")
    r = requests.post(srv.url + "/v1/audio/speech", json={"input": "hi", "speed": 9})
    assert r.status_code == 422
    with pytest.raises(BackendError, match="invalid_model|Unsupported model"):
        make("tts", "openai", srv.url, model="gpt-9").synthesize("Hi.")


def test_speaches_voice_pcm_at_the_requested_rate(fake):
    srv = fake(OpenAIAudioFake, flavor="speaches")
    tts = make("tts", "openai", srv.url, model="speaches-ai/Kokoro-82M-v1.0-ONNX", voice="af_heart", format="pcm",
               sample_rate=16000)
    speech = tts.synthesize("Hello there, mortal.")
    assert speech.rate == 16000
    _speechy(speech)


@pytest.mark.parametrize("api", ["synthesize", "json-root", "text"])
def test_piper_every_api_form_is_found_and_content_type_ignored(fake, api):
    srv = fake(PiperFake, api=api, rate=22050)
    tts = make("tts", "piper", srv.url, speed=1.25)
    speech = tts.synthesize("Welcome to my crypt.")
    assert tts.api == api and speech.rate == 22050
    _speechy(speech)
    if api != "text":
        assert json.loads(srv.requests[-1][3])["length_scale"] == 0.8
    assert requests.post(srv.url + ("/synthesize" if api == "synthesize" else "/"),
                         json={"text": "x"}).headers["Content-Type"].startswith("text/html")


def test_piper_errors_are_flask_pages_read_as_text(fake):
    srv = fake(PiperFake, FAIL)
    with pytest.raises(BackendError, match="HTTP 500: 500 Internal Server Error"):
        make("tts", "piper", srv.url, api="synthesize").synthesize("Hi.")


def test_xtts_float_wav_and_its_500_errors(fake, tmp_path):
    srv = fake(XttsFake, speakers=("skull",))
    speech = make("tts", "xtts", srv.url, speaker_wav="skull", language="en").synthesize("I am the voice of doom.")
    assert speech.rate == 24000
    _speechy(speech)
    assert requests.post(srv.url + "/tts_to_audio/", json={"text": "a", "speaker_wav": "skull",
                                                           "language": "en"}).content[20:22] == b"\x03\x00"  # float
    with pytest.raises(BackendError, match="Speaker nobody not found"):
        make("tts", "xtts", srv.url, speaker_wav="nobody").synthesize("Hi.")
    with pytest.raises(BackendError, match="Language code sent is either unsupported"):
        make("tts", "xtts", srv.url, speaker_wav="skull", language="xx").synthesize("Hi.")
    with pytest.raises(BackendError, match="has no speaker 'nobody'"):
        make("tts", "xtts", srv.url, speaker_wav="nobody").check()
    with pytest.raises(ConfigError, match=r"\[tts.xtts\]: speaker_wav = '' .*needs a voice to clone"):
        make("tts", "xtts", srv.url)
    voice = tmp_path / "me.wav"
    voice.write_bytes(b"RIFF")
    assert make("tts", "xtts", srv.url, speaker_wav=str(voice)).synthesize("Hi.").rate == 24000  # absolute path


# --- the knobs --------------------------------------------------------------------------------

def test_fake_delay_per_unit_and_warmup(fake):
    srv = fake(PiperFake, Knobs(delay_s=0.2, per_unit_s=0.1, warmup_s=0.5))
    tts = make("tts", "piper", srv.url, api="synthesize")
    t0 = time.monotonic()
    first = tts.synthesize("One short line.")
    t1 = time.monotonic()
    tts.synthesize("One short line.")
    t2 = time.monotonic()
    audio_s = len(first.samples) / first.rate
    assert t1 - t0 >= 0.7 + 0.1 * audio_s  # warm-up on the first call only
    assert 0.2 + 0.1 * audio_s <= t2 - t1 < 0.7


def test_a_fake_answers_a_kept_alive_client_when_its_wait_is_over(fake):
    """Its headers and body go out together: a client on a kept-alive connection acknowledges
    late, and a body held back for that acknowledgement came ~40 ms after the modelled wait."""
    srv = fake(WhisperCppFake)
    stt = make("stt", "whisper.cpp", srv.url)
    stt.transcribe(QUESTION, 16000)
    took = []
    for _ in range(9):
        t0 = time.monotonic()
        stt.transcribe(QUESTION, 16000)
        took.append(time.monotonic() - t0)
    assert sorted(took)[4] < 0.025, f"median {sorted(took)[4] * 1000:.0f} ms for an answer modelled at 0 ms"


# --- building from host.toml ------------------------------------------------------------------

def test_shipped_examples_build(tmp_path):
    from pathlib import Path
    from host.config import load_host_config
    root = Path(__file__).resolve().parent.parent / "host" / "examples"
    names = sorted(p.name for p in root.glob("*.toml"))
    assert names == ["caption-xtts.toml", "embedded.toml", "ollama-speaches.toml", "two-servers.toml",
                     "whisper-llama-kokoro.toml", "wyoming.toml"]
    for name in names:
        b = build_backends(load_host_config(root / name))
        assert b.fallback_voice is not None
    b = build_backends(load_host_config(root / "whisper-llama-kokoro.toml"))
    assert (b.stt.name, b.vision, b.reply.name, b.reply.sees_images, b.tts.name) == \
        ("whisper.cpp", None, "openai-chat", True, "openai")
    b = build_backends(load_host_config(root / "two-servers.toml"))
    assert [b.stt.http.urls, b.reply.http.urls, b.tts.http.urls] == \
        [(f"http://gpu-a:{port}", f"http://gpu-b:{port}") for port in (8081, 8080, 8880)]


def test_bad_backend_config_is_named(tmp_path):
    from host.config import load_host_config
    path = tmp_path / "host.toml"
    path.write_text("[reply]\nbackend = 'gpt'\n")
    with pytest.raises(ConfigError, match=r"\[reply\]: backend = 'gpt'.*jokes, openai-chat, ollama"):
        load_host_config(path)
    path.write_text("[stt]\nbackend = 'whisper.cpp'\n")
    with pytest.raises(ConfigError, match=r"\[stt.\"whisper.cpp\"\]: url = ''.*needs the server's address, e.g. "):
        load_host_config(path)
    with pytest.raises(ConfigError, match=r"\[reply.jokes\]: .*needs a reply model that looks at pictures"):
        build_backends(dataclasses.replace(HostConfig(), vision=StageConfig.of("vision", "reply")))


# --- a backend added as one module ------------------------------------------------------------

TONE_MODULE = '''"""A voice that hums one tone per word."""
from dataclasses import dataclass

import numpy as np

from host.backends import Speech
from host.backends.registry import BackendContext, backend
from skull.core.validate import need


@dataclass(frozen=True)
class ToneSettings:
    frequency_hz: float = 220.0
    """the pitch of the hum"""
    seconds_per_word: float = 0.25

    def check(self, where: str) -> None:
        need(50 <= self.frequency_hz <= 2000, where, "frequency_hz", self.frequency_hz, "must be 50..2000 Hz")


@backend("tone", "tts", settings=ToneSettings)
class ToneTTS:
    name = "tone"
    rate = 16000

    def __init__(self, settings: ToneSettings, ctx: BackendContext):
        self.settings = settings

    def synthesize(self, text: str) -> Speech:
        t = np.arange(int(len(text.split()) * self.settings.seconds_per_word * self.rate)) / self.rate
        return Speech((0.5 * np.sin(2 * np.pi * self.settings.frequency_hz * t)).astype(np.float32), self.rate)

    def check(self) -> str:
        return f"a {self.settings.frequency_hz:g} Hz hum"
'''


@pytest.fixture
def backend_folder(tmp_path, monkeypatch):
    """A folder that is part of the host.backends package for one test."""
    import host.backends
    from host.backends import registry
    folder = tmp_path / "more_backends"
    folder.mkdir()
    monkeypatch.setattr(host.backends, "__path__", [*host.backends.__path__, str(folder)])
    monkeypatch.setattr(registry, "_ENTRIES", {stage: dict(e) for stage, e in registry._ENTRIES.items()})
    yield folder
    sys.modules.pop("host.backends.tone", None)


def test_a_backend_module_dropped_into_the_package_is_usable_from_host_toml(backend_folder, tmp_path):
    from host.backends.registry import names
    from host.check import check_backends
    from host.config import load_host_config
    (backend_folder / "tone.py").write_text(TONE_MODULE)
    assert names("tts") == ("espeak-ng", "openai", "piper", "xtts", "piper-local", "wyoming", "tone")
    path = tmp_path / "host.toml"
    path.write_text('[tts]\nbackend = "tone"\n\n[tts.tone]\nfrequency_hz = 440\n')
    config = load_host_config(path)
    backends = build_backends(config)
    speech = backends.tts.synthesize("boo to you")
    assert speech.rate == 16000 and len(speech.samples) == 3 * 4000  # three words, a quarter second each
    peak_hz = np.argmax(np.abs(np.fft.rfft(speech.samples))) * speech.rate / len(speech.samples)
    assert abs(peak_hz - 440) < 2
    tts = next(ln for ln in check_backends(config, backends) if ln.stage == "tts")
    assert (tts.backend, tts.status, tts.detail, tts.url) == ("tone", "up", "a 440 Hz hum", "")
    # its table is checked like any other
    path.write_text('[tts]\nbackend = "tone"\n\n[tts.tone]\nfrequency = 440\n')
    with pytest.raises(ConfigError, match=r"\[tts.tone\]: unknown key 'frequency'; known keys: frequency_hz, "
                                          r"seconds_per_word"):
        load_host_config(path)
    path.write_text('[tts]\nbackend = "tone"\nfrequency_hz = 20\n')
    with pytest.raises(ConfigError, match=r"\[tts\]: frequency_hz is a setting .* here \[tts.tone\]"):
        load_host_config(path)
    path.write_text('[tts]\nbackend = "tone"\n\n[tts.tone]\nfrequency_hz = 20\n')
    with pytest.raises(ConfigError, match=r"\[tts.tone\]: frequency_hz = 20.0 is out of range: must be 50..2000 Hz"):
        load_host_config(path)


# --- how requests go out (host/http.py) -------------------------------------------------------

class _Recorder:
    """A plain HTTP server (or proxy) that records each request line, its headers and body and
    answers 200 with a JSON body, or what ``answer`` says."""

    def __init__(self, answer=None):
        import http.server
        import threading
        seen = self.seen = []
        reply = answer or (lambda h: (200, {"Content-Type": "application/json"}, b'{"text": "boo"}'))

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                seen.append((self.command, self.path, dict(self.headers), self.rfile.read(n) if n else b"",
                             self.client_address[1]))
                status, headers, body = reply(self)
                self.send_response(status)
                for k, v in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
            do_GET = do_POST = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder():
    made = []

    def start(answer=None):
        made.append(_Recorder(answer))
        return made[-1]
    yield start
    for r in made:
        r.close()


def test_requests_go_out_as_requests_sends_them_over_one_kept_connection(recorder):
    from host.http import Http
    srv = recorder()
    http = Http("stt", "openai", srv.url + "/prefix", api_key="k3y")
    assert http.json("POST", "/form", data={"model": "m", "language": "en"},
                     files={"file": ("q.wav", b"RIFFdata", "audio/wav")}) == {"text": "boo"}
    http.request("POST", "/json", json={"input": "hi", "speed": 1.5})
    http.request("POST", "/raw", data=b"plain words", headers={"Content-Type": "text/plain"})
    http.request("GET", "/q", params={"text": "a b&c"})
    form, js, raw, get = srv.seen
    assert [s[1] for s in srv.seen] == ["/prefix/form", "/prefix/json", "/prefix/raw", "/prefix/q?text=a+b%26c"]
    assert len({s[4] for s in srv.seen}) == 1, "every request reuses the one kept-alive connection"
    for _, _, headers, _, _ in srv.seen:
        assert headers["Authorization"] == "Bearer k3y" and headers["User-Agent"].startswith("python-requests/")
    assert form[2]["Content-Type"].startswith("multipart/form-data; boundary=")
    assert b'name="model"\r\n\r\nm\r\n' in form[3] and b'filename="q.wav"' in form[3] and b"RIFFdata" in form[3]
    assert js[2]["Content-Type"] == "application/json" and json.loads(js[3]) == {"input": "hi", "speed": 1.5}
    assert raw[2]["Content-Type"] == "text/plain" and raw[3] == b"plain words"


def test_a_proxy_in_the_environment_is_used_and_no_proxy_honoured(recorder, monkeypatch):
    from host.http import Http
    proxy, target = recorder(), recorder()
    monkeypatch.setenv("http_proxy", proxy.url)
    monkeypatch.setenv("no_proxy", "")
    Http("llm", "openai", "http://gpu-box.invalid:8080").request("GET", "/health")
    assert proxy.seen[0][1] == "http://gpu-box.invalid:8080/health", "sent to the proxy with the whole address"
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    Http("llm", "openai", target.url).request("GET", "/health")
    assert target.seen[0][1] == "/health" and len(proxy.seen) == 1


def test_a_user_and_password_in_the_address_are_sent_and_a_bad_address_is_named(recorder):
    from host.http import Http
    srv = recorder()
    Http("stt", "openai", srv.url.replace("http://", "http://skull:b00@") + "/whisper").request("GET", "/health")
    assert srv.seen[0][1] == "/whisper/health"
    assert srv.seen[0][2]["Authorization"] == "Basic " + base64.b64encode(b"skull:b00").decode()
    with pytest.raises(ConfigError) as e:
        make("stt", "whisper.cpp", "http://gpu-box:80a")
    assert "[stt.\"whisper.cpp\"] url" in str(e.value) and "gpu-box:80a" in str(e.value)


def test_a_redirect_is_named_with_where_it_points(recorder):
    from host.http import Http
    srv = recorder(lambda h: (308, {"Location": "https://gpu-box:8443/v1/chat/completions"}, b""))
    with pytest.raises(BackendError) as e:
        Http("llm", "openai", srv.url).request("POST", "/v1/chat/completions", json={})
    assert "https://gpu-box:8443/v1/chat/completions" in str(e.value) and "[llm.openai] url" in str(e.value)
    assert len(srv.seen) == 1, "not sent on"
