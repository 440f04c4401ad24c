"""Building each stage's backend from host.toml, through the backend registry."""
from __future__ import annotations

import logging

from skull.core.errors import BackendError, ConfigError

from .backends.registry import BackendContext, lookup
from .backends.tts import EspeakSettings, EspeakTTS
from .config import HostConfig, StageConfig
from .turn import Backends

log = logging.getLogger("host.build")


def build_stage(cfg: StageConfig, sees_images: bool = False):
    """The backend ``cfg`` chooses, built with its settings; None for a choice that builds
    nothing (vision 'reply' or 'none'). A backend that cannot start is a ConfigError naming its
    table, e.g. ``host.toml [tts.espeak-ng]: espeak-ng is not installed; ...``, unless it names
    a fallback (moonshine: pocketsphinx), which is then built and the reason logged."""
    entry = lookup(cfg.stage, cfg.backend)
    ctx = BackendContext(cfg.stage, cfg.timeout_s, sees_images)
    try:
        return entry.build(cfg.settings, ctx)
    except BackendError as exc:
        why = f"{cfg.source} [{entry.table(cfg.stage)}]: {str(exc).split(': ', 1)[-1]}"
        if entry.fallback is None:
            raise ConfigError(why) from None
    spare = lookup(cfg.stage, entry.fallback)
    log.warning("%s; the %s stage uses %s instead", why, cfg.stage, spare.name)
    try:
        return spare.build(spare.settings(), ctx)
    except BackendError as exc:
        raise ConfigError(f"{why}; and its fallback {spare.name} cannot start either: "
                          f"{str(exc).split(': ', 1)[-1]}") from None


def build_backends(config: HostConfig) -> Backends:
    """The configured backend of each stage, plus espeak-ng as the voice of last resort.
    Captioners always get the snapshot; the reply model gets it when [vision] backend = 'reply'."""
    looks = config.vision.backend == "reply"
    stt, vision = build_stage(config.stt), build_stage(config.vision, sees_images=True)
    reply, tts = build_stage(config.reply, sees_images=looks), build_stage(config.tts)
    try:
        fallback_voice = EspeakTTS(EspeakSettings(voice=config.fallback.voice),
                                   BackendContext("tts", config.fallback.timeout_s))
    except BackendError as exc:
        raise ConfigError(f"{config.tts.source} [fallback]: {str(exc).split(': ', 1)[-1]}") from None
    if fallback_voice.voice_problem:  # the voice of last resort must speak as configured
        raise ConfigError(f"{config.tts.source} [fallback]: {fallback_voice.voice_problem}")
    return Backends(stt=stt, vision=vision, reply=reply, tts=tts, fallback_voice=fallback_voice)
