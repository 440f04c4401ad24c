"""The jaw loop on a simulated clock: the real :class:`~skull.jaw.sync.JawFollower` and
:class:`~skull.audio.player.Timeline`, driven tick by tick instead of in real time. Used by
bench/jaw_sync.py, by `skull calibrate` to find the lead that puts the jaw on time for a
servo's speed, and by tests.

Sample 0 of the clip is heard at t = 0; samples are handed to the (simulated) device
``latency_s`` before they are heard, as a real player's DAC timing says.
"""
from __future__ import annotations

import numpy as np

from ..core.envelope import JawShape, jaw_track
from ..audio.player import Timeline
from ..config import Calibration
from .metrics import HOP_S, effective_lag, loudness
from .sim import SimJaw, physical_positions
from .sync import JawFollower

SERVO_PHASE_S = 0.0073
"""the servo's 20 ms frames do not line up with the jaw loop's"""


class SimClock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class SimPlayer:
    """A playback clock without a device: ``audible_frame(t) = t * rate``."""

    def __init__(self, timeline: Timeline, clock: SimClock, latency_s: float):
        self.timeline, self.clock, self.latency_s = timeline, clock, latency_s
        self.rate = timeline.rate

    def now(self) -> float:
        return self.clock.t

    def audible_frame(self, t: float) -> float:
        return t * self.rate

    def feed(self) -> None:
        """Hand the device everything heard up to ``latency_s`` from now."""
        block = max(1, int(0.005 * self.rate))
        while self.timeline.frames < (self.clock.t + self.latency_s) * self.rate:
            self.timeline.read(block)


def follow(x: np.ndarray, rate: int, *, lead_ms: float, latency_s: float = 0.040, mode: str = "track",
           shape: JawShape = JawShape(), frame_hz: float = 50.0) -> list[tuple[float, float]]:
    """The jaw commands (heard-clock time, opening) our loop sends for clip ``x``."""
    clock = SimClock()
    timeline = Timeline(rate)
    timeline.add(x, rate, jaw_track(x, rate, shape) if mode == "track" else [], shape.fps)
    player = SimPlayer(timeline, clock, latency_s)
    jaw = SimJaw(Calibration(), clock=clock)
    follower = JawFollower(player, jaw, frame_hz=frame_hz, lead_ms=lead_ms, mode=mode, shape=shape, clock=clock,
                           rest_detach_s=10.0)
    end, k, period = len(x) / rate + 0.5, 0, 1.0 / frame_hz
    while (t := -0.5 + 0.0031 + k * period) <= end:
        clock.t = t
        player.feed()
        follower.tick()
        k += 1
    return [(t, o) for t, o, us in jaw.log if us is not None]


def servo_path(cmds, duration_s: float, *, throw_deg: float = 25.0, sec_per_60deg: float = 0.10,
               frame_s: float = 0.020) -> np.ndarray:
    """Where the horn is every HOP_S seconds from 0 to ``duration_s`` for these commands."""
    times = np.arange(0.0, duration_s, HOP_S)
    log = [(t, o, 1.0) for t, o in sorted(cmds, key=lambda c: c[0])]
    return np.asarray(physical_positions(log, times, throw_deg, sec_per_60deg, frame_s, SERVO_PHASE_S))


def sync_of(x: np.ndarray, rate: int, cmds, **servo) -> tuple[float, float]:
    """(effective lag s, r) of these commands' physical jaw against the clip's loudness."""
    return effective_lag(servo_path(cmds, len(x) / rate + 0.4, **servo), loudness(x, rate))


def best_lead_ms(x: np.ndarray, rate: int, *, travel_ms: float, throw_deg: float = 25.0,
                 shape: JawShape = JawShape()) -> tuple[float, float]:
    """The lead that puts the physical jaw on time for a servo taking ``travel_ms`` from closed
    to open, found on clip ``x``; and the lag left at that lead (ms)."""
    sec_per_60 = travel_ms / 1000.0 * 60.0 / throw_deg

    def lag_at(lead):
        return sync_of(x, rate, follow(x, rate, lead_ms=lead, shape=shape), throw_deg=throw_deg,
                       sec_per_60deg=sec_per_60)[0] * 1000.0

    leads = np.arange(0.0, 301.0, 10.0)
    lags = []
    for lead in leads:  # the lag falls as the lead grows: find where it crosses zero
        lags.append(lag_at(lead))
        if lags[-1] <= 0:
            break
    if lags[0] <= 0:
        return 0.0, lags[0]
    if lags[-1] > 0:
        return float(leads[len(lags) - 1]), lags[-1]
    i = len(lags) - 1
    lead = leads[i - 1] + 10.0 * lags[i - 1] / (lags[i - 1] - lags[i])
    return round(float(lead), 1), lag_at(lead)
