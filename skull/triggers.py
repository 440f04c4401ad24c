"""What starts and ends a turn. A trigger calls ``press()`` when the visitor starts talking and
``release()`` when they stop; the agent turns those into the machine's ``ButtonDown`` and
``ButtonUp``, so the talk machine is the same whatever started the turn.

Today there is the push button (:class:`ButtonTrigger`: held while talking). A hands-free
trigger (voice activity, a wake word) is one more class here with ``start``/``close``, given to
the :class:`~skull.agent.Agent` in its ``triggers`` list; nothing else changes.
"""
from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

from .ports import Button, Device


@runtime_checkable
class Trigger(Protocol):
    name: str

    def start(self, press: Callable[[], None], release: Callable[[], None]) -> None:
        """Begin watching; call ``press``/``release`` from any thread."""

    def close(self) -> None:
        """Stop watching. Idempotent."""


class ButtonTrigger(Device):
    """The push button (a Pi's GPIO, a board's pin or MockFactory): down = talking."""

    name = "button"

    def __init__(self, button: Button):
        self.button = button

    def start(self, press: Callable[[], None], release: Callable[[], None]) -> None:
        self.button.when_pressed = press
        self.button.when_released = release

    def close(self) -> None:
        self.button.when_pressed = None
        self.button.when_released = None
