"""Speakers, and the playback clock the jaw follows.

Reply segments are queued on a :class:`Timeline`: one continuous stream of frames at the
player's rate, with silence where the next segment has not arrived yet. The player reads the
timeline block by block and knows when each block reaches the DAC, so
``audible_frame(t)`` tells which timeline frame is heard at clock time ``t``. The jaw loop asks
for the frame heard ``lead_ms`` from now and opens the jaw as that frame's track says.
"""
from __future__ import annotations

import collections
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np

from ..core.errors import DeviceError
from ..ports import Device
from ..core.wav import resample

log = logging.getLogger("skull.player")


class Place(NamedTuple):
    """A point of the reply: the segment's tag and the seconds into it."""
    tag: object
    seconds: float


@dataclass(eq=False)
class Segment:
    samples: np.ndarray
    """mono float at the timeline's rate"""
    jaw: np.ndarray
    """opening 0..1 per jaw frame"""
    jaw_fps: int
    tag: object = None
    """who it belongs to, e.g. SegmentTag(turn, seq)"""
    start: int = -1
    """timeline frame of its first sample, set when it starts playing"""
    started_at: float = 0.0
    """time.monotonic() when its first sample was handed to the device"""
    heard_at: float = 0.0
    """time.monotonic() when its first sample leaves the speaker (device latency included)"""
    length: int = 0
    """samples that play: all of them, or fewer once an interrupt cut it"""
    pos: int = 0
    """samples handed to the device so far (written by the audio thread only)"""

    def __post_init__(self):
        self.length = len(self.samples)

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass
class Timeline:
    """Reply segments on one continuous stream of frames.

    The audio thread (:meth:`read_into`) never waits for another thread: there is no lock. The
    event loop only appends to ``queue`` and swaps it for an empty one (:meth:`clear`), both
    single atomic steps under the interpreter; the audio thread alone advances ``frames``, a
    segment's ``pos`` and replaces (never mutates) the ``playing`` list; readers (the jaw loop,
    views) work on a snapshot of both.
    """
    rate: int
    frames: int = 0
    """frames handed to the device so far"""
    queue: collections.deque = field(default_factory=collections.deque)
    playing: list = field(default_factory=list)
    on_start: Callable[[Segment], None] | None = None
    on_drained: Callable[[], None] | None = None

    def add(self, samples: np.ndarray, rate: int, jaw, jaw_fps: int, tag=None) -> Segment:
        seg = Segment(resample(np.asarray(samples, np.float32), rate, self.rate), np.asarray(jaw, np.float32),
                      jaw_fps, tag)
        self.queue.append(seg)
        return seg

    def clear(self) -> None:
        """Drop everything queued and cut what is playing (an interrupt). What the device already
        holds still plays out (one device buffer)."""
        self.queue = collections.deque()
        frames = self.frames
        for seg in self.playing:
            if seg.end > frames:
                seg.length = max(0, frames - seg.start)

    def read(self, n: int, heard_at: float | None = None, seconds_per_frame: float = 0.0) -> np.ndarray:
        """The next ``n`` frames as a new array (simulated devices)."""
        out = np.zeros(n, np.float32)
        self.read_into(out, heard_at, seconds_per_frame)
        return out

    def read_into(self, out: np.ndarray, heard_at: float | None = None, seconds_per_frame: float = 0.0) -> None:
        """Fill ``out`` with the next frames for the device (called from the audio thread; no
        allocation but the small list of segments that start in it). ``heard_at``: when the
        first of them will be heard (time.monotonic()), and ``seconds_per_frame`` after it."""
        n = len(out)
        queue, filled, started, drained = self.queue, 0, None, False
        while filled < n and queue:
            seg = queue[0]
            if seg.start < 0:
                seg.start, seg.started_at = self.frames + filled, time.monotonic()
                seg.heard_at = (heard_at + filled * seconds_per_frame) if heard_at is not None else seg.started_at
                self.playing = [s for s in self.playing if s.end > self.frames - 10 * self.rate] + [seg]
                started = (started or []) + [seg]
            take = min(n - filled, seg.length - seg.pos)
            if take > 0:
                out[filled:filled + take] = seg.samples[seg.pos:seg.pos + take]
                filled += take
                seg.pos += take
            if seg.pos >= seg.length:
                try:
                    queue.popleft()
                except IndexError:  # cleared meanwhile
                    pass
                drained = not queue
        out[filled:] = 0.0
        self.frames += n
        for seg in started or ():
            if self.on_start:
                self.on_start(seg)
        if drained and self.on_drained:
            self.on_drained()

    def _spans(self):
        """(segment, first frame) of what is playing and of what is queued behind it. A queued
        segment starts exactly where the one before it ends (or at the next frame handed to the
        device when nothing plays), so the jaw can look ahead into it."""
        playing, queue, frames = self.playing, list(self.queue), self.frames
        spans = [(seg, seg.start) for seg in playing]
        nxt = frames
        for seg in queue:
            if seg.start >= 0:  # the head is already playing
                nxt = seg.start + seg.length
                continue
            spans.append((seg, nxt))
            nxt += seg.length
        return spans

    def opening_at(self, frame: float) -> float | None:
        """Jaw opening for the sound at timeline ``frame`` (0 in silence); None when that sound
        came without a jaw track (the live level must be used)."""
        for seg, start in self._spans():
            if start <= frame < start + seg.length:
                if not len(seg.jaw):
                    return None
                # between two track frames: the straight line between them
                pos = (frame - start) / self.rate * seg.jaw_fps
                k = int(pos)
                if not 0 <= k < len(seg.jaw):
                    return 0.0
                a = float(seg.jaw[k])
                b = float(seg.jaw[k + 1]) if k + 1 < len(seg.jaw) else 0.0
                return a + (b - a) * (pos - k) if a and b else (a if pos - k < 0.5 else b)
        return 0.0

    def locate(self, frame: float) -> Place | None:
        """Which segment sounds at timeline ``frame``, and how far into it; None in silence."""
        for seg, start in self._spans():
            if start <= frame < start + seg.length:
                return Place(seg.tag, (frame - start) / self.rate)
        return None

    def samples(self, a: int, b: int) -> np.ndarray:
        """The sound of timeline frames a..b that was handed to the device (silence elsewhere)."""
        a, b = int(a), int(min(b, self.frames))
        out = np.zeros(max(0, b - a), np.float32)
        for seg in self.playing:
            lo, hi = max(a, seg.start), min(b, seg.start + min(seg.length, seg.pos))
            if lo < hi:
                out[lo - a:hi - a] = seg.samples[lo - seg.start:hi - seg.start]
        return out

    @property
    def busy(self) -> bool:
        frames = self.frames
        return bool(self.queue) or any(s.end > frames for s in self.playing)


class ClockPlayer(Device):
    """No sound device: consumes the timeline in real time, as a speaker would, with a
    simulated output latency of one block. Used by --no-audio and wherever no speaker exists."""

    name = "simulated speaker (no audio device)"

    def __init__(self, rate: int = 22050, block_ms: float = 20.0, speed: float = 1.0):
        """``speed`` > 1 plays faster than real time (tests); the jaw follows the same clock."""
        self.rate, self.speed = rate, speed
        self.block = int(rate * block_ms / 1000)
        self.latency_s = self.block / rate
        self.timeline = Timeline(rate)
        self._stop = threading.Event()
        self._thread = None
        self._t0 = 0.0

    def now(self) -> float:
        return time.monotonic()

    def audible_frame(self, t: float) -> float:
        """Timeline frame heard at clock time ``t``: frame F is handed over ``latency_s`` early
        and heard at t0 + F / rate (the same time ``Segment.heard_at`` gives)."""
        return (t - self._t0) * self.speed * self.rate

    def start(self) -> None:
        self._stop.clear()
        self._t0 = time.monotonic()
        self.timeline.frames = 0
        self._thread = threading.Thread(target=self._run, name="clock-player", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            # keep one block ahead of the clock, like a device buffer
            due = self._t0 + (self.timeline.frames / self.rate - self.latency_s) / self.speed
            wait = due - time.monotonic()
            if wait > 0:
                self._stop.wait(wait)
                continue
            self.timeline.read(self.block, self._t0 + self.timeline.frames / self.rate / self.speed,
                               1.0 / self.rate / self.speed)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None


class DacClock:
    """Which timeline frame is heard when, from what the device said of each buffer.

    For every buffer the device tells when its first sample reaches the DAC. Between buffers
    the position runs on in real time, but never further than ``stall_s`` past the last one:
    buffers are asked for whenever the device has taken a period's worth, so when they stop
    coming the device has stopped (an underrun being recovered, a sound server starting a
    stream late) or this process is starved, and in neither case does the sound go on for
    long. The jaw therefore never runs ahead of a stalled device by more than ``stall_s``, and
    the next buffer puts it back on the device's time.
    """

    def __init__(self, rate: int, latency_s: float, clock=time.monotonic):
        self.rate, self.latency_s, self.clock = rate, latency_s, clock
        # (first timeline frame of the buffer, clock time it is heard, clock time it was asked
        # for): replaced whole by the audio thread, read whole by others
        self._anchor = (0, 0.0, 0.0)
        self._gaps = np.zeros(64)  # seconds between buffers, a ring
        self._n = 0

    def buffer(self, first_frame: int, heard_at: float, now: float) -> None:
        """The device asked for a buffer at ``now``; its first frame is heard at ``heard_at``."""
        at = self._anchor[2]
        self._gaps[self._n % 64] = now - at
        self._n += 1
        self._anchor = (first_frame, heard_at, now)

    @property
    def stall_s(self) -> float:
        """How long after a buffer the position still runs on: a quarter more than the usual longest gap
        between buffers (a quarter of the latency on ALSA), at least 15 ms."""
        n = min(self._n, 64)
        usual = float(np.percentile(self._gaps[:n], 90)) if n >= 8 else self.latency_s / 4
        return max(0.015, 1.25 * min(usual, self.latency_s))

    def audible_frame(self, t: float) -> float:
        frame, heard, at = self._anchor
        now = self.clock()
        ran_on = min(now, at + self.stall_s)  # not through a stall
        return frame + (ran_on - heard + (t - now)) * self.rate


class SoundDevicePlayer(Device):
    """A real speaker through PortAudio.

    The stream is opened once and runs for the life of the agent, playing silence between
    replies, so no reply waits for a device to start. Its buffer (``latency_ms``, 100 by
    default) is what an ordinary hiccup of this process must not outlast; the callback does
    nothing but copy samples (no lock, no logging, no allocation but a few small objects).

    The audible clock is a :class:`DacClock` fed with PortAudio's ``outputBufferDacTime`` of
    every buffer.
    """

    def __init__(self, device=None, rate: int | None = None, latency_ms: float = 100.0,
                 start_timeout_s: float = 3.0):
        import sounddevice as sd
        self.sd, self.device = sd, device
        try:
            info = sd.query_devices(device, kind="output")
        except Exception as exc:
            raise DeviceError(f"no speaker {'named ' + repr(device) + ' ' if device is not None else ''}found ({exc}); "
                              f"plug one in, choose one from '{sys.executable} -m sounddevice' in skull.toml [audio] "
                              f"output_device, or run with --no-audio") from None
        self.name = f"{info['name']} (sound device)"
        self.rate = int(rate or info["default_samplerate"])
        self.latency_ms, self.start_timeout_s = latency_ms, start_timeout_s
        self.latency_s = latency_ms / 1000.0
        """the output latency the stream reports once open"""
        self.timeline = Timeline(self.rate)
        self.underflows = 0
        """output underflows PortAudio flagged since start"""
        self.started_in_s: float | None = None
        """how long the device took from start() to play (None: it never did)"""
        self._stream = None
        self.clock = DacClock(self.rate, self.latency_s)

    def _callback(self, outdata, frames, t, status):
        now = time.monotonic()
        if status.output_underflow:
            self.underflows += 1
        first = self.timeline.frames
        dac = t.outputBufferDacTime
        # the DAC time on the monotonic clock (the stream's clock may be another one)
        heard = now + (dac - t.currentTime) if dac and t.currentTime else now + self.latency_s
        self.timeline.read_into(outdata[:, 0], heard, 1.0 / self.rate)
        self.clock.buffer(first, heard, now)

    @property
    def underruns(self) -> int:
        """Output underflows PortAudio flagged since the device started playing. ALSA's pulse
        plugin may recover from one without a flag (it only prints "underrun occurred"): what
        the device really played is measured from the sink's monitor (bench/device_sync.py)."""
        return self.underflows

    def now(self) -> float:
        return time.monotonic()

    def audible_frame(self, t: float) -> float:
        return self.clock.audible_frame(t)

    def start(self) -> None:
        """Open the stream and wait (up to ``start_timeout_s``) until the device really plays:
        a sound server may take a second to start a new stream, and a reply queued before then
        would be timed from a clock that is not running yet."""
        started = time.monotonic()
        try:
            self._stream = self.sd.OutputStream(device=self.device, samplerate=self.rate, channels=1,
                                                dtype="float32", blocksize=0, latency=self.latency_s,
                                                callback=self._callback)
            self._stream.start()
        except Exception as exc:
            self._stream = None
            raise DeviceError(f"speaker {self.name!r} cannot play at {self.rate} Hz: {exc}") from exc
        self.latency_s = self.clock.latency_s = float(self._stream.latency)
        # playing = the device took more than its first fill of the buffer (the stream's
        # latency, a little more on ALSA): another 50 ms beyond it
        playing_at = int((1.25 * self.latency_s + 0.05) * self.rate)
        while time.monotonic() < started + self.start_timeout_s:
            if self.timeline.frames >= playing_at:
                self.started_in_s = time.monotonic() - started
                log.info("speaker %s playing after %.0f ms, output latency %.0f ms", self.name,
                         self.started_in_s * 1000, self.latency_s * 1000)
                self.underflows = 0
                return
            time.sleep(0.005)
        log.warning("speaker %s did not start playing within %.1f s; replies are timed as if it had", self.name,
                    self.start_timeout_s)

    def close(self) -> None:
        if self._stream is not None:
            try:
                self._stream.stop()
                self._stream.close()
            finally:
                self._stream = None


def open_player(device=None, enabled: bool = True, latency_ms: float = 100.0):
    """The real speaker when there is one and ``enabled``; otherwise the simulated one."""
    if enabled:
        try:
            return SoundDevicePlayer(device, latency_ms=latency_ms)
        except (DeviceError, OSError) as exc:  # OSError: PortAudio library missing
            log.warning("%s; replies are timed but not heard", exc)
    return ClockPlayer()
