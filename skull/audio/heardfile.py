"""``heard.wav`` + ``heard.json`` in a recorded turn folder: what the speaker really played.

A turn recorded on a sound server (PulseAudio, PipeWire's pulse layer) can keep the monitor of
the output (:class:`skull.audio.monitor.Heard`) beside its ``commands.csv``; ``skull replay``
then scores the jaw as it ran live against the sound as it was heard, not as it was scheduled.

* ``heard.wav``: the monitor recording, mono 16-bit PCM at ``rate``.
* ``heard.json``::

      {"t0_ms_after_release": 812.4, "rate": 48000, "source": "alsa_output.usb-....monitor"}

  ``t0_ms_after_release``: when heard.wav's first sample was played, in milliseconds after the
  button release (the clock of commands.csv's ``sent_ms``; negative when the recording started
  before the release). ``rate``: heard.wav's sample rate, Hertz. ``source``: the monitor
  source it was recorded from.

Write it with :func:`write_heard`; read it with :func:`read_heard`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import AudioFormatError, SkullError
from ..core.wav import read_wav, to_mono, write_wav

WAV, META = "heard.wav", "heard.json"


@dataclass
class HeardTurn:
    """What the speaker played during a turn, on the clock of commands.csv's ``sent_ms``."""
    samples: np.ndarray
    """mono float -1..1"""
    rate: int
    """Hertz"""
    t0_s: float
    """seconds after the button release of samples[0]"""
    source: str
    """the monitor source it was recorded from"""


def write_heard(folder: str | Path, heard, released_at: float) -> None:
    """Write ``heard`` (a :class:`skull.audio.monitor.Heard`) into ``folder``, placed against
    ``released_at`` (time.monotonic() of the button release)."""
    folder = Path(folder)
    write_wav(folder / WAV, np.asarray(heard.samples, np.float32), int(heard.rate))
    meta = {"t0_ms_after_release": round((heard.t0 - released_at) * 1000.0, 3), "rate": int(heard.rate),
            "source": heard.source}
    (folder / META).write_text(json.dumps(meta, indent=2) + "\n")


def read_heard(folder: str | Path) -> HeardTurn | None:
    """The turn's heard.wav placed by heard.json; None when the turn has neither file.
    Raises SkullError naming the file when one is missing or malformed."""
    folder = Path(folder)
    wav, meta_path = folder / WAV, folder / META
    if not wav.is_file() and not meta_path.is_file():
        return None
    if not wav.is_file() or not meta_path.is_file():
        missing = wav if not wav.is_file() else meta_path
        raise SkullError(f"{missing} is missing: heard.wav and heard.json only make sense together")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise SkullError(f"{meta_path} is not readable JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise SkullError(f"{meta_path} must hold an object with t0_ms_after_release, rate and source")
    t0, rate, source = meta.get("t0_ms_after_release"), meta.get("rate"), meta.get("source", "")
    if isinstance(t0, bool) or not isinstance(t0, (int, float)) or not math.isfinite(t0):
        raise SkullError(f"{meta_path}: t0_ms_after_release = {t0!r} must be a number of milliseconds after "
                         f"the button release")
    if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
        raise SkullError(f"{meta_path}: rate = {rate!r} must be heard.wav's sample rate in Hertz")
    try:
        audio = read_wav(wav)
    except AudioFormatError as exc:
        raise SkullError(str(exc)) from None
    if audio.rate != rate:
        raise SkullError(f"{meta_path}: rate = {rate} but {wav} is at {audio.rate} Hz; they must agree")
    return HeardTurn(to_mono(audio), rate, t0 / 1000.0, str(source))
