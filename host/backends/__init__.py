"""Backends for each stage of a turn: speech to text, caption, reply, text to speech.

Each stage is a small interface; the embedded defaults run with no servers and no downloads.
Backends are blocking and are called from worker threads by the turn.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class SpeechToText(Protocol):
    name: str

    def transcribe(self, samples: np.ndarray, rate: int) -> str:
        """Mono float audio -> the words heard ('' when nothing was understood)."""


class Captioner(Protocol):
    name: str

    def caption(self, image: bytes) -> str:
        """An encoded picture (JPEG/PNG) -> one line describing it."""


@dataclass(frozen=True)
class ReplyContext:
    transcript: str
    caption: str
    history: tuple = ()
    """earlier (question, reply) pairs of this skull's conversation, oldest first"""


class ReplyWriter(Protocol):
    name: str

    def reply(self, context: ReplyContext) -> str:
        """The skull's answer, a few short sentences."""


@dataclass
class Speech:
    samples: np.ndarray
    """mono float -1..1"""
    rate: int
    """Hertz"""


class TextToSpeech(Protocol):
    name: str

    def synthesize(self, text: str) -> Speech:
        """Text -> mono audio."""
