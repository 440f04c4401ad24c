"""The speaker's timeline and the audible clock the jaw follows, driven buffer by buffer as a
sound device drives them: a steady device, one that stalls (an underrun being recovered, a sound
server starting a stream late), and an interrupt while the audio thread reads."""
from __future__ import annotations

import threading
import time

import numpy as np

from skull.audio.player import DacClock, Timeline
from skull.core.envelope import jaw_track
from skull.jaw.sim import SimJaw
from skull.jaw.simulate import SimClock
from skull.jaw.sync import JawFollower
from skull.config import Calibration

RATE = 16000
LATENCY = 0.100
PERIOD = LATENCY / 4  # ALSA asks for a quarter of the buffer at a time


class Device:
    """A sound device on a simulated clock: takes a period of frames every PERIOD while it
    plays, each heard LATENCY after it was asked for; ``stalls`` are (from, to) times in which
    it takes nothing and plays nothing."""

    def __init__(self, clock: SimClock, stalls=()):
        self.clock, self.stalls = clock, list(stalls)
        self.timeline = Timeline(RATE)
        self.dac = DacClock(RATE, LATENCY, clock=clock)
        self.rate = RATE
        self.next_t = 0.0
        self.heard: list[tuple[float, np.ndarray]] = []  # (time heard, samples)

    def now(self) -> float:
        return self.clock.t

    def audible_frame(self, t: float) -> float:
        return self.dac.audible_frame(t)

    def run_until(self, t: float) -> None:
        while self.next_t <= t:
            stall = next(((a, b) for a, b in self.stalls if a <= self.next_t < b), None)
            if stall:
                # nothing plays from its start: what the device held is heard that much later
                a, b = stall
                self.heard = [(t + (b - a) if t >= a else t, x) for t, x in self.heard]
                self.next_t = b
                continue
            saved, self.clock.t = self.clock.t, self.next_t
            n = int(PERIOD * RATE)
            heard_at = self.next_t + LATENCY
            first = self.timeline.frames
            out = np.zeros(n, np.float32)
            self.timeline.read_into(out, heard_at, 1.0 / RATE)
            self.dac.buffer(first, heard_at, self.next_t)
            self.heard.append((heard_at, out))
            self.clock.t = saved
            self.next_t += PERIOD

    def first_heard(self, threshold: float = 0.01) -> float:
        for t, x in self.heard:
            idx = np.flatnonzero(np.abs(x) > threshold)
            if len(idx):
                return t + idx[0] / RATE
        raise AssertionError("nothing was heard")


def tone(seconds: float) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * RATE)) / RATE)).astype(np.float32)


def play(stalls=(), queue_at: float = 1.0, lead_ms: float = 35.0):
    """Queue a tone at ``queue_at`` and run the real jaw loop at 50 Hz against the device;
    returns (time of the first jaw command that opens, time the tone is first heard)."""
    clock = SimClock(0.0)
    dev = Device(clock, stalls)
    jaw = SimJaw(Calibration(), clock=clock)
    follower = JawFollower(dev, jaw, lead_ms=lead_ms, clock=clock, rest_detach_s=10.0)
    x = tone(0.5)
    queued = False
    t = 0.0
    while t < queue_at + 3.0:
        clock.t = t
        dev.run_until(t)
        if not queued and t >= queue_at:
            dev.timeline.add(x, RATE, jaw_track(x, RATE), 100)
            queued = True
        follower.tick()
        t += 0.020
    first_cmd = next(t for t, o, us in jaw.log if us is not None and o > 0)
    return first_cmd, dev.first_heard(), dev


def test_on_a_steady_device_the_jaw_opens_lead_ms_before_the_sound_is_heard():
    cmd, heard, _ = play(lead_ms=35.0)
    # a command goes out at the first 20 ms tick that sees the sound within the lead
    assert 0.035 - 0.020 - 0.001 <= heard - cmd <= 0.035 + 0.001


def test_a_device_that_stalls_as_the_reply_starts_holds_the_jaw_back_with_the_sound():
    # the device stops taking frames just after the reply is queued, for 0.8 s (what a sound
    # server did when it restarted a stream after an underrun): the jaw must wait with the sound
    cmd, heard, dev = play(stalls=[(1.03, 1.83)], lead_ms=35.0)
    assert heard > 1.83  # the sound really was late
    # never ahead of the sound by more than the lead, the stall allowance and one servo frame
    assert heard - cmd <= 0.035 + dev.dac.stall_s + 0.020 + 0.001
    assert dev.dac.stall_s < 0.040


def test_the_audible_clock_runs_on_between_buffers_and_not_through_a_stall():
    clock = SimClock(0.0)
    dac = DacClock(RATE, LATENCY, clock=clock)
    for k in range(40):  # steady: a buffer every PERIOD, heard LATENCY later
        dac.buffer(int(k * PERIOD * RATE), k * PERIOD + LATENCY, k * PERIOD)
    last = 39 * PERIOD
    clock.t = last + 0.010  # between buffers: runs on in real time
    assert abs(dac.audible_frame(clock.t) - (clock.t - LATENCY) * RATE) < 1
    clock.t = last + 0.5  # no buffer for half a second: frozen just past the last one
    frozen = dac.audible_frame(clock.t)
    assert frozen <= (last + dac.stall_s - LATENCY) * RATE + 1
    # and the lookahead still applies on top of where it froze (the jaw's lead)
    assert abs(dac.audible_frame(clock.t + 0.035) - frozen - 0.035 * RATE) < 1


def test_interrupt_while_the_audio_thread_reads_never_blocks_it_and_new_replies_still_play():
    tl = Timeline(RATE)
    out = np.zeros(160, np.float32)
    stop = threading.Event()
    worst = [0.0]

    def audio_thread():
        while not stop.is_set():
            t = time.perf_counter()
            tl.read_into(out)
            worst[0] = max(worst[0], time.perf_counter() - t)

    th = threading.Thread(target=audio_thread)
    th.start()
    try:
        for _ in range(300):  # the event loop queues and interrupts as fast as it can
            tl.add(tone(0.05), RATE, [], 100)
            tl.clear()
        last = tl.add(tone(0.05), RATE, [], 100)
        deadline = time.monotonic() + 5
        while (last.start < 0 or tl.busy) and time.monotonic() < deadline:
            time.sleep(0.001)
    finally:
        stop.set()
        th.join()
    assert last.start >= 0 and last.pos == last.length  # the reply after the interrupts played whole
    assert not tl.queue


def test_clear_cuts_what_plays_and_drops_what_waits():
    tl = Timeline(RATE)
    a = tl.add(tone(0.5), RATE, [], 100)
    b = tl.add(tone(0.5), RATE, [], 100)
    out = np.zeros(1600, np.float32)
    tl.read_into(out)  # 0.1 s of a handed to the device
    assert np.any(out) and a.start == 0
    tl.clear()
    assert a.length == 1600 and b.start < 0 and not tl.busy
    tl.read_into(out)
    assert not np.any(out)  # nothing more of a, nothing of b
    assert tl.opening_at(2000) == 0.0 and tl.locate(2000) is None
