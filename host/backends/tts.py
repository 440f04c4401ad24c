"""Text to speech. Embedded default: espeak-ng (a Debian package), run as a subprocess."""
from __future__ import annotations

import shutil
import subprocess

from skull.audio.wav import read_wav, to_mono
from skull.errors import BackendError

from . import Speech


class EspeakTTS:
    """espeak-ng's robotic voice suits a skull. ``voice`` e.g. 'en-us+m3', ``speed`` words/min."""

    name = "espeak-ng"

    def __init__(self, voice: str = "en-us+m3", speed: int = 155, pitch: int = 35, timeout_s: float = 20.0):
        self.binary = shutil.which("espeak-ng") or shutil.which("espeak")
        if self.binary is None:
            raise BackendError("tts", "espeak-ng is not installed; install it with 'sudo apt-get install espeak-ng' "
                                      "(make demo and make test do this for you)")
        self.voice, self.speed, self.pitch, self.timeout_s = voice, speed, pitch, timeout_s

    def synthesize(self, text: str) -> Speech:
        cmd = [self.binary, "--stdout", "-v", self.voice, "-s", str(self.speed), "-p", str(self.pitch), text]
        try:
            out = subprocess.run(cmd, capture_output=True, timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise BackendError("tts", f"espeak-ng took longer than {self.timeout_s} s") from None
        if out.returncode != 0 or not out.stdout:
            raise BackendError("tts", f"espeak-ng failed (exit {out.returncode}): "
                                      f"{out.stderr.decode(errors='replace').strip()[:200]}")
        audio = read_wav(out.stdout, name="espeak-ng output")  # its header has placeholder sizes
        return Speech(to_mono(audio), audio.rate)
