"""Building each stage's backend from host.toml, through the backend registry."""
from __future__ import annotations

import logging

from skull.core.errors import BackendError, ConfigError

from .backends.registry import STAGES, BackendContext, lookup
from .backends.tts import EspeakSettings, EspeakTTS
from .config import HostConfig, StageConfig
from .pool import EnginePool, PooledBackend
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
    Captioners always get the snapshot; the reply model gets it when [vision] backend = 'reply'.
    The stages served by CPU-heavy embedded engines are built in a pool of worker processes
    ([embedded] workers; ``Backends.pool``, whose owner closes it), the others here."""
    looks = config.vision.backend == "reply"
    sees = {"vision": True, "reply": looks}
    stages = {stage: getattr(config, stage) for stage in STAGES}
    workers = config.embedded.count()
    engines = {stage: (cfg, sees.get(stage, False)) for stage, cfg in stages.items()
               if workers and lookup(stage, cfg.backend).engine}
    pool = EnginePool(engines, workers) if engines else None
    if pool is not None:
        pool.start()  # every worker loads its models now: the first visitor meets warm engines
    try:
        built = {stage: PooledBackend(pool, stage, cfg.timeout_s) if stage in engines
                 else build_stage(cfg, sees.get(stage, False)) for stage, cfg in stages.items()}
        try:
            fallback_voice = EspeakTTS(EspeakSettings(voice=config.fallback.voice),
                                       BackendContext("tts", config.fallback.timeout_s))
        except BackendError as exc:
            raise ConfigError(f"{config.tts.source} [fallback]: {str(exc).split(': ', 1)[-1]}") from None
        if fallback_voice.voice_problem:  # the voice of last resort must speak as configured
            raise ConfigError(f"{config.tts.source} [fallback]: {fallback_voice.voice_problem}")
    except BaseException:
        if pool is not None:
            pool.close()
        raise
    # the fallback voice stays in this process: it must speak even when the workers cannot
    return Backends(stt=built["stt"], vision=built["vision"], reply=built["reply"], tts=built["tts"],
                    fallback_voice=fallback_voice, pool=pool)
