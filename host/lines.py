"""The lines a skull keeps for when the host is gone ([lines] in host.toml, docs/show.md).

The host synthesises its line set once, in the configured voice and through the same path as a
reply's sentences (the ``[tts]`` backend on the host's thread pool, then
:func:`host.turn.speech_segment` for the jaw track and the skull's speaker rate), keeps the
audio per voice, and sends the set after ``welcome`` to every skull whose ``hello.lines``
names another set. The set id hashes what a skull would hear: the voice (backend and its
settings), the texts, and the skull's jaw shape and speaker rate. A voice that fails is logged
and nothing is sent: the skull keeps the set it has, and the next connection tries again.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass

import numpy as np

from skull.core import protocol as p
from skull.core.envelope import JawShape
from skull.core.errors import BackendError

from .config import HostConfig
from .text import speakable
from .turn import Backends, speech_segment

log = logging.getLogger("host.lines")


@dataclass(frozen=True)
class Spoken:
    """One line synthesised: its kind, text and audio (mono float at ``rate`` Hz)."""
    kind: str
    text: str
    samples: np.ndarray
    rate: int


LINE_ATTEMPTS = 3
"""a line the voice failed on (a failure worth asking again) is asked up to this many times"""
RETRY_SET_S = (30.0, 300.0)
"""a set that could not be synthesised is tried again for a connected skull after the first
figure, doubling up to the second"""


class LineBook:
    """The host's line set, synthesised on first need and kept per voice."""

    def __init__(self, config: HostConfig, backends: Backends):
        self.config, self.backends = config, backends
        self._spoken: dict[str, asyncio.Future] = {}
        """voice and texts -> the synthesised lines (a future, so connections at once share one synthesis)"""
        self.sent = 0
        """line sets sent to skulls since the host started"""

    def voice(self) -> str:
        """What makes the voice: the [tts] backend and its settings."""
        tts = self.config.tts
        settings = dataclasses.asdict(tts.settings) if dataclasses.is_dataclass(tts.settings) else repr(tts.settings)
        return json.dumps([tts.backend, settings], sort_keys=True, default=str)

    def set_id(self, shape: JawShape, play_rate: int) -> str:
        """The id of the set a skull with ``shape`` and ``play_rate`` gets (16 hex digits)."""
        what = [self.voice(), self.config.lines.texts(), shape.to_dict(), play_rate]
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]

    async def spoken(self, executor) -> list[Spoken] | None:
        """Every line synthesised (once per voice and texts); None when the voice failed (logged,
        and tried again at the next call)."""
        key = json.dumps([self.voice(), self.config.lines.texts()])
        future = self._spoken.get(key)
        if future is None:
            future = self._spoken[key] = asyncio.ensure_future(self._synthesise(executor))
        try:
            return await asyncio.shield(future)
        except BackendError as exc:
            if self._spoken.get(key) is future:
                del self._spoken[key]  # the next connection tries again
            log.error("the skulls' offline lines could not be synthesised: %s; each skull keeps the lines it has",
                      exc)
            return None

    async def _synthesise(self, executor) -> list[Spoken]:
        lines = self.config.lines
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        out = []
        for kind, text in lines.texts():
            for attempt in range(1, LINE_ATTEMPTS + 1):
                left = lines.timeout_s - (time.monotonic() - t0)
                try:
                    async with asyncio.timeout(max(0.01, left)):  # not wait_for: see turn.py _blocking
                        speech = await loop.run_in_executor(executor, self.backends.tts.synthesize, speakable(text))
                    break
                except asyncio.TimeoutError:
                    raise BackendError("tts", f"the {kind} lines took longer than [lines] timeout_s = "
                                              f"{lines.timeout_s:g} s") from None
                except BackendError as exc:
                    if not exc.retryable or attempt == LINE_ATTEMPTS:
                        raise
                    log.info("the %s line %r: %s; asking the voice again", kind, text[:40], exc)
                except Exception as exc:  # a voice failing in any way is a failed set
                    raise BackendError("tts", f"{type(exc).__name__}: {exc}") from exc
            if len(speech.samples) == 0:
                raise BackendError("tts", f"the voice made no sound for the {kind} line {text[:60]!r}")
            out.append(Spoken(kind, text, np.asarray(speech.samples, np.float32), speech.rate))
        log.info("synthesised %d lines for the skulls in %.1f s", len(out), time.monotonic() - t0)
        return out

    def frames(self, spoken: list[Spoken], shape: JawShape, play_rate: int) -> list[tuple[p.Line, bytes]]:
        """The ``line`` messages and their PCM for a skull with ``shape`` and ``play_rate``. A
        line too long for a frame is cut (and said so in the log)."""
        set_id = self.set_id(shape, play_rate)
        out = []
        for i, s in enumerate(spoken):
            room = int(p.MAX_LINE_BYTES // 2 * s.rate / (play_rate or s.rate) * 0.98)
            samples = s.samples
            if len(samples) > room:
                log.warning("the %s line %r is longer than a line may be (%.0f s); it is cut there", s.kind,
                            s.text[:60], room / s.rate)
                samples = samples[:room]
            speech, pcm = speech_segment(0, 0, s.text, samples, s.rate, shape, play_rate)
            out.append((p.Line(set_id, i, len(spoken), s.kind, s.text, speech.rate, speech.width, speech.channels,
                               speech.bytes, speech.jaw_fps, speech.jaw), pcm))
        return out

    async def send_to(self, session, have: str | None, executor) -> int:
        """Send the set to a skull's ``session`` when it takes lines (``have`` not None) and holds
        another set; how many lines were sent. When the voice fails, it is asked again after
        RETRY_SET_S for as long as the skull stays (the caller cancels this with the connection)."""
        if have is None or not self.config.lines.enabled:
            return 0
        shape, rate = session.shape, session.play_rate
        if have == self.set_id(shape, rate):
            return 0
        spoken = await self.spoken(executor)
        wait_s = RETRY_SET_S[0]
        while spoken is None:  # the voice failed: the skull keeps its set, and gets the new one later
            await asyncio.sleep(wait_s)
            wait_s = min(wait_s * 2, RETRY_SET_S[1])
            spoken = await self.spoken(executor)
        frames = self.frames(spoken, shape, rate)
        total = sum(len(pcm) for _, pcm in frames)
        if total > p.MAX_SET_BYTES:
            log.error("the skulls' lines come to %.1f MB, over the %d MB a skull keeps; shorten [lines]", total / 2 ** 20,
                      p.MAX_SET_BYTES // 2 ** 20)
            return 0
        for msg, pcm in frames:
            await session.send(msg, pcm)
        self.sent += 1
        log.info("%s: sent line set %s (%d lines, %.1f MB)", session.name, frames[0][0].set, len(frames),
                 total / 2 ** 20)
        return len(frames)
