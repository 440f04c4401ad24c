"""The jaw: drivers that move the servo, and the sync loop that follows the audio clock.

Every driver turns an opening into a pulse the same way, here: anything that is not a finite
number closes the jaw, openings are clamped to 0..1, and pulses to the calibrated range.
"""
from __future__ import annotations

import math


def safe_opening(opening) -> float:
    """0 (closed) .. 1 (open): NaN and non-numbers close the jaw, +inf opens it fully."""
    if not isinstance(opening, (int, float)) or math.isnan(opening):
        return 0.0
    return min(1.0, max(0.0, float(opening)))


def pulse_us(calibration, opening: float) -> float:
    """The pulse width for ``opening``, never outside closed_us..open_us."""
    c = calibration
    lo, hi = sorted((c.closed_us, c.open_us))
    return min(hi, max(lo, c.closed_us + (c.open_us - c.closed_us) * opening))
