"""Backends for each stage of a turn: speech to text, caption, reply, text to speech.

Each stage is a small interface; the embedded defaults run with no servers and no downloads,
the others talk to model servers over HTTP. Each backend registers itself with its name, its
stage(s) and its own settings (see ``registry``); host.toml sets it in ``[stage.backend]``.
Backends are blocking and are called from worker threads by the turn. Every backend has
``check()``: a cheap round trip that returns what it found (model, voice) or raises
BackendError naming the server and what is wrong.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np


class SpeechToText(Protocol):
    name: str

    def transcribe(self, samples: np.ndarray, rate: int) -> str:
        """Mono float audio -> the words heard ('' when nothing was understood)."""


class Captioner(Protocol):
    name: str

    def check(self) -> str:
        """A cheap round trip: what was found, or BackendError."""

    def caption(self, image: bytes) -> str:
        """An encoded picture (JPEG/PNG) -> one line describing it."""


@dataclass(frozen=True)
class ReplyContext:
    transcript: str
    caption: str
    history: tuple = ()
    """earlier (question, reply) pairs of this skull's conversation, oldest first"""
    image: bytes | None = None
    """the snapshot, for a reply model that looks at it itself ([vision] backend = "reply")"""


class ReplyWriter(Protocol):
    name: str
    sees_images: bool

    def reply(self, context: ReplyContext) -> str:
        """The skull's answer, a few short sentences."""

    def stream(self, context: ReplyContext, cancel: threading.Event | None = None) -> Iterator[str]:
        """The same answer piece by piece as it is written; stops early when ``cancel`` is set."""


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
