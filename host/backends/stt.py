"""Speech to text. Embedded default: pocketsphinx with the English model its wheel ships."""
from __future__ import annotations

import logging
import threading

import numpy as np

from skull.audio.wav import resample, to_pcm16
from skull.errors import BackendError

log = logging.getLogger("host.stt")


class PocketsphinxSTT:
    """Offline recognition, no downloads. Modest accuracy; a real server does better."""

    name = "pocketsphinx"
    rate = 16000

    def __init__(self):
        try:
            from pocketsphinx import Decoder
        except ImportError as exc:  # pragma: no cover - it is a dependency
            raise BackendError("stt", f"pocketsphinx is not installed ({exc}); run 'make bootstrap'") from None
        self._decoder = Decoder(samprate=self.rate, loglevel="FATAL")
        self._lock = threading.Lock()  # one decoder, not thread-safe

    def transcribe(self, samples: np.ndarray, rate: int) -> str:
        pcm = to_pcm16(resample(samples, rate, self.rate))
        with self._lock:
            d = self._decoder
            d.start_utt()
            d.process_raw(pcm, full_utt=True)
            d.end_utt()
            hyp = d.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""
