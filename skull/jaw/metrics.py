"""How well a jaw follows the sound: the figures `skull replay --report` and bench/jaw_sync.py
print, computed the same way for every method.

* heard loudness: short-time RMS of the audio as it leaves the speaker (20 ms windows every
  5 ms), raised to the 0.6 power (Stevens' law: loudness grows as intensity ** 0.3). It is
  deliberately not the jaw mapping itself, so no method is scored against its own yardstick;
* effective lag: the shift of the physical jaw (from the servo model) that best lines it up with
  the loudness, by cross-correlation over +-300 ms, refined between samples; positive = the jaw
  is late;
* correlation: Pearson r at that shift.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

HOP_S = 0.005


def loudness(x: np.ndarray, rate: int, hop_s: float = HOP_S, win_s: float = 0.020) -> np.ndarray:
    """Loudness every ``hop_s`` seconds (value k is centred on k * hop_s)."""
    x = np.asarray(x, np.float64)
    hop, win = rate * hop_s, int(round(rate * win_s))
    n = int(math.ceil(len(x) / hop)) if len(x) else 0
    padded = np.concatenate([np.zeros(win // 2), x, np.zeros(win)])
    c = np.concatenate([[0.0], np.cumsum(padded ** 2)])
    starts = (np.arange(n) * hop).astype(int)
    rms = np.sqrt(np.maximum(c[starts + win] - c[starts], 0.0) / win)
    return rms ** 0.6


def effective_lag(jaw: np.ndarray, loud: np.ndarray, hop_s: float = HOP_S,
                  max_shift_s: float = 0.3) -> tuple[float, float]:
    """(lag in seconds, r at that lag): the shift that best aligns ``jaw`` with ``loud`` (both
    sampled every ``hop_s`` on the same clock). Positive lag: the jaw moves after the sound."""
    jaw, loud = np.asarray(jaw, np.float64), np.asarray(loud, np.float64)
    n = min(len(jaw), len(loud))
    jaw, loud = jaw[:n], loud[:n]
    k_max = min(int(round(max_shift_s / hop_s)), n // 2)
    shifts = np.arange(-k_max, k_max + 1)
    rs = np.array([_corr(jaw[k:], loud[:n - k]) if k >= 0 else _corr(jaw[:n + k], loud[-k:]) for k in shifts])
    if not np.any(np.isfinite(rs)):
        return 0.0, 0.0
    rs = np.where(np.isfinite(rs), rs, -1.0)
    i = int(np.argmax(rs))
    lag = float(shifts[i])
    if 0 < i < len(rs) - 1:  # parabola through the peak and its neighbours
        a, b, c = rs[i - 1], rs[i], rs[i + 1]
        den = a - 2 * b + c
        if den < 0:
            lag += 0.5 * (a - c) / den
    return lag * hop_s, float(rs[i])


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


@dataclass
class CommandStats:
    per_second: float
    """jaw commands sent per second of speech"""
    largest_step: float
    """largest change between two consecutive commands, fraction of the travel"""
    outside_s: float
    """seconds any pulse was outside the calibrated closed..open range (must be 0)"""
    count: int


def command_stats(log, calibration, duration_s: float) -> CommandStats:
    """From a jaw's log of (time, opening, pulse us or None when detached)."""
    lo, hi = sorted((calibration.closed_us, calibration.open_us))
    log = list(log)
    moves = [(t, o, us) for t, o, us in log if us is not None]
    steps = [abs(b[1] - a[1]) for a, b in zip(moves, moves[1:])]
    outside = 0.0
    for (t, _, us), nxt in zip(log, list(log[1:]) + [None]):
        if us is not None and not lo - 1e-6 <= us <= hi + 1e-6:
            outside += ((nxt[0] if nxt else t + 0.02) - t)
    return CommandStats(per_second=len(moves) / duration_s if duration_s > 0 else 0.0,
                        largest_step=max(steps, default=moves[0][1] if moves else 0.0),
                        outside_s=outside, count=len(moves))
