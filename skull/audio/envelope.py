"""Loudness -> jaw opening: the one mapping both the host (precomputed tracks) and the skull
(live level) use. Never copy it.

The chain per frame (``fps`` frames per second, 100 by default):

1. speech-band level: energy of the 300-3000 Hz band (where vowels open the mouth; plosive
   thumps below and sibilants above, spoken with teeth together, are left out), in dBFS;
2. noise gate: frames quieter than ``gate_dbfs`` keep the jaw shut;
3. gain: ``ref_dbfs`` is the level that opens the jaw fully; with ``None`` it is taken from the
   clip's own statistics (its 95th-percentile level), so quiet and loud voices both use the
   whole travel; ``range_db`` below it the jaw is closed;
4. curve: opening ** ``curve`` (below 1 opens wider on soft syllables);
5. attack/release: a one-pole follower, fast to open, slower to close, so the jaw does not
   chatter;
6. clamp to 0..``max_open`` (a fraction of the calibrated range; the driver maps it to pulses);
   openings under ``snap_closed`` count as shut (exactly 0), so the release tail does not keep
   the servo twitching a hair open between words.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class JawShape:
    fps: int = 100
    """jaw frames per second"""
    band_hz: tuple = (300.0, 3000.0)
    """speech band whose energy drives the jaw, Hertz"""
    gate_dbfs: float = -50.0
    """below this level the jaw stays closed"""
    ref_dbfs: float | None = None
    """level that opens the jaw fully; None = from the clip (95th percentile of gated frames)"""
    range_db: float = 30.0
    """how far below the reference level the jaw is closed"""
    curve: float = 0.8
    attack_ms: float = 15.0
    """time constant to open"""
    release_ms: float = 60.0
    """time constant to close"""
    max_open: float = 1.0
    """fraction of the calibrated travel the track may use, 0..1"""
    snap_closed: float = 0.01
    """openings below this are sent as fully closed"""


def frame_levels_dbfs(x: np.ndarray, rate: int, shape: JawShape = JawShape()) -> np.ndarray:
    """Speech-band level of each jaw frame of mono float audio, dBFS (a full-scale sine ~ -3)."""
    hop = rate / shape.fps
    n_frames = int(np.ceil(len(x) / hop)) if len(x) else 0
    win = max(16, int(round(2 * hop)))  # 2-frame window centred on the frame
    nfft = 1 << (win - 1).bit_length()
    freqs = np.fft.rfftfreq(nfft, 1.0 / rate)
    band = (freqs >= shape.band_hz[0]) & (freqs <= shape.band_hz[1])
    window = np.hanning(win).astype(np.float32)
    norm = np.sum(window ** 2) * nfft / 2.0  # so a full-scale sine reads about -3 dBFS
    padded = np.concatenate([np.zeros(win // 2, np.float32), x.astype(np.float32), np.zeros(win, np.float32)])
    starts = (np.arange(n_frames) * hop).astype(int)
    frames = np.stack([padded[s:s + win] for s in starts]) if n_frames else np.zeros((0, win), np.float32)
    spec = np.abs(np.fft.rfft(frames * window, nfft, axis=1)) ** 2
    energy = spec[:, band].sum(axis=1) / norm
    return 10.0 * np.log10(energy + 1e-12)


def reference_dbfs(levels_dbfs: np.ndarray, shape: JawShape = JawShape()) -> float:
    """The level that opens the jaw fully: ``shape.ref_dbfs`` or the clip's 95th percentile."""
    if shape.ref_dbfs is not None:
        return shape.ref_dbfs
    voiced = levels_dbfs[levels_dbfs > shape.gate_dbfs]
    return float(np.percentile(voiced, 95)) if len(voiced) else shape.gate_dbfs + shape.range_db


class JawMapper:
    """Stateful level -> opening mapping (the attack/release follower keeps its state between
    calls, so live audio can be fed block by block)."""

    def __init__(self, shape: JawShape = JawShape(), ref_dbfs: float | None = None):
        self.shape = shape
        self.ref_dbfs = ref_dbfs if ref_dbfs is not None else (shape.ref_dbfs if shape.ref_dbfs is not None else -20.0)
        dt = 1.0 / shape.fps
        self._a_open = 1.0 - np.exp(-dt / max(shape.attack_ms / 1000.0, 1e-6))
        self._a_close = 1.0 - np.exp(-dt / max(shape.release_ms / 1000.0, 1e-6))
        self.value = 0.0

    def map(self, levels_dbfs: np.ndarray) -> np.ndarray:
        s = self.shape
        floor = self.ref_dbfs - s.range_db
        raw = np.clip((levels_dbfs - floor) / s.range_db, 0.0, 1.0) ** s.curve
        raw[levels_dbfs < s.gate_dbfs] = 0.0
        out = np.empty(len(raw), np.float32)
        v = self.value
        for i, target in enumerate(raw):
            v += (target - v) * (self._a_open if target > v else self._a_close)
            out[i] = v
        self.value = v
        out[out < s.snap_closed] = 0.0
        return np.clip(out, 0.0, s.max_open)


def jaw_track(x: np.ndarray, rate: int, shape: JawShape = JawShape()) -> np.ndarray:
    """A whole clip's jaw track: opening 0..1 per frame, frame k at k/fps seconds."""
    levels = frame_levels_dbfs(x, rate, shape)
    return JawMapper(shape, reference_dbfs(levels, shape)).map(levels)
