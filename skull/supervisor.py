"""Keeping the skull running: nothing short of a documented fatal error stops it.

:class:`Supervisor` runs a coroutine again and again: a failure is logged once with its
context, ``on_failure`` leaves the hardware safe, and after a capped, jittered backoff the
coroutine starts afresh; only the exception types named ``fatal`` (a host that refuses the
token or the protocol version) end it, with their message. Like wyoming-satellite's ``run()``
loop with websockets' retryable/fatal split.

Failures are logged through :class:`skull.core.faults.FaultLog`: a traceback the first time,
one line after that.
"""
from __future__ import annotations

import asyncio
import logging
import random
from typing import Awaitable, Callable

from .core.faults import FaultLog

log = logging.getLogger("skull.supervisor")


def backoff_delays(min_s: float, max_s: float, rng: random.Random | None = None):
    """min_s, 2*min_s, 4*min_s ... capped at max_s, each plus up to 25% jitter."""
    rng = rng or random.Random()
    delay = min_s
    while True:
        yield delay * (1.0 + rng.uniform(0.0, 0.25))
        delay = min(max_s, delay * 2)


class Supervisor:
    """``await Supervisor(...).run(body, on_failure)``: see the module docstring.

    ``min_s``/``max_s``: the backoff between restarts; a body that ran ``healthy_s`` or longer
    before failing starts the backoff afresh."""

    def __init__(self, name: str, *, fatal: tuple[type[BaseException], ...] = (), min_s: float = 0.2,
                 max_s: float = 5.0, healthy_s: float = 30.0, faults: FaultLog | None = None):
        self.name, self.fatal = name, fatal
        self.min_s, self.max_s, self.healthy_s = min_s, max_s, healthy_s
        self.faults = faults or FaultLog(log, "; the skull goes on")
        self.restarts = 0

    async def run(self, body: Callable[[], Awaitable[None]], on_failure: Callable[[BaseException], None]) -> None:
        loop = asyncio.get_running_loop()
        delays = None
        while True:
            started = loop.time()
            try:
                await body()
                return
            except self.fatal:
                raise
            except Exception as exc:
                self.faults(self.name, exc)
                try:
                    on_failure(exc)
                except Exception as again:  # making safe failed too: say so, keep going
                    self.faults(f"{self.name} recovery", again)
            if delays is None or loop.time() - started >= self.healthy_s:
                delays = backoff_delays(self.min_s, self.max_s)
            self.restarts += 1
            await asyncio.sleep(next(delays))
