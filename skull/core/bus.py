"""A typed event bus: publishers emit small frozen dataclasses, subscribers get them in order.

Both sides use it: the host's turn publishes stage events (``host.events``), the skull publishes
state, LED, jaw and level events (``skull.events``). A log line, the timings in ``done``, a
recording, a dashboard or a metrics exporter subscribe; none of them edits the publisher.

A subscriber that raises is logged (with its traceback the first time, one line after that) and
keeps its subscription; the publisher and the other subscribers never see the exception.
"""
from __future__ import annotations

import logging
from typing import Callable, Generic, TypeVar

from .faults import FaultLog

log = logging.getLogger("skull.bus")

E = TypeVar("E")
Subscriber = Callable[[E], None]


class Bus(Generic[E]):
    """Synchronous fan-out on the publisher's thread (the event loop on both sides).

    ``subscribe(fn, *kinds)``: ``fn(event)`` for every event, or only for events that are
    instances of ``kinds``. Returns a function that unsubscribes."""

    def __init__(self, name: str):
        self.name = name
        self._subs: list[tuple[Subscriber, tuple[type, ...]]] = []
        self.faults = FaultLog(log, "; the publisher goes on")

    def subscribe(self, fn: Subscriber, *kinds: type) -> Callable[[], None]:
        entry = (fn, kinds)
        self._subs.append(entry)

        def unsubscribe() -> None:
            if entry in self._subs:
                self._subs.remove(entry)
        return unsubscribe

    def emit(self, event: E) -> None:
        for fn, kinds in list(self._subs):
            if kinds and not isinstance(event, kinds):
                continue
            try:
                fn(event)
            except Exception as exc:  # a broken view must not break what it watches
                self.faults(f"{self.name} bus: subscriber {getattr(fn, '__qualname__', fn)} on {type(event).__name__}",
                            exc)

    def __len__(self) -> int:
        return len(self._subs)
