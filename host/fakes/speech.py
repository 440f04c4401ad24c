"""Speech-like audio for the fake voices: syllables of a buzzy voice with real loudness variation.

Each word becomes a run of syllables (about one per three letters), each a voiced hum with
harmonics up to 3 kHz under a rise-and-fall envelope at its own loudness, with short gaps
between syllables, longer ones between words and a pause at each sentence end. A jaw track
computed from it opens and closes like it would on a voice, so tests of jaw sync mean something.
The same text always gives the same audio.
"""
from __future__ import annotations

import functools
import re
import zlib

import numpy as np

from skull.core.wav import to_pcm16

SYLLABLE_S = (0.11, 0.20)
SYLLABLE_GAP_S = 0.035
WORD_GAP_S = 0.09
SENTENCE_GAP_S = 0.25


def speechlike(text: str, rate: int = 24000, speed: float = 1.0) -> np.ndarray:
    """Mono float32 audio in -1..1 that sounds (to a loudness meter) like ``text`` being said."""
    return _made(text, rate, speed).copy()


@functools.lru_cache(maxsize=32)
def speechlike_pcm16(text: str, rate: int = 24000, speed: float = 1.0) -> bytes:
    """``speechlike`` as 16-bit PCM, made once per text: converting a sentence's samples for every
    request was most of a fake voice's CPU (1.5 of 3 ms for a 6 s sentence)."""
    return to_pcm16(_made(text, rate, speed))


@functools.lru_cache(maxsize=32)
def _made(text: str, rate: int, speed: float) -> np.ndarray:
    """The audio of ``speechlike``, made once per text: a fake voice answering a crowd the same
    sentences must not spend the CPU a load test means to measure the host with."""
    rng = np.random.default_rng(zlib.crc32(text.encode()))
    f0 = 105.0 + 40.0 * rng.random()
    pieces: list[np.ndarray] = [np.zeros(int(0.03 * rate), np.float32)]
    for token in re.findall(r"[\w']+|[.!?]+", text):
        if token[0] in ".!?":
            pieces.append(np.zeros(int(SENTENCE_GAP_S / speed * rate), np.float32))
            continue
        for _ in range(max(1, round(len(token) / 3))):
            dur = rng.uniform(*SYLLABLE_S) / speed
            n = int(dur * rate)
            t = np.arange(n) / rate
            pitch = f0 * (1.0 + 0.08 * np.sin(2 * np.pi * rng.uniform(1, 3) * t))
            phase = 2 * np.pi * np.cumsum(pitch) / rate
            voice = sum(np.sin(k * phase) / k for k in range(1, int(3000 // (f0 * 1.1)) + 1))
            env = np.sin(np.pi * np.arange(n) / n) ** 1.5
            loud = rng.uniform(0.25, 0.9)
            pieces.append((voice / 2.2 * env * loud + rng.normal(0, 0.004, n)).astype(np.float32))
            pieces.append(np.zeros(int(SYLLABLE_GAP_S / speed * rate), np.float32))
        pieces.append(np.zeros(int(WORD_GAP_S / speed * rate), np.float32))
    out = np.concatenate(pieces)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def seconds_for(text: str, speed: float = 1.0) -> float:
    """How long ``speechlike(text)`` lasts, without making it (for planning benchmarks)."""
    return len(speechlike(text, 8000, speed)) / 8000
