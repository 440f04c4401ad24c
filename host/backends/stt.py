"""Speech to text. Embedded default: pocketsphinx with the English model its wheel ships;
whisper.cpp's server and OpenAI-compatible transcription servers over HTTP."""
from __future__ import annotations

import logging
import threading

import numpy as np

from skull.core.wav import resample, to_pcm16, wav_bytes
from skull.core.errors import BackendError

from ..http import Http

log = logging.getLogger("host.stt")


class PocketsphinxSTT:
    """Offline recognition, no downloads. Modest accuracy; a real server does better."""

    name = "pocketsphinx"
    rate = 16000

    def __init__(self):
        try:
            from pocketsphinx import Decoder
        except ImportError as exc:  # pragma: no cover - it is a dependency
            raise BackendError("stt", f"pocketsphinx is not installed ({exc}); run 'make bootstrap'") from None
        self._decoder = Decoder(samprate=self.rate, loglevel="FATAL")
        self._lock = threading.Lock()  # one decoder, not thread-safe

    def transcribe(self, samples: np.ndarray, rate: int) -> str:
        pcm = to_pcm16(resample(samples, rate, self.rate))
        with self._lock:
            d = self._decoder
            d.start_utt()
            d.process_raw(pcm, full_utt=True)
            d.end_utt()
            hyp = d.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""

    def check(self) -> str:
        return "embedded (English model from the pocketsphinx wheel)"


class WhisperCppSTT:
    """whisper.cpp's ``whisper-server``: POST /inference, multipart. An ``{"error": ...}`` body is
    an error even with HTTP 200 (servers before 2026-03 answered bad audio that way)."""

    name = "whisper.cpp"

    def __init__(self, cfg):
        self.cfg = cfg
        self.http = Http("stt", self.name, cfg.url, cfg.api_key, cfg.timeout_s, cfg.connect_timeout_s)
        self.path = cfg.path or "/inference"

    def transcribe(self, samples: np.ndarray, rate: int) -> str:
        data = {"response_format": "json", "temperature": "0.0", "language": self.cfg.language or "en"}
        resp = self.http.request("POST", self.path, data=data,
                                 files={"file": ("question.wav", wav_bytes(samples, rate), "audio/wav")})
        try:
            obj = resp.json()
        except ValueError:
            raise BackendError("stt", f"{self.http.where(self.path)} sent something that is not JSON: "
                                      f"{resp.text[:120]!r}", retryable=True) from None
        if isinstance(obj, dict) and obj.get("error"):
            raise BackendError("stt", f"{self.http.where(self.path)} refused the audio: {obj['error']}")
        return " ".join(str(obj.get("text", "")).split())

    def check(self) -> str:
        resp = self.http.request("GET", "/health", ok=(200, 404))  # servers before 2025-03 have no /health
        return "ready" if resp.status_code == 200 else "up (no /health on this version)"


class OpenAISTT:
    """OpenAI-compatible POST /v1/audio/transcriptions (speaches, LocalAI, Ollama...)."""

    name = "openai"
    path = "/v1/audio/transcriptions"

    def __init__(self, cfg):
        if not cfg.model:
            raise BackendError("stt", "the openai speech-to-text backend needs a model: set [stt] model "
                                      "(e.g. 'Systran/faster-whisper-small')")
        self.cfg = cfg
        self.http = Http("stt", self.name, cfg.url, cfg.api_key, cfg.timeout_s, cfg.connect_timeout_s)

    def transcribe(self, samples: np.ndarray, rate: int) -> str:
        data = {"model": self.cfg.model, "response_format": "json"}
        if self.cfg.language:
            data["language"] = self.cfg.language
        obj = self.http.json("POST", self.cfg.path or self.path, data=data,
                             files={"file": ("question.wav", wav_bytes(samples, rate), "audio/wav")})
        if not isinstance(obj, dict) or "text" not in obj:
            raise BackendError("stt", f"{self.http.where(self.path)} answered without a text field: {str(obj)[:120]}")
        return " ".join(str(obj["text"]).split())

    def check(self) -> str:
        resp = self.http.request("GET", "/v1/models", ok=(200, 404))
        if resp.status_code == 200:
            ids = [m.get("id") for m in (resp.json().get("data") or []) if isinstance(m, dict)]
            if ids and self.cfg.model not in ids and self.cfg.model != "whisper-1":
                raise BackendError("stt", f"model {self.cfg.model} is not on {self.http.url} (it has "
                                          f"{', '.join(map(str, ids[:5]))}); install it or fix [stt] model")
        return f"model {self.cfg.model}"
