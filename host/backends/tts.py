"""Text to speech. Embedded default: espeak-ng (a Debian package), kept running in speaker
processes that load its library once (host.espeak; the program is run for each sentence where
the library cannot load). Over
HTTP: OpenAI-compatible /v1/audio/speech (Kokoro-FastAPI, speaches, openedai-speech, LocalAI),
Piper's HTTP server (all three of its API forms) and xtts-api-server (voice cloning from a
speaker WAV). Whatever rate and sample format a voice produces, the result is mono float audio
with its rate; the host resamples it to what the skull plays.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from skull.core.wav import pcm16_to_audio, read_wav, to_mono
from skull.core.errors import AudioFormatError, BackendError
from skull.core.validate import need

from .. import espeak
from ..cores import every_core
from ..http import content_bytes
from ..text import speakable
from . import Speech
from .registry import BackendContext, HttpSettings, backend

ESPEAK_WPM = 155
"""espeak-ng words per minute at speed 1.0: a slow, deliberate skull"""
ESPEAK_RATE = 22050
"""Hz: what espeak-ng's voices produce"""
USE_LIBRARY = os.environ.get("SKULL_ESPEAK") != "program"
"""speak through the speaker processes where libespeak-ng loads; ``SKULL_ESPEAK=program`` in the
environment runs the program for every sentence instead (bench/embedded_scale.py compares them)"""


def _wav_speech(data: bytes, where: str, stage: str) -> Speech:
    try:
        audio = read_wav(data, name=f"audio from {where}")  # tolerates unpatched streaming headers
    except AudioFormatError as exc:
        raise BackendError(stage, str(exc), retryable=True) from None
    return Speech(to_mono(audio), audio.rate)


def _check_speed(speed: float, where: str) -> None:
    need(0.25 <= speed <= 4.0, where, "speed", speed, "must be 0.25..4.0 (1.0 normal, 0.5 half, 2.0 double)")


_VOICES: dict[tuple[str, str], frozenset[str] | None] = {}
_VOICES_LOCK = threading.Lock()


def _espeak_names(binary: str, which: str) -> frozenset[str] | None:
    """Every name ``espeak-ng -v`` takes for a voice (``which`` = "") or a variant ("variant"):
    language codes, voice names, file names, lower-cased; None when the list cannot be had
    (then nothing is refused). Asked once per binary."""
    with _VOICES_LOCK:
        if (binary, which) not in _VOICES:
            option = "--voices=variant" if which else "--voices"
            try:
                out = subprocess.run([binary, option], capture_output=True, timeout=10, check=False)
                lines = out.stdout.decode("utf-8", errors="replace").splitlines()[1:] if out.returncode == 0 else []
            except (OSError, subprocess.TimeoutExpired):
                lines = []
            names = set()
            for line in lines:
                words = line.split()
                if len(words) < 5:
                    continue
                lang, voice_name = words[1], words[3]
                file = " ".join(w for w in words[4:] if not w.startswith("(") and not w[0].isdigit())
                names.update({lang, voice_name, voice_name.replace("_", " "), file, file.rsplit("/", 1)[-1]})
                names.update(re.findall(r"\((\S+) \d+\)", line))
            _VOICES[(binary, which)] = frozenset(n.lower() for n in names if n) if names else None
        return _VOICES[(binary, which)]


def espeak_voice_problem(binary: str, voice: str) -> str | None:
    """Why espeak-ng would not speak with ``voice`` ("en-us+m3": a voice, then an optional
    variant), or None when it would. espeak-ng itself falls back to its default voice without a
    word for a name it does not know; this says so instead."""
    base, _, variant = voice.partition("+")
    voices, variants = _espeak_names(binary, ""), _espeak_names(binary, "variant")
    if voices is not None and base.lower() not in voices:
        return (f"voice {voice!r}: espeak-ng has no voice {base!r}; 'espeak-ng --voices' lists them "
                f"(e.g. 'en-us', 'en-gb', 'de')")
    if variant and variants is not None and variant.lower() not in variants:
        return (f"voice {voice!r}: espeak-ng has no variant {variant!r}; 'espeak-ng --voices=variant' lists "
                f"them (e.g. 'm3', 'f2', 'klatt')")
    return None


@dataclass(frozen=True)
class EspeakSettings:
    """``[tts.espeak-ng]``: the embedded voice."""
    voice: str = "en-us+m3"
    """an espeak-ng voice and variant ('espeak-ng --voices' lists them)"""
    speed: float = 1.0
    """speaking speed: 1.0 = 155 words per minute, 0.5 half, 2.0 double"""
    pitch: int = 35
    """0..99; 50 is espeak-ng's own default, lower is more sepulchral"""

    def check(self, where: str) -> None:
        need(bool(self.voice), where, "voice", self.voice, "an espeak-ng voice such as 'en-us+m3'")
        _check_speed(self.speed, where)
        need(0 <= self.pitch <= 99, where, "pitch", self.pitch, "must be 0..99")


@backend("espeak-ng", "tts", settings=EspeakSettings, default=True)
class EspeakTTS:
    """espeak-ng's robotic voice suits a skull, spoken by the speaker processes (host.espeak) or,
    where its library cannot load, by the program run for each sentence, within the stage's timeout."""

    name = "espeak-ng"

    def __init__(self, settings: EspeakSettings, ctx: BackendContext):
        self.binary = shutil.which("espeak-ng") or shutil.which("espeak")
        if self.binary is None:
            raise BackendError(ctx.stage, "espeak-ng is not installed; install it with 'sudo apt-get install "
                                          "espeak-ng' (make demo and make test do this for you)")
        self.voice, self.pitch, self.timeout_s = settings.voice, settings.pitch, ctx.timeout_s
        self.wpm, self.stage = round(ESPEAK_WPM * settings.speed), ctx.stage
        self.voice_problem = espeak_voice_problem(self.binary, self.voice)
        """why the voice cannot be used (the stage is down: its turns get the fallback voice), or None"""
        self.speakers = espeak.speakers() if USE_LIBRARY else None
        """this process's espeak-ng speakers (the first started now: the first visitor's sentence
        does not wait for it), or None: the program is run for each sentence"""
        self.computes_here = self.speakers is None
        """False: the speech is made in other processes; this one only waits (host.server.heavy_stages)"""
        if self.speakers is not None and not self.voice_problem:
            try:  # the voice loads now, not in the first visitor's sentence
                self.speakers.speak("", self.voice, self.wpm, self.pitch, self.timeout_s)
            except espeak.SpeakerError as exc:
                if exc.kind == "voice":
                    self.voice_problem = f"{exc}; 'espeak-ng --voices' lists them (e.g. 'en-us', 'en-gb', 'de')"

    def synthesize(self, text: str) -> Speech:
        """The text spoken; no audio at all when nothing speakable is left of it. The text goes to
        the library as it is or to the program on standard input, never on its command line, so a
        sentence that starts with ``-`` is spoken, not taken for an option, and no length of it
        meets the command line's limit."""
        if self.voice_problem:  # never the default voice in its place without a word
            raise BackendError(self.stage, self.voice_problem)
        text = speakable(text)
        if not text:
            return Speech(np.zeros(0, np.float32), ESPEAK_RATE)
        if self.speakers is not None:
            try:
                pcm = self.speakers.speak(text, self.voice, self.wpm, self.pitch, self.timeout_s)
            except espeak.SpeakerError as exc:
                if exc.kind == "voice":
                    raise BackendError(self.stage, f"{exc}; 'espeak-ng --voices' lists them") from None
                raise BackendError(self.stage, str(exc), retryable=exc.kind == "failed") from None
            return Speech(to_mono(pcm16_to_audio(pcm, self.speakers.rate)), self.speakers.rate)
        cmd = [self.binary, "--stdout", "--stdin", "-v", self.voice, "-s", str(self.wpm), "-p", str(self.pitch)]
        with every_core():  # it computes: every core, even when the host's own threads keep to one
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with proc:  # as subprocess.run: never left running, its pipes closed
            try:
                stdout, stderr = proc.communicate(text.encode("utf-8"), timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise BackendError(self.stage, f"espeak-ng took longer than {self.timeout_s} s") from None
            except BaseException:
                proc.kill()
                raise
        if proc.returncode != 0 or not stdout:
            raise BackendError(self.stage, f"espeak-ng failed (exit {proc.returncode}): "
                                           f"{stderr.decode(errors='replace').strip()[:200]}")
        audio = read_wav(stdout, name="espeak-ng output")  # its header has placeholder sizes
        return Speech(to_mono(audio), audio.rate)

    def check(self) -> str:
        if self.voice_problem:
            raise BackendError(self.stage, self.voice_problem)
        how = f"libespeak-ng {self.speakers.version}" if self.speakers is not None else self.binary
        return f"embedded ({how}, voice {self.voice})"


@dataclass(frozen=True)
class OpenAISpeechSettings(HttpSettings):
    """``[tts.openai]``: an OpenAI-compatible speech server (Kokoro-FastAPI, speaches...)."""
    model: str = "tts-1"
    """the speech model: 'kokoro' (Kokoro-FastAPI), 'speaches-ai/Kokoro-82M-v1.0-ONNX' (speaches)..."""
    voice: str = "af_heart"
    """the server's voice name; Kokoro mixes voices with '+', e.g. 'af_bella+af_sky'"""
    speed: float = 1.0
    """speaking speed: 1.0 normal, 0.5 half, 2.0 double"""
    format: str = "wav"
    """'wav' (the header gives the rate) or 'pcm' (raw 16-bit mono at sample_rate)"""
    sample_rate: int = 0
    """with pcm, the rate the server produces, in Hz; 0 = the rate= of its content type, else 24000"""
    options: dict = field(default_factory=dict)
    """extra request fields passed to the server as they are"""
    example_url: ClassVar[str] = "http://127.0.0.1:8880"

    def check(self, where: str) -> None:
        super().check(where)
        need(self.format in ("wav", "pcm"), where, "format", self.format, "choose 'wav' or 'pcm'")
        need(self.sample_rate == 0 or 8000 <= self.sample_rate <= 48000, where, "sample_rate", self.sample_rate,
             "must be 0 (automatic) or 8000..48000 Hz")
        _check_speed(self.speed, where)


@backend("openai", "tts", settings=OpenAISpeechSettings)
class OpenAISpeechTTS:
    """POST /v1/audio/speech. ``format = "wav"`` (default: the header gives the rate) or ``"pcm"``
    (raw s16le mono at ``sample_rate``, or the ``rate=`` of the content type, else 24 kHz)."""

    name = "openai"
    path = "/v1/audio/speech"

    def __init__(self, settings: OpenAISpeechSettings, ctx: BackendContext):
        self.cfg, self.format, self.stage = settings, settings.format, ctx.stage
        self.http = settings.http(self.name, ctx)

    def synthesize(self, text: str) -> Speech:
        body = {"model": self.cfg.model, "input": text, "voice": self.cfg.voice,
                "response_format": self.format, "speed": self.cfg.speed, **self.cfg.options}
        if self.cfg.sample_rate:
            body["sample_rate"] = self.cfg.sample_rate
        resp = self.http.request("POST", self.path, json=body, stream=True)
        data = content_bytes(self.http, resp, self.path)
        if self.format == "wav":
            return _wav_speech(data, self.http.where(self.path), self.stage)
        m = re.search(r"rate=(\d+)", resp.headers.get("Content-Type", ""))
        rate = self.cfg.sample_rate or (int(m.group(1)) if m else 24000)
        return Speech(to_mono(pcm16_to_audio(data[:len(data) // 2 * 2], rate)), rate)

    def check(self) -> str:
        resp = self.http.request("GET", "/health", ok=(200, 404))
        if resp.status_code == 404:
            self.http.request("GET", "/v1/models")
        return f"model {self.cfg.model}, voice {self.cfg.voice}"


@dataclass(frozen=True)
class PiperSettings(HttpSettings):
    """``[tts.piper]``: Piper's HTTP server."""
    voice: str = ""
    """a voice the server has loaded (piper-tts >= 1.3); empty = its default voice"""
    speed: float = 1.0
    """speaking speed: 1.0 normal, 0.5 half, 2.0 double (sent as length_scale = 1/speed)"""
    api: str = "auto"
    """'synthesize' (>= 1.5), 'json-root' (1.3-1.4), 'text' (the archived server) or 'auto' (found out once)"""
    options: dict = field(default_factory=dict)
    """extra JSON fields passed to the server as they are (e.g. {noise_scale = 0.5})"""
    example_url: ClassVar[str] = "http://127.0.0.1:5000"

    def check(self, where: str) -> None:
        super().check(where)
        need(self.api in ("auto", "synthesize", "json-root", "text"), where, "api", self.api,
             "choose one of auto, synthesize, json-root, text")
        _check_speed(self.speed, where)


@backend("piper", "tts", settings=PiperSettings)
class PiperTTS:
    """Piper's HTTP server. ``api``: 'synthesize' (piper-tts >= 1.5, POST /synthesize JSON),
    'json-root' (1.3-1.4, POST / JSON), 'text' (the archived server, POST / raw text), or 'auto'
    (find out once, then remember). Speed maps to ``length_scale`` = 1/speed.

    Detection order matters: the archived server speaks any POST body aloud, JSON included, so
    it is recognised by its ``GET /?text=`` before a JSON body is ever sent to ``/``."""

    name = "piper"
    FORMS = ("synthesize", "text", "json-root")

    def __init__(self, settings: PiperSettings, ctx: BackendContext):
        self.cfg, self.stage = settings, ctx.stage
        self.http = settings.http(self.name, ctx)
        self.api = None if settings.api == "auto" else settings.api
        self._lock = threading.Lock()

    def _send(self, form: str, text: str, probe: bool = False):
        if form == "text" and probe:
            return self.http.request("GET", "/", params={"text": text})
        if form == "text":
            return self.http.request("POST", "/", data=text.encode(), headers={"Content-Type": "text/plain"})
        body = {"text": text, "length_scale": round(1.0 / self.cfg.speed, 3), **self.cfg.options}
        if self.cfg.voice:
            body["voice"] = self.cfg.voice
        return self.http.request("POST", "/synthesize" if form == "synthesize" else "/", json=body)

    def _detect(self, text: str):
        last = None
        for form in self.FORMS:
            try:
                resp = self._send(form, text, probe=True)
            except BackendError as exc:
                if exc.retryable and "HTTP 5" not in str(exc):
                    raise  # down or unreachable: no form will work
                last = exc
                continue
            if resp.content[:4] == b"RIFF":
                self.api = form
                return resp
        raise BackendError(self.stage, f"{self.http.where()} answered none of Piper's API forms "
                                       f"({', '.join(self.FORMS)}); last: {last}")

    def synthesize(self, text: str) -> Speech:
        if self.api is None:
            with self._lock:
                resp = self._detect(text) if self.api is None else self._send(self.api, text)
        else:
            resp = self._send(self.api, text)
        return _wav_speech(resp.content, self.http.where(), self.stage)  # Content-Type says text/html: ignore it

    def check(self) -> str:
        speech = self.synthesize("Ready.")
        return f"api {self.api}, {speech.rate} Hz voice"


@dataclass(frozen=True)
class XttsSettings(HttpSettings):
    """``[tts.xtts]``: xtts-api-server, a voice cloned from a speaker WAV."""
    speaker_wav: str = ""
    """the voice to clone: a speaker name in the server's speaker folder, or a WAV path on the server"""
    language: str = "en"
    """the language the text is in ('en', 'de', 'fr'...)"""
    example_url: ClassVar[str] = "http://127.0.0.1:8020"

    def check(self, where: str) -> None:
        super().check(where)
        need(bool(self.speaker_wav), where, "speaker_wav", self.speaker_wav,
             "xtts needs a voice to clone: a speaker name or a WAV path on the XTTS server")
        need(bool(self.language), where, "language", self.language, "a language code such as 'en'")


@backend("xtts", "tts", settings=XttsSettings)
class XttsTTS:
    """xtts-api-server: POST /tts_to_audio/ with the speaker WAV to clone (a name in its speaker
    folder, a file name there, or an absolute path on the server) and the language."""

    name = "xtts"
    path = "/tts_to_audio/"

    def __init__(self, settings: XttsSettings, ctx: BackendContext):
        self.cfg, self.stage = settings, ctx.stage
        self.http = settings.http(self.name, ctx)

    def synthesize(self, text: str) -> Speech:
        body = {"text": text, "speaker_wav": self.cfg.speaker_wav, "language": self.cfg.language}
        try:
            resp = self.http.request("POST", self.path, json=body)
        except BackendError as exc:
            # every xtts error is a 500, a wrong speaker or language included: those do not get better
            if "not found" in str(exc) or "Language code" in str(exc):
                raise BackendError(self.stage, str(exc).split(": ", 1)[-1] + "; fix [tts.xtts] speaker_wav / "
                                               "language") from None
            raise
        return _wav_speech(resp.content, self.http.where(self.path), self.stage)  # 24 kHz, often 32-bit float

    def check(self) -> str:
        langs = self.http.json("GET", "/languages").get("languages") or {}
        lang = self.cfg.language
        if langs and lang not in langs and lang not in langs.values():
            raise BackendError(self.stage, f"xtts at {self.http.url} does not speak language {lang!r}; fix "
                                           f"[tts.xtts] language")
        speakers = self.http.json("GET", "/speakers_list")
        name = self.cfg.speaker_wav.removesuffix(".wav")
        if isinstance(speakers, list) and "/" not in self.cfg.speaker_wav and name not in speakers:
            raise BackendError(self.stage, f"xtts at {self.http.url} has no speaker {self.cfg.speaker_wav!r} (it has "
                                           f"{', '.join(map(str, speakers[:8]))}); fix [tts.xtts] speaker_wav")
        return f"speaker {self.cfg.speaker_wav}, language {lang}"


__all__ = ["EspeakTTS", "OpenAISpeechTTS", "PiperTTS", "XttsTTS"]
