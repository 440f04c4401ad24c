"""Text to speech. Embedded default: espeak-ng (a Debian package), run as a subprocess. Over
HTTP: OpenAI-compatible /v1/audio/speech (Kokoro-FastAPI, speaches, openedai-speech, LocalAI),
Piper's HTTP server (all three of its API forms) and xtts-api-server (voice cloning from a
speaker WAV). Whatever rate and sample format a voice produces, the result is mono float audio
with its rate; the host resamples it to what the skull plays.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import threading


from skull.core.wav import pcm16_to_audio, read_wav, to_mono
from skull.core.errors import AudioFormatError, BackendError

from ..http import Http, content_bytes
from . import Speech

ESPEAK_WPM = 155
"""espeak-ng words per minute at speed 1.0: a slow, deliberate skull"""


def _wav_speech(data: bytes, where: str) -> Speech:
    try:
        audio = read_wav(data, name=f"audio from {where}")  # tolerates unpatched streaming headers
    except AudioFormatError as exc:
        raise BackendError("tts", str(exc), retryable=True) from None
    return Speech(to_mono(audio), audio.rate)


class EspeakTTS:
    """espeak-ng's robotic voice suits a skull. ``voice`` e.g. 'en-us+m3'; ``speed`` 1.0 = 155 wpm."""

    name = "espeak-ng"

    def __init__(self, voice: str = "", speed: float = 1.0, pitch: int = 35, timeout_s: float = 20.0):
        self.binary = shutil.which("espeak-ng") or shutil.which("espeak")
        if self.binary is None:
            raise BackendError("tts", "espeak-ng is not installed; install it with 'sudo apt-get install espeak-ng' "
                                      "(make demo and make test do this for you)")
        self.voice, self.wpm, self.pitch, self.timeout_s = voice or "en-us+m3", round(ESPEAK_WPM * speed), pitch, timeout_s

    def synthesize(self, text: str) -> Speech:
        cmd = [self.binary, "--stdout", "-v", self.voice, "-s", str(self.wpm), "-p", str(self.pitch), text]
        try:
            out = subprocess.run(cmd, capture_output=True, timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise BackendError("tts", f"espeak-ng took longer than {self.timeout_s} s") from None
        if out.returncode != 0 or not out.stdout:
            raise BackendError("tts", f"espeak-ng failed (exit {out.returncode}): "
                                      f"{out.stderr.decode(errors='replace').strip()[:200]}")
        audio = read_wav(out.stdout, name="espeak-ng output")  # its header has placeholder sizes
        return Speech(to_mono(audio), audio.rate)

    def check(self) -> str:
        return f"embedded ({self.binary}, voice {self.voice})"


class OpenAISpeechTTS:
    """POST /v1/audio/speech. ``format = "wav"`` (default: the header gives the rate) or ``"pcm"``
    (raw s16le mono at ``sample_rate``, or the ``rate=`` of the content type, else 24 kHz)."""

    name = "openai"
    path = "/v1/audio/speech"

    def __init__(self, cfg):
        if cfg.format not in ("", "wav", "pcm"):
            raise BackendError("tts", f"[tts] format = {cfg.format!r}: choose 'wav' or 'pcm'")
        self.cfg, self.format = cfg, cfg.format or "wav"
        self.http = Http("tts", self.name, cfg.url, cfg.api_key, cfg.timeout_s, cfg.connect_timeout_s)

    def synthesize(self, text: str) -> Speech:
        body = {"model": self.cfg.model or "tts-1", "input": text, "voice": self.cfg.voice or "af_heart",
                "response_format": self.format, "speed": self.cfg.speed, **self.cfg.options}
        if self.cfg.sample_rate:
            body["sample_rate"] = self.cfg.sample_rate
        resp = self.http.request("POST", self.path, json=body, stream=True)
        data = content_bytes(self.http, resp, self.path)
        if self.format == "wav":
            return _wav_speech(data, self.http.where(self.path))
        m = re.search(r"rate=(\d+)", resp.headers.get("Content-Type", ""))
        rate = self.cfg.sample_rate or (int(m.group(1)) if m else 24000)
        return Speech(to_mono(pcm16_to_audio(data[:len(data) // 2 * 2], rate)), rate)

    def check(self) -> str:
        resp = self.http.request("GET", "/health", ok=(200, 404))
        if resp.status_code == 404:
            self.http.request("GET", "/v1/models")
        return f"model {self.cfg.model or 'tts-1'}, voice {self.cfg.voice or 'af_heart'}"


class PiperTTS:
    """Piper's HTTP server. ``api``: 'synthesize' (piper-tts >= 1.5, POST /synthesize JSON),
    'json-root' (1.3-1.4, POST / JSON), 'text' (the archived server, POST / raw text), or 'auto'
    (find out once, then remember). Speed maps to ``length_scale`` = 1/speed.

    Detection order matters: the archived server speaks any POST body aloud, JSON included, so
    it is recognised by its ``GET /?text=`` before a JSON body is ever sent to ``/``."""

    name = "piper"
    FORMS = ("synthesize", "text", "json-root")

    def __init__(self, cfg):
        if cfg.api not in ("", "auto") + self.FORMS:
            raise BackendError("tts", f"[tts] api = {cfg.api!r}: choose one of auto, {', '.join(self.FORMS)}")
        self.cfg = cfg
        self.http = Http("tts", self.name, cfg.url, cfg.api_key, cfg.timeout_s, cfg.connect_timeout_s)
        self.api = None if cfg.api in ("", "auto") else cfg.api
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
        raise BackendError("tts", f"{self.http.where()} answered none of Piper's API forms "
                                  f"({', '.join(self.FORMS)}); last: {last}")

    def synthesize(self, text: str) -> Speech:
        if self.api is None:
            with self._lock:
                resp = self._detect(text) if self.api is None else self._send(self.api, text)
        else:
            resp = self._send(self.api, text)
        return _wav_speech(resp.content, self.http.where())  # Content-Type says text/html: ignore it

    def check(self) -> str:
        speech = self.synthesize("Ready.")
        return f"api {self.api}, {speech.rate} Hz voice"


class XttsTTS:
    """xtts-api-server: POST /tts_to_audio/ with the speaker WAV to clone (a name in its speaker
    folder, a file name there, or an absolute path on the server) and the language."""

    name = "xtts"
    path = "/tts_to_audio/"

    def __init__(self, cfg):
        if not cfg.speaker_wav:
            raise BackendError("tts", "xtts needs a voice to clone: set [tts] speaker_wav to a speaker name or a "
                                      "WAV path on the XTTS server")
        self.cfg = cfg
        self.http = Http("tts", self.name, cfg.url, cfg.api_key, cfg.timeout_s, cfg.connect_timeout_s)

    def synthesize(self, text: str) -> Speech:
        body = {"text": text, "speaker_wav": self.cfg.speaker_wav, "language": self.cfg.language or "en"}
        try:
            resp = self.http.request("POST", self.path, json=body)
        except BackendError as exc:
            # every xtts error is a 500, a wrong speaker or language included: those do not get better
            if "not found" in str(exc) or "Language code" in str(exc):
                raise BackendError("tts", str(exc).split(": ", 1)[-1] + "; fix [tts] speaker_wav / language") from None
            raise
        return _wav_speech(resp.content, self.http.where(self.path))  # 24 kHz, often 32-bit float

    def check(self) -> str:
        langs = self.http.json("GET", "/languages").get("languages") or {}
        lang = self.cfg.language or "en"
        if langs and lang not in langs and lang not in langs.values():
            raise BackendError("tts", f"xtts at {self.http.url} does not speak language {lang!r}; fix [tts] language")
        speakers = self.http.json("GET", "/speakers_list")
        name = self.cfg.speaker_wav.removesuffix(".wav")
        if isinstance(speakers, list) and "/" not in self.cfg.speaker_wav and name not in speakers:
            raise BackendError("tts", f"xtts at {self.http.url} has no speaker {self.cfg.speaker_wav!r} (it has "
                                      f"{', '.join(map(str, speakers[:8]))}); fix [tts] speaker_wav")
        return f"speaker {self.cfg.speaker_wav}, language {lang}"


__all__ = ["EspeakTTS", "OpenAISpeechTTS", "PiperTTS", "XttsTTS"]
