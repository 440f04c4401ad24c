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


@dataclass
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

    @property
    def end(self) -> int:
        return self.start + len(self.samples)


@dataclass
class Timeline:
    rate: int
    frames: int = 0
    """frames handed to the device so far"""
    queue: collections.deque = field(default_factory=collections.deque)
    playing: list = field(default_factory=list)
    on_start: Callable[[Segment], None] | None = None
    on_drained: Callable[[], None] | None = None

    def __post_init__(self):
        self._lock = threading.Lock()
        self._pos = 0  # position inside the head segment of the queue

    def add(self, samples: np.ndarray, rate: int, jaw, jaw_fps: int, tag=None) -> Segment:
        seg = Segment(resample(np.asarray(samples, np.float32), rate, self.rate), np.asarray(jaw, np.float32),
                      jaw_fps, tag)
        with self._lock:
            self.queue.append(seg)
        return seg

    def clear(self) -> None:
        """Drop everything queued and cut what is playing (an interrupt)."""
        with self._lock:
            self.queue.clear()
            self._pos = 0
            for seg in self.playing:
                if seg.end > self.frames:
                    seg.samples = seg.samples[:max(0, self.frames - seg.start)]
            self.playing = [s for s in self.playing if len(s.samples)]

    def read(self, n: int, heard_at: float | None = None, seconds_per_frame: float = 0.0) -> np.ndarray:
        """The next ``n`` frames for the device (called from the audio thread). ``heard_at``: when
        the first of them will be heard (time.monotonic()), and ``seconds_per_frame`` after it."""
        out = np.zeros(n, np.float32)
        started, drained = [], False
        with self._lock:
            filled = 0
            while filled < n and self.queue:
                seg = self.queue[0]
                if self._pos == 0:
                    seg.start, seg.started_at = self.frames + filled, time.monotonic()
                    seg.heard_at = (heard_at + filled * seconds_per_frame) if heard_at is not None else seg.started_at
                    self.playing.append(seg)
                    started.append(seg)
                take = min(n - filled, len(seg.samples) - self._pos)
                out[filled:filled + take] = seg.samples[self._pos:self._pos + take]
                filled += take
                self._pos += take
                if self._pos >= len(seg.samples):
                    self.queue.popleft()
                    self._pos = 0
                    drained = not self.queue
            self.frames += n
            # forget segments long past (keep 10 s for the jaw's look-back)
            self.playing = [s for s in self.playing if s.end > self.frames - 10 * self.rate]
        for seg in started:
            if self.on_start:
                self.on_start(seg)
        if drained and self.on_drained:
            self.on_drained()
        return out

    def _spans(self):
        """(segment, first frame) of what is playing and of what is queued behind it. A queued
        segment starts exactly where the one before it ends (or at the next frame handed to the
        device when nothing plays), so the jaw can look ahead into it. Call with the lock held."""
        spans = [(seg, seg.start) for seg in self.playing]
        nxt = self.frames
        for i, seg in enumerate(self.queue):
            if i == 0 and self._pos > 0:  # the head is already playing
                nxt = seg.start + len(seg.samples)
                continue
            spans.append((seg, nxt))
            nxt += len(seg.samples)
        return spans

    def opening_at(self, frame: float) -> float | None:
        """Jaw opening for the sound at timeline ``frame`` (0 in silence); None when that sound
        came without a jaw track (the live level must be used)."""
        with self._lock:
            for seg, start in self._spans():
                if start <= frame < start + len(seg.samples):
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
        with self._lock:
            for seg, start in self._spans():
                if start <= frame < start + len(seg.samples):
                    return Place(seg.tag, (frame - start) / self.rate)
        return None

    def samples(self, a: int, b: int) -> np.ndarray:
        """The sound of timeline frames a..b that was handed to the device (silence elsewhere)."""
        a, b = int(a), int(min(b, self.frames))
        out = np.zeros(max(0, b - a), np.float32)
        with self._lock:
            for seg in self.playing:
                lo, hi = max(a, seg.start), min(b, seg.end)
                if lo < hi:
                    out[lo - a:hi - a] = seg.samples[lo - seg.start:hi - seg.start]
        return out

    @property
    def busy(self) -> bool:
        with self._lock:
            return bool(self.queue) or any(s.end > self.frames for s in self.playing)


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


class SoundDevicePlayer(Device):
    """A real speaker through PortAudio. The stream runs continuously (silence between replies)
    so the DAC clock is always known: PortAudio tells, for every buffer, when its first sample
    reaches the DAC (``outputBufferDacTime``, on the stream's clock)."""

    def __init__(self, device=None, rate: int | None = None, block_ms: float = 10.0):
        import sounddevice as sd
        self.sd, self.device = sd, device
        try:
            info = sd.query_devices(device, kind="output")
        except Exception as exc:
            raise DeviceError(f"no speaker {'named ' + repr(device) if device is not None else ''} found ({exc}); "
                              f"plug one in, choose one from 'python -m sounddevice' in skull.toml [audio] "
                              f"output_device, or run with --no-audio") from None
        self.name = f"{info['name']} (sound device)"
        self.rate = int(rate or info["default_samplerate"])
        self.block = int(self.rate * block_ms / 1000)
        self.timeline = Timeline(self.rate)
        self._stream = None
        self._anchor = (0, 0.0)  # (timeline frame, DAC time of that frame)
        self._lock = threading.Lock()

    def _callback(self, outdata, frames, t, status):
        if status.output_underflow:
            log.warning("speaker underrun")
        first = self.timeline.frames
        dac = t.outputBufferDacTime or (t.currentTime + (self._stream.latency if self._stream else 0.0))
        # the DAC time on the monotonic clock, for first_audio
        heard = time.monotonic() + max(0.0, dac - t.currentTime) if t.currentTime else None
        outdata[:, 0] = self.timeline.read(frames, heard, 1.0 / self.rate)
        with self._lock:
            self._anchor = (first, dac)

    def now(self) -> float:
        return self._stream.time if self._stream is not None else 0.0

    def audible_frame(self, t: float) -> float:
        with self._lock:
            frame, dac = self._anchor
        # a device that stalls (PulseAudio does for a second or two after a stream starts) does not
        # play what it was never given: never run ahead of the frames handed to it
        limit = self.timeline.frames + max(0.0, t - self.now()) * self.rate
        return min(frame + (t - dac) * self.rate, limit)

    def start(self) -> None:
        try:
            self._stream = self.sd.OutputStream(device=self.device, samplerate=self.rate, channels=1,
                                                dtype="float32", blocksize=self.block, latency="low",
                                                callback=self._callback)
            self._stream.start()
        except Exception as exc:
            self._stream = None
            raise DeviceError(f"speaker {self.name!r} cannot play at {self.rate} Hz: {exc}") from exc

    def close(self) -> None:
        if self._stream is not None:
            try:
                self._stream.stop()
                self._stream.close()
            finally:
                self._stream = None


def open_player(device=None, enabled: bool = True):
    """The real speaker when there is one and ``enabled``; otherwise the simulated one."""
    if enabled:
        try:
            return SoundDevicePlayer(device)
        except (DeviceError, OSError) as exc:  # OSError: PortAudio library missing
            log.warning("%s; replies are timed but not heard", exc)
    return ClockPlayer()
