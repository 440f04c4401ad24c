"""Loudness -> jaw opening: the one mapping both the host (precomputed tracks) and the skull
(live level) use. Never copy it: the host imports :func:`jaw_track`, the skull's live mode
feeds :class:`LiveEnvelope`, and both run :meth:`JawMapper.map`.

The chain per frame (``fps`` frames per second, 100 by default), each step a ``[shape]`` knob:

1. speech-band level: energy of the ``band_hz`` band (where vowels open the mouth; plosive
   thumps below and sibilants above, spoken with teeth together, are left out), in dBFS.
   ``band_weights`` instead sums weighted sub-bands, like the boards that listen to three
   voice bands only;
2. noise gate: frames quieter than ``gate_dbfs`` keep the jaw shut;
3. gain: ``ref_dbfs`` is the level that opens the jaw fully; left unset, it is taken from the
   clip's own statistics (its ``ref_percentile`` level), so quiet and loud voices both use the
   whole travel; ``range_db`` below it the jaw is closed. A steady bed (music, hum, a crowd)
   that never dips for ``steady_ms`` raises that floor to 6 dB over its own quietest level, so
   only what rises above it opens the jaw;
4. curve: opening ** ``curve`` (below 1 opens wider on soft syllables);
5. attack/release: a one-pole follower, fast to open (``attack_ms``), slower to close
   (``release_ms``);
6. hold: once the jaw has opened it waits ``hold_ms`` before it starts closing, so it does not
   chatter on the dips inside a syllable;
7. deadband: changes smaller than ``deadband`` are not sent (the servo would only buzz);
8. clamp to 0..``max_open`` (a fraction of the calibrated range; the driver maps it to pulses
   and never leaves the calibrated range); openings under ``snap_closed`` count as shut.
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .validate import build
from .validate import need as check


STEADY_MARGIN_DB = 6.0
"""how far above a steady bed's quietest level a sound must rise to open the jaw"""


@dataclass(frozen=True)
class JawShape:
    fps: int = 100
    """jaw frames per second of a track"""
    band_hz: tuple = (300.0, 3000.0)
    """speech band whose energy drives the jaw, Hertz"""
    band_weights: tuple = ()
    """optional [[low_hz, high_hz, weight], ...] sub-bands summed instead of the flat band"""
    gate_dbfs: float = -50.0
    """below this level the jaw stays closed"""
    ref_dbfs: float | None = None
    """level that opens the jaw fully; None = from the clip (its ref_percentile level)"""
    ref_percentile: float = 95.0
    """which percentile of the clip's voiced frames opens the jaw fully (automatic gain)"""
    range_db: float = 30.0
    """how far below the reference level the jaw is closed"""
    steady_ms: float = 1000.0
    """a sound that never dips for this long is a steady bed (music, hum, a crowd): the jaw opens
    only on what rises 6 dB above its quietest level of that window; 0 = off"""
    curve: float = 1.2
    """opening = level ** curve; below 1 opens wider on soft syllables, above 1 only on loud ones"""
    attack_ms: float = 15.0
    """time constant to open"""
    release_ms: float = 30.0
    """time constant to close"""
    hold_ms: float = 20.0
    """an opened jaw waits this long before it starts closing"""
    deadband: float = 0.02
    """changes smaller than this (fraction of the travel) are not sent"""
    max_open: float = 1.0
    """fraction of the calibrated travel the jaw may use, 0..1"""
    snap_closed: float = 0.03
    """openings below this are sent as fully closed"""

    def check(self, where: str = "[shape]") -> None:
        def need(ok, key, rule):
            check(ok, where, key, getattr(self, key), rule)
        need(10 <= self.fps <= 1000, "fps", "must be 10..1000 frames per second")
        lo_hi = tuple(self.band_hz)
        need(len(lo_hi) == 2 and all(isinstance(v, (int, float)) for v in lo_hi) and 20 <= lo_hi[0] < lo_hi[1] <= 20000,
             "band_hz", "must be [low, high] Hertz with 20 <= low < high <= 20000")
        for b in self.band_weights:
            need(isinstance(b, (list, tuple)) and len(b) == 3 and all(isinstance(v, (int, float)) for v in b)
                 and 20 <= b[0] < b[1] <= 20000 and b[2] >= 0, "band_weights",
                 "each entry must be [low_hz, high_hz, weight] with 20 <= low < high <= 20000 and weight >= 0")
        need(not self.band_weights or any(b[2] > 0 for b in self.band_weights), "band_weights",
             "at least one band needs a weight above 0")
        need(-120 <= self.gate_dbfs <= 0, "gate_dbfs", "must be -120..0 dBFS")
        need(self.ref_dbfs is None or -100 <= self.ref_dbfs <= 0, "ref_dbfs", "must be -100..0 dBFS, or left out (automatic)")
        need(50 <= self.ref_percentile <= 100, "ref_percentile", "must be 50..100")
        need(3 <= self.range_db <= 90, "range_db", "must be 3..90 dB")
        need(self.steady_ms == 0 or 100 <= self.steady_ms <= 10000, "steady_ms", "must be 0 (off) or 100..10000 ms")
        need(0.1 <= self.curve <= 5, "curve", "must be 0.1..5")
        need(0 <= self.attack_ms <= 1000, "attack_ms", "must be 0..1000 ms")
        need(0 <= self.release_ms <= 2000, "release_ms", "must be 0..2000 ms")
        need(0 <= self.hold_ms <= 1000, "hold_ms", "must be 0..1000 ms")
        need(0 <= self.deadband <= 0.5, "deadband", "must be 0..0.5")
        need(0 < self.max_open <= 1, "max_open", "must be above 0 and at most 1")
        need(0 <= self.snap_closed < self.max_open, "snap_closed", "must be 0 or more and below max_open")

    def to_dict(self) -> dict:
        """For the ``hello`` message: only what differs from the defaults."""
        default = JawShape()
        return {k: (list(map(list, v)) if k == "band_weights" else list(v) if isinstance(v, tuple) else v)
                for k, v in asdict(self).items() if v != getattr(default, k)}

    @classmethod
    def from_dict(cls, d: dict, where: str = "jaw_shape") -> "JawShape":
        """A shape from a mapping (the ``jaw_shape`` of hello), through the one validator."""
        return build(cls, d, where)


def _bands(shape: JawShape) -> list[tuple[float, float, float]]:
    if shape.band_weights:
        return [(float(lo), float(hi), float(w)) for lo, hi, w in shape.band_weights]
    return [(float(shape.band_hz[0]), float(shape.band_hz[1]), 1.0)]


def window_samples(rate: int, shape: JawShape) -> int:
    """Samples in one level window: two jaw frames."""
    return max(16, int(round(2 * rate / shape.fps)))


LEVEL_BLOCK = 32
"""windows measured per FFT call: a block's arrays (~0.1 MB) stay in the cache and are reused
from the heap, where one call for a whole sentence's frames made several MB-sized arrays that
the allocator maps fresh (and the kernel zeroes) every time: 2.5 ms for a 3.4 s sentence's track
against 1.0 in blocks"""


def levels_of_windows(frames: np.ndarray, rate: int, shape: JawShape, rows: np.ndarray | None = None) -> np.ndarray:
    """Speech-band level (dBFS, a full-scale sine reads about -3) of each row of ``frames``, or
    of the rows ``rows`` of it (picked block by block, never copied whole)."""
    window, weights, nfft, bins = _weighing(frames.shape[1], rate, tuple(_bands(shape)))
    weights = weights[bins]
    n = len(frames) if rows is None else len(rows)
    energy = np.empty(n)
    for i in range(0, n, LEVEL_BLOCK):
        block = frames[i:i + LEVEL_BLOCK] if rows is None else frames[rows[i:i + LEVEL_BLOCK]]
        # float64: numpy's float32 FFT measured 3x slower here. rfft pads each row itself, and
        # only the band's bins are squared and weighed (a quarter of them for 300-3000 Hz)
        spec = np.fft.rfft(block * window, n=nfft, axis=1)[:, bins]
        energy[i:i + LEVEL_BLOCK] = (spec.real ** 2 + spec.imag ** 2) @ weights
    return 10.0 * np.log10(energy + 1e-12)


@functools.lru_cache(maxsize=32)
def _weighing(win: int, rate: int, bands: tuple) -> tuple[np.ndarray, np.ndarray, int, slice]:
    """The analysis window, the band weights per FFT bin (the power normalisation folded in), the
    FFT size and the bins with a weight (a slice from the first to the last), for windows of
    ``win`` samples and ``bands`` ((low Hz, high Hz, weight), ...): the same for every frame at
    one rate."""
    nfft = 1 << (win - 1).bit_length()
    freqs = np.fft.rfftfreq(nfft, 1.0 / rate)
    weights = np.zeros(len(freqs))
    for lo, hi, w in bands:
        weights[(freqs >= lo) & (freqs <= hi)] += w
    window = np.hanning(win)
    norm = np.sum(window.astype(np.float32) ** 2) * nfft / 2.0
    weighed = np.flatnonzero(weights)
    bins = slice(int(weighed[0]), int(weighed[-1]) + 1) if len(weighed) else slice(0, 0)
    return window, weights / norm, nfft, bins


def frame_levels_dbfs(x: np.ndarray, rate: int, shape: JawShape = JawShape()) -> np.ndarray:
    """Speech-band level of each jaw frame of mono float audio, dBFS; frame k is centred on
    k / fps seconds (the host knows the audio in advance)."""
    hop = rate / shape.fps
    n_frames = int(np.ceil(len(x) / hop)) if len(x) else 0
    win = window_samples(rate, shape)
    if not n_frames:
        return np.zeros(0)
    padded = np.concatenate([np.zeros(win // 2, np.float32), np.asarray(x, np.float32), np.zeros(win, np.float32)])
    starts = (np.arange(n_frames) * hop).astype(int)
    return levels_of_windows(sliding_window_view(padded, win), rate, shape, rows=starts)


def reference_dbfs(levels_dbfs: np.ndarray, shape: JawShape = JawShape()) -> float:
    """The level that opens the jaw fully: ``shape.ref_dbfs``, or the clip's own
    ``ref_percentile`` level over its frames above the gate (automatic gain)."""
    if shape.ref_dbfs is not None:
        return shape.ref_dbfs
    voiced = levels_dbfs[levels_dbfs > shape.gate_dbfs]
    return float(np.percentile(voiced, shape.ref_percentile)) if len(voiced) else shape.gate_dbfs + shape.range_db


class JawMapper:
    """Level -> opening, the one mapping. Stateful (follower, hold and deadband keep their
    state between calls), so live audio can be fed block by block; a whole clip is one call.

    ``ref_dbfs``: the level that opens the jaw fully. Left out, it is ``shape.ref_dbfs``, or,
    when that is automatic too, it adapts to the levels seen so far (live mode: the clip is not
    known in advance), starting at -20 dBFS.
    """

    LIVE_START_DBFS = -20.0

    def __init__(self, shape: JawShape = JawShape(), ref_dbfs: float | None = None):
        self.shape = shape
        self.adaptive = ref_dbfs is None and shape.ref_dbfs is None
        self.ref_dbfs = ref_dbfs if ref_dbfs is not None else (
            shape.ref_dbfs if shape.ref_dbfs is not None else self.LIVE_START_DBFS)
        dt = 1.0 / shape.fps
        self._a_open = 1.0 - math.exp(-dt / (shape.attack_ms / 1000.0)) if shape.attack_ms > 0 else 1.0
        self._a_close = 1.0 - math.exp(-dt / (shape.release_ms / 1000.0)) if shape.release_ms > 0 else 1.0
        self._hold_frames = int(round(shape.hold_ms / 1000.0 * shape.fps))
        self._seen: list[float] = []
        self._steady = int(round(shape.steady_ms / 1000.0 * shape.fps))
        self._recent = np.zeros(0)  # the last steady_ms of levels
        self.value = 0.0  # the follower
        self.out = 0.0  # what was last put out (after hold, deadband, clamp)
        self._held = 0

    def _adapt(self, levels: np.ndarray) -> None:
        s = self.shape
        voiced = levels[levels > s.gate_dbfs]
        if not len(voiced):
            return
        self._seen.extend(float(v) for v in voiced)
        del self._seen[:-10 * s.fps]  # the last ~10 s of voiced frames
        if len(self._seen) >= s.fps // 4:  # a quarter second of voice before trusting it
            self.ref_dbfs = float(np.percentile(self._seen, s.ref_percentile))

    def map(self, levels_dbfs: np.ndarray) -> np.ndarray:
        s = self.shape
        levels = np.asarray(levels_dbfs, np.float64)
        if self.adaptive:
            self._adapt(levels)
        floor = np.full(len(levels), self.ref_dbfs - s.range_db)
        if self._steady:
            recent = np.concatenate([self._recent, levels])
            first = len(self._recent) + 1 - self._steady  # frame 0's window starts here
            if len(recent) >= self._steady:  # a full window: its quietest level
                quietest = sliding_window_view(recent, self._steady).min(axis=1)
                full = slice(max(0, -first), None)
                floor[full] = np.maximum(floor[full], quietest[max(0, first):] + STEADY_MARGIN_DB)
            self._recent = recent[-self._steady:]
        raw = np.clip((levels - floor) / s.range_db, 0.0, 1.0) ** s.curve * s.max_open
        raw[levels < s.gate_dbfs] = 0.0
        out = [0.0] * len(raw)
        v, o, held = self.value, self.out, self._held
        for i, target in enumerate(raw.tolist()):  # Python floats: numpy scalars one by one are slower
            if target > v:
                v += (target - v) * self._a_open
                held = 0
            elif held < self._hold_frames:
                held += 1
            else:
                v += (target - v) * self._a_close
            n = 0.0 if v < s.snap_closed else min(s.max_open, v)
            if n == 0.0 or n == s.max_open or abs(n - o) >= s.deadband:
                o = n
            out[i] = o
        self.value, self.out, self._held = v, o, held
        return np.array(out, np.float32)


def jaw_track(x: np.ndarray, rate: int, shape: JawShape = JawShape()) -> np.ndarray:
    """A whole clip's jaw track: opening 0..1 per frame, frame k at k/fps seconds."""
    levels = frame_levels_dbfs(x, rate, shape)
    return JawMapper(shape, reference_dbfs(levels, shape)).map(levels)


class LiveEnvelope:
    """Live level: audio pushed as it goes to the speaker (not known in advance) through the
    same mapping. Each jaw frame's level is measured over the window that ends at that frame,
    so the track trails the precomputed one by one frame."""

    def __init__(self, rate: int, shape: JawShape = JawShape()):
        self.rate, self.shape = rate, shape
        self.hop = rate / shape.fps
        self.win = window_samples(rate, shape)
        self.mapper = JawMapper(shape)
        self._buf = np.zeros(self.win, np.float32)
        self._pending = 0.0  # samples since the last frame
        self.opening = 0.0

    def push(self, samples: np.ndarray) -> float:
        """Feed the next samples; returns the opening after them."""
        x = np.asarray(samples, np.float32)
        if not len(x):
            return self.opening
        buf = np.concatenate([self._buf, x])
        ends, pos = [], self._pending
        while pos + len(x) >= self.hop * (len(ends) + 1):
            ends.append(int(round(self.hop * (len(ends) + 1) - pos)))
        self._pending = pos + len(x) - self.hop * len(ends)
        if ends:
            base = len(buf) - len(x)
            frames = np.stack([buf[base + e - self.win:base + e] for e in ends])
            self.opening = float(self.mapper.map(levels_of_windows(frames, self.rate, self.shape))[-1])
        self._buf = buf[-self.win:]
        return self.opening
