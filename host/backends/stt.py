"""Speech to text. Embedded default: pocketsphinx with the English model its wheel ships;
whisper.cpp's server and OpenAI-compatible transcription servers over HTTP."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from skull.core.wav import resample, to_pcm16, wav_bytes
from skull.core.errors import BackendError
from skull.core.validate import need

from .registry import BackendContext, HttpSettings, NoSettings, backend

log = logging.getLogger("host.stt")


@backend("pocketsphinx", "stt", settings=NoSettings, default=True)
class PocketsphinxSTT:
    """Offline recognition, no downloads. Modest accuracy; a real server does better."""

    name = "pocketsphinx"
    rate = 16000

    def __init__(self, settings: NoSettings, ctx: BackendContext):
        try:
            from pocketsphinx import Decoder
        except ImportError as exc:  # pragma: no cover - it is a dependency
            raise BackendError(ctx.stage, f"pocketsphinx is not installed ({exc}); run 'make bootstrap'") from None
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


@dataclass(frozen=True)
class WhisperCppSettings(HttpSettings):
    """``[stt."whisper.cpp"]``: whisper.cpp's ``whisper-server``."""
    path: str = "/inference"
    """the endpoint, if the server was started with another ``--inference-path``"""
    language: str = "en"
    """spoken language code ('en', 'de'...) or 'auto' to let the model find out"""

    def check(self, where: str) -> None:
        super().check(where)
        need(self.path.startswith("/"), where, "path", self.path, "must start with /, e.g. /inference")
        need(bool(self.language), where, "language", self.language, "a language code such as 'en', or 'auto'")


@backend("whisper.cpp", "stt", settings=WhisperCppSettings)
class WhisperCppSTT:
    """whisper.cpp's ``whisper-server``: POST /inference, multipart. An ``{"error": ...}`` body is
    an error even with HTTP 200 (servers before 2026-03 answered bad audio that way)."""

    name = "whisper.cpp"

    def __init__(self, settings: WhisperCppSettings, ctx: BackendContext):
        self.cfg, self.stage = settings, ctx.stage
        self.http = settings.http(self.name, ctx)
        self.path = settings.path

    def transcribe(self, samples: np.ndarray, rate: int) -> str:
        data = {"response_format": "json", "temperature": "0.0", "language": self.cfg.language}
        resp = self.http.request("POST", self.path, data=data,
                                 files={"file": ("question.wav", wav_bytes(samples, rate), "audio/wav")})
        try:
            obj = resp.json()
        except ValueError:
            raise BackendError(self.stage, f"{self.http.where(self.path)} sent something that is not JSON: "
                                      f"{resp.text[:120]!r}", retryable=True) from None
        if isinstance(obj, dict) and obj.get("error"):
            raise BackendError(self.stage, f"{self.http.where(self.path)} refused the audio: {obj['error']}")
        return " ".join(str(obj.get("text", "")).split())

    def check(self) -> str:
        resp = self.http.request("GET", "/health", ok=(200, 404))  # servers before 2025-03 have no /health
        return "ready" if resp.status_code == 200 else "up (no /health on this version)"


@dataclass(frozen=True)
class OpenAISTTSettings(HttpSettings):
    """``[stt.openai]``: an OpenAI-compatible transcription server."""
    model: str = ""
    """the speech model, e.g. 'Systran/faster-whisper-small' (speaches), 'whisper-1'"""
    language: str = ""
    """spoken language code ('en'...); empty: the server finds out"""
    path: str = "/v1/audio/transcriptions"
    """the endpoint, for a server that puts it elsewhere"""
    example_url: ClassVar[str] = "http://127.0.0.1:8000"

    def check(self, where: str) -> None:
        super().check(where)
        need(bool(self.model), where, "model", self.model,
             "the openai speech-to-text backend needs a model, e.g. 'Systran/faster-whisper-small'")
        need(self.path.startswith("/"), where, "path", self.path, "must start with /, e.g. /v1/audio/transcriptions")


@backend("openai", "stt", settings=OpenAISTTSettings)
class OpenAISTT:
    """OpenAI-compatible POST /v1/audio/transcriptions (speaches, LocalAI, Ollama...)."""

    name = "openai"

    def __init__(self, settings: OpenAISTTSettings, ctx: BackendContext):
        self.cfg, self.stage, self.path = settings, ctx.stage, settings.path
        self.http = settings.http(self.name, ctx)

    def transcribe(self, samples: np.ndarray, rate: int) -> str:
        data = {"model": self.cfg.model, "response_format": "json"}
        if self.cfg.language:
            data["language"] = self.cfg.language
        obj = self.http.json("POST", self.path, data=data,
                             files={"file": ("question.wav", wav_bytes(samples, rate), "audio/wav")})
        if not isinstance(obj, dict) or "text" not in obj:
            raise BackendError(self.stage, f"{self.http.where(self.path)} answered without a text field: "
                                           f"{str(obj)[:120]}")
        return " ".join(str(obj["text"]).split())

    def check(self) -> str:
        resp = self.http.request("GET", "/v1/models", ok=(200, 404))
        if resp.status_code == 200:
            ids = [m.get("id") for m in (resp.json().get("data") or []) if isinstance(m, dict)]
            if ids and self.cfg.model not in ids and self.cfg.model != "whisper-1":
                raise BackendError(self.stage, f"model {self.cfg.model} is not on {self.http.url} (it has "
                                               f"{', '.join(map(str, ids[:5]))}); install it or fix [stt.openai] model")
        return f"model {self.cfg.model}"
