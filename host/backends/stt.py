"""Speech to text. Embedded default: moonshine-voice with the tiny English model its wheel
ships, or pocketsphinx where moonshine cannot load; whisper.cpp's server and OpenAI-compatible
transcription servers over HTTP."""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from skull.core.wav import resample, to_pcm16, wav_bytes
from skull.core.errors import BackendError
from skull.core.validate import need

from ..cores import threads

from .registry import BackendContext, HttpSettings, NoSettings, backend

log = logging.getLogger("host.stt")


@dataclass(frozen=True)
class MoonshineSettings:
    """``[stt.moonshine]``: moonshine-voice, in this process."""
    model: str = ""
    """a moonshine model folder (encoder_model.ort, decoder_model_merged.ort, tokenizer.bin);
    empty: the tiny English model inside the moonshine-voice wheel"""
    arch: str = "tiny"
    """the model's architecture: 'tiny' or 'base' (a base model must be fetched by hand)"""

    def check(self, where: str) -> None:
        need(self.arch in MOONSHINE_ARCHS, where, "arch", self.arch, f"must be one of {', '.join(MOONSHINE_ARCHS)}")
        if self.model:
            need(Path(self.model).expanduser().is_dir(), where, "model", self.model,
                 "must be a folder holding a moonshine model (encoder_model.ort, decoder_model_merged.ort, "
                 "tokenizer.bin); leave it out for the model inside the wheel")


MOONSHINE_ARCHS = ("tiny", "base")


QUIET = 0.02
"""a 10 ms frame quieter than this fraction of the clip's loud frames (their 90th percentile:
a click louder than the words moves it little) is silence (quiet_tail)"""
TAIL_S = 0.5
"""silence after the last sound: moonshine's own voice activity needs it to close its line (a
clip cut close behind the speech, a stretch of a segmented question, otherwise gains a spurious
"You")"""


def quiet_tail(x: np.ndarray, rate: int) -> np.ndarray:
    """``x`` with exactly ``TAIL_S`` of silence after its last sound: what it has, padded or cut.
    moonshine's time grows with the audio it is given, and a stretch of a segmented question
    arrives with the silence that ended it (~0.3 s): padding a whole ``TAIL_S`` more cost ~12 %
    of its time. Noise not far below the speech counts as sound (then the whole pad is added).
    The silence before the first word is left as it is: cutting it changed what moonshine heard."""
    frame = rate // 100
    n = len(x) // frame
    pad = int(TAIL_S * rate)
    if n >= 2:
        level = np.sqrt(np.mean(np.square(x[:n * frame].reshape(n, frame), dtype=np.float64), axis=1))
        loud = np.flatnonzero(level > QUIET * np.percentile(level, 90))
        if len(loud):
            end = (loud[-1] + 1) * frame
            tail = min(len(x) - end, pad)  # the silence it has, up to TAIL_S
            return np.concatenate([x[:end + tail], np.zeros(pad - tail, np.float32)])
    return np.concatenate([x, np.zeros(pad, np.float32)])


SPIN_NICE = 10
"""how much lower the priority of moonshine's onnxruntime threads is than the host's own"""


@backend("moonshine", "stt", settings=MoonshineSettings, default=True, fallback="pocketsphinx")
class MoonshineSTT:
    """Offline recognition with the model loaded once. The tiny English model ships inside
    moonshine-voice 0.1.0 (later releases download it at run time, hence the exact pin). Its
    wheels need glibc 2.34 and exist for x86-64 and 64-bit ARM only: elsewhere the host uses
    pocketsphinx and logs why."""

    name = "moonshine"
    rate = 16000

    def __init__(self, settings: MoonshineSettings, ctx: BackendContext):
        try:
            from moonshine_voice import MoonshineError, ModelArch, Transcriber, get_model_path
        except (ImportError, OSError) as exc:  # not installed, or its library cannot load here
            raise BackendError(ctx.stage, f"moonshine-voice cannot load ({exc}); it needs glibc 2.34 and a 64-bit "
                                          f"machine; 'make bootstrap' installs it where it can") from None
        folder = Path(settings.model).expanduser() if settings.model else get_model_path("tiny-en")
        self.folder = folder
        arch = ModelArch.TINY if settings.arch == "tiny" else ModelArch.BASE
        before = threads()
        try:
            self._transcriber = Transcriber(str(folder), arch)
        except (MoonshineError, OSError) as exc:
            raise BackendError(ctx.stage, f"moonshine cannot load the {settings.arch} model in {folder} ({exc}); check "
                                          f"[stt.moonshine] model and arch") from None
        # one model; calls take turns. It stays in the host process: the library releases the GIL and
        # onnxruntime already computes on every core (in worker processes two skulls measured 4x
        # slower at once, bench/embedded_scale.py)
        self._lock = threading.Lock()
        # onnxruntime's threads, started with the model, spin for ~40 ms after every transcription
        # waiting for more work: at the release that is when the reply's voice (espeak-ng) wants
        # the cores. A lower priority lets the voice go first; alone they compute as fast (two
        # skulls at once, bench/embedded_scale.py side by side: first audio 1.10 and 1.36 x one
        # skull's against 2.0 x, the voice's step 29-32 ms against 47-50; later runs 1.4-2.2 x)
        for tid in threads() - before:
            with contextlib.suppress(OSError):  # a thread that ended, or a system without per-thread nice
                os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + SPIN_NICE)

    def transcribe(self, samples: np.ndarray, rate: int) -> str:
        x = np.asarray(resample(samples, rate, self.rate), np.float32)
        if len(x) < self.rate // 10:  # under 0.1 s: nothing to hear
            return ""
        x = quiet_tail(x, self.rate)
        with self._lock:
            result = self._transcribe(x)
        return " ".join(" ".join(line.text for line in result.lines).split())

    def _transcribe(self, x: np.ndarray):
        """moonshine's transcribe_without_streaming, handed the samples' own buffer: its Python
        side copies a list of floats into a C array one by one (~6 ms for 2 s, holding the GIL)."""
        t = self._transcriber
        try:
            from moonshine_voice.transcriber import TranscriptC, check_error
            lib, handle, parse = t._lib, t._handle, t._parse_transcript  # moonshine-voice 0.1.0 (pinned)
        except (ImportError, AttributeError):  # pragma: no cover - another release: its public call
            handle = None
        if handle is None:  # its public call, which says what is wrong with a closed transcriber
            return t.transcribe_without_streaming(x.tolist(), self.rate)
        x = np.ascontiguousarray(x, np.float32)
        out = ctypes.POINTER(TranscriptC)()
        check_error(lib.moonshine_transcribe_without_streaming(handle, x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                                               len(x), self.rate, 0, ctypes.byref(out)))
        return parse(out)

    def check(self) -> str:
        return f"embedded ({self.folder.name} model, moonshine-voice)"


@backend("pocketsphinx", "stt", settings=NoSettings, engine=True)
class PocketsphinxSTT:
    """Offline recognition, no downloads, any machine. Modest accuracy: moonshine hears far
    better, and a real server better still. It holds the GIL for a whole decode, so the host
    runs it in its engine worker processes ([embedded] workers): one decoder per core."""

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
