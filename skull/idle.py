"""Idle life: what the skull does while no visitor comes (``[idle]``, docs/show.md).

* an ``attract`` line after ``attract_every_min`` minutes with no visitor, and again every
  ``attract_every_min`` as long as none comes, never during ``quiet_hours`` (local time, may
  wrap past midnight); which line is the agent's :class:`~skull.lines.Picker`'s choice (random,
  none again until all were said);
* a ``greeting`` line when the host comes back after the link was lost for at least
  :data:`GREETING_AFTER_S`;
* with ``idle_jaw``, now and then (every 20..60 s of idle) a small, slow jaw movement, played
  like a line on the same jaw path (bounded by :data:`skull.lines.IDLE_JAW_MAX` of the
  calibrated travel, and by the jaw's own clamp);
* with ``led_breathe``, the agent shows the LED as :attr:`~skull.machine.LedPattern.BREATHE`
  while idle.

:class:`IdleLife` holds no I/O: the agent asks :meth:`IdleLife.due` once a second and turns
the answer into an :class:`~skull.machine.IdleLine` event. The clock is injectable (wall-clock
seconds, as ``time.time``), so tests run a night in a moment.
"""
from __future__ import annotations

import random
import time

from .config import IdleConfig, parse_quiet_hours
from .machine import State

GREETING_AFTER_S = 20.0
"""a greeting only when the host was gone at least this long: a link that blinks (a session
restarted, a flaky network) is no return from the dead"""
IDLE_JAW_EVERY_S = (20.0, 60.0)
"""the idle jaw moves after a random pause in this range, seconds of idle"""


class IdleLife:
    def __init__(self, config: IdleConfig = IdleConfig(), *, clock=time.time, rng: random.Random | None = None,
                 period_s: float = 1.0):
        """``clock``: wall-clock seconds (quiet hours are read from it in local time);
        ``period_s``: how often the agent asks :meth:`due`."""
        self.config, self.clock, self.period_s = config, clock, period_s
        self.rng = rng or random.Random()
        self.quiet = parse_quiet_hours(config.quiet_hours)
        self.last_visitor = clock()
        self._next_jaw = self.last_visitor + self.rng.uniform(*IDLE_JAW_EVERY_S)
        self._was_up = False
        self._lost_at: float | None = None

    def visitor(self) -> None:
        """Someone pressed (or the skull just came up): the attract clock starts again."""
        self.last_visitor = self.clock()

    def in_quiet_hours(self, now: float | None = None) -> bool:
        if self.quiet is None:
            return False
        t = time.localtime(self.clock() if now is None else now)
        minute = t.tm_hour * 60 + t.tm_min
        start, end = self.quiet
        return start <= minute < end if start < end else (minute >= start or minute < end)

    def due(self, state: State, saying: bool) -> str | None:
        """The line (or ``"jaw"``) to say now, or None. Only when idle with the host there
        (attract lines invite a turn) and nothing is playing."""
        if state is not State.IDLE or saying:
            return None
        now = self.clock()
        every_s = self.config.attract_every_min * 60.0
        if every_s and now - self.last_visitor >= every_s:
            self.last_visitor = now  # the next one after another full interval
            if not self.in_quiet_hours(now):
                return "attract"
        if self.config.idle_jaw and now >= self._next_jaw:
            self._next_jaw = now + self.rng.uniform(*IDLE_JAW_EVERY_S)
            return "jaw"
        return None

    def host_changed(self, up: bool) -> bool:
        """The link went up or down; True when a greeting is due (``greeting`` is on, and the
        host is back after it was lost for at least :data:`GREETING_AFTER_S`)."""
        now = self.clock()
        if not up:
            if self._was_up and self._lost_at is None:
                self._lost_at = now
            return False
        lost_at, self._was_up, self._lost_at = self._lost_at, True, None
        return self.config.greeting and lost_at is not None and now - lost_at >= GREETING_AFTER_S
