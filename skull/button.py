"""The button's human faults, between its raw edges and the agent: chatter, a button held at
start, and a button stuck down.

:class:`ButtonGuard` is a pure core (no I/O, no clock of its own): the agent feeds it each raw
edge with the time it happened (:meth:`ButtonGuard.edge`) and asks it again at
:meth:`ButtonGuard.due` (:meth:`ButtonGuard.poll`); both return what happened, as
:class:`Press`, :class:`Release`, :class:`~skull.events.ButtonStuck` and
:class:`~skull.events.ButtonFreed`. It works the same for every board (gpio, serial, firmata,
sim), so it is the skull's one debounce: the gpio panel opens its button without gpiozero's own
``bounce_time``.

* Chatter: the first edge counts at once (no delay before the turn starts); edges in the next
  ``debounce_s`` are contact bounce and are ignored; if the button then rests in the other
  position, that counts as one more edge. A chattering press is one press, one release.
* Held at start: a button already down when the skull starts starts no turn until it has been
  released once (it may be a stuck one, or a visitor leaning on it).
* Stuck: a button down for ``stuck_s`` is reported once (:class:`~skull.events.ButtonStuck`);
  if it still held a turn the turn is released, and the button is ignored until it comes up
  (:class:`~skull.events.ButtonFreed`).

A button held past ``[audio] max_record_s`` needs nothing from here: the recording limit ends
the turn, and only a release and a new press (an edge) can start the next one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .events import ButtonFreed, ButtonStuck


@dataclass(frozen=True)
class Press:
    """The visitor pressed the button (once, however much its contacts bounced)."""


@dataclass(frozen=True)
class Release:
    """The visitor let the button go (or it was found stuck while it held a turn)."""


class ButtonGuard:
    """``debounce_s``: edges this soon after a counted one are contact bounce (0: every edge
    counts). ``stuck_s``: a button down this long is stuck. ``down_at_start``: the button's
    level when the skull starts, and ``now`` the time then (seconds, any monotonic clock)."""

    def __init__(self, debounce_s: float = 0.03, stuck_s: float = 120.0, *, down_at_start: bool = False,
                 now: float = 0.0):
        if not (debounce_s >= 0 and stuck_s > 0):
            raise ValueError(f"debounce_s must be >= 0 and stuck_s > 0, not {debounce_s!r} and {stuck_s!r}")
        self.debounce_s, self.stuck_s = debounce_s, stuck_s
        self.raw = down_at_start
        """the level the contacts last reported (True: down)"""
        self.down = down_at_start
        """the level counted after debouncing"""
        self.down_since: float | None = now if down_at_start else None
        self.stuck = False
        """reported stuck and not released since"""
        self.holding = False
        """a Press went out and its Release has not"""
        self._quiet_until = -math.inf  # edges before this are bounce

    def due(self) -> float | None:
        """When :meth:`poll` has something to decide: the end of a bounce window whose raw
        level differs from the counted one, or the moment a held button counts as stuck."""
        times = []
        if self.raw != self.down:
            times.append(self._quiet_until)
        if self.down and not self.stuck and self.down_since is not None:
            times.append(self.down_since + self.stuck_s)
        return min(times) if times else None

    def edge(self, down: bool, now: float) -> list:
        """The contacts went ``down`` (or up) at ``now``."""
        self.raw = down
        if now < self._quiet_until or down == self.down:
            return self.poll(now)
        return self._count(down, now) + self.poll(now)

    def poll(self, now: float) -> list:
        """What the passing of time decided by ``now``: a bounce window ended with the button
        in the other position, or a held button became stuck."""
        out: list = []
        if self.raw != self.down and now >= self._quiet_until:
            out += self._count(self.raw, now)
        if self.down and not self.stuck and self.down_since is not None and now >= self.down_since + self.stuck_s:
            self.stuck = True
            out.append(ButtonStuck(round(now - self.down_since, 1)))
            if self.holding:
                self.holding = False
                out.append(Release())
        return out

    def _count(self, down: bool, now: float) -> list:
        self.down, self._quiet_until = down, now + self.debounce_s
        if down:
            self.down_since = now
            self.holding = True
            return [Press()]
        held_s = now - self.down_since if self.down_since is not None else 0.0
        self.down_since = None
        if self.stuck:
            self.stuck = False
            return [ButtonFreed(round(held_s, 1))]
        if self.holding:
            self.holding = False
            return [Release()]
        return []  # the release of a button that was down at start: it may start turns from now on
