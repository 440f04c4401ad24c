"""A reply segment as the skull holds it: one spoken sentence, decoded once from its ``speech``
message, then queued for the speaker and kept for the turn's recording."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .core import protocol as p
from .core.wav import pcm16_to_audio, to_mono


class SegmentTag(NamedTuple):
    """Which reply a queued sound belongs to."""
    turn: int
    seq: int
    """0, 1, 2... in playing order within the turn"""


@dataclass(frozen=True, eq=False)
class ReplySegment:
    turn: int
    seq: int
    text: str
    samples: np.ndarray = field(repr=False)
    """mono float -1..1"""
    rate: int
    """Hertz"""
    jaw: np.ndarray = field(repr=False)
    """jaw opening 0..1 per frame"""
    jaw_fps: int
    """frames per second of ``jaw``"""

    @property
    def tag(self) -> SegmentTag:
        return SegmentTag(self.turn, self.seq)

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate

    @classmethod
    def from_speech(cls, msg: p.Speech, pcm: bytes) -> "ReplySegment":
        """Decode a ``speech`` message and its PCM payload (the one place it is decoded)."""
        samples = to_mono(pcm16_to_audio(pcm, msg.rate, msg.channels))
        return cls(msg.turn, msg.seq, msg.text, samples, msg.rate, np.asarray(msg.jaw, np.float32), msg.jaw_fps)
