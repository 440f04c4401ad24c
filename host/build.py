"""Building each stage's backend from host.toml."""
from __future__ import annotations

from skull.core.errors import BackendError, ConfigError

from .config import STAGE_BACKENDS, HostConfig
from .turn import Backends


def build_backends(config: HostConfig) -> Backends:
    """The configured backend of each stage, plus espeak-ng as the voice of last resort."""
    for stage, names in STAGE_BACKENDS.items():
        name = getattr(config, stage).backend
        if name not in names:
            raise ConfigError(f"[{stage}] backend = {name!r} is not a known backend; choose one of {', '.join(names)}")
    try:
        return _build(config)
    except BackendError as exc:
        raise ConfigError(f"host.toml: {exc}") from None


def _build(config: HostConfig) -> Backends:
    from .backends.tts import EspeakTTS

    stt, vision, reply, tts = config.stt, config.vision, config.reply, config.tts
    if stt.backend == "pocketsphinx":
        from .backends.stt import PocketsphinxSTT
        stt_b = PocketsphinxSTT()
    elif stt.backend == "whisper.cpp":
        from .backends.stt import WhisperCppSTT
        stt_b = WhisperCppSTT(stt)
    else:
        from .backends.stt import OpenAISTT
        stt_b = OpenAISTT(stt)

    sees = vision.backend == "reply"
    if reply.backend == "jokes":
        if sees:
            raise BackendError("vision", "backend = 'reply' needs a reply model that looks at pictures; the joke "
                                         "engine cannot: set [vision] backend to 'opencv' or a caption model")
        from .backends.reply import JokeEngine
        reply_b = JokeEngine(reply.seed if reply.seed >= 0 else None)
    elif reply.backend == "openai-chat":
        from .backends.llm import OpenAIChat
        reply_b = OpenAIChat(reply, "reply", sees_images=sees)
    else:
        from .backends.llm import OllamaChat
        reply_b = OllamaChat(reply, "reply", sees_images=sees)

    if vision.backend == "opencv":
        from .backends.vision import OpenCVCaptioner
        vision_b = OpenCVCaptioner()
    elif vision.backend == "openai-chat":
        from .backends.llm import OpenAIChat
        vision_b = OpenAIChat(vision, "vision", sees_images=True)
    elif vision.backend == "ollama":
        from .backends.llm import OllamaChat
        vision_b = OllamaChat(vision, "vision", sees_images=True)
    else:  # "reply" (the reply model looks itself) or "none"
        vision_b = None

    fallback_voice = EspeakTTS(voice=config.fallback.voice, timeout_s=10.0)
    if tts.backend == "espeak-ng":
        tts_b = EspeakTTS(voice=tts.voice, speed=tts.speed, timeout_s=tts.timeout_s)
    elif tts.backend == "openai":
        from .backends.tts import OpenAISpeechTTS
        tts_b = OpenAISpeechTTS(tts)
    elif tts.backend == "piper":
        from .backends.tts import PiperTTS
        tts_b = PiperTTS(tts)
    else:
        from .backends.tts import XttsTTS
        tts_b = XttsTTS(tts)
    return Backends(stt=stt_b, vision=vision_b, reply=reply_b, tts=tts_b, fallback_voice=fallback_voice)
