"""Microphones: a sound device, or a WAV file played as if spoken into one.

Both deliver signed 16-bit mono chunks at ``rate`` Hz to ``on_chunk`` from a worker thread.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Callable

import numpy as np

from ..core.errors import DeviceError
from ..ports import Device
from ..core.wav import read_wav, to_mono_rate, to_pcm16

log = logging.getLogger("skull.mic")
Chunk = Callable[[bytes], None]


class FileMic(Device):
    """Plays a recording into the skull as its microphone, paced in real time (``speed`` > 1 is
    faster). Each ``start()`` plays it from its beginning; :meth:`say` plays it (or another one)
    again without stopping the stream, as a visitor speaks to a skull whose mic stays open (a
    hands-free trigger). ``on_finished`` runs when the recording has been delivered (e.g. to
    release the button); after that the mic delivers silence until stopped.

    ``room``: what else reaches this mic, a function given a chunk's length in samples that
    returns that many float samples at ``rate`` (a simulated room: noise, or the skull's own
    speaker); mixed into every chunk."""

    def __init__(self, path, rate: int = 16000, chunk_ms: int = 100, speed: float = 1.0):
        self.rate, self.chunk_ms, self.speed = rate, chunk_ms, speed
        self.pcm = to_pcm16(to_mono_rate(read_wav(path), rate))
        self.on_finished: Callable[[], None] | None = None
        self.on_error: Callable[[BaseException], None] | None = None
        self.room: Callable[[int], np.ndarray] | None = None
        self._pending: bytes | None = None  # what say() asked for, taken at the next chunk
        self._stop = threading.Event()
        self._thread = None

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / self.rate

    def say(self, recording=None) -> None:
        """From the next chunk on, play ``recording`` from its start: a WAV file's path, or float
        samples at ``rate``; default: this mic's own recording. Any thread."""
        if recording is None:
            pcm = self.pcm
        elif isinstance(recording, np.ndarray):
            pcm = to_pcm16(recording)
        else:
            pcm = to_pcm16(to_mono_rate(read_wav(recording), self.rate))
        self._pending = pcm

    def start(self, on_chunk: Chunk) -> None:
        self.stop()
        self._stop.clear()
        if self._pending is None:
            self._pending = self.pcm
        self._thread = threading.Thread(target=self._run, args=(on_chunk,), name="file-mic", daemon=True)
        self._thread.start()

    def _run(self, on_chunk: Chunk) -> None:
        try:
            self._play(on_chunk)
        except Exception as exc:  # reported to the agent, not lost on a dead thread
            if self.on_error is None:
                raise
            self.on_error(exc)

    def _play(self, on_chunk: Chunk) -> None:
        n = int(self.rate * self.chunk_ms / 1000)
        step = n * 2
        t0, sent, pcm, pos, finished = time.monotonic(), 0, b"", 0, True
        while not self._stop.is_set():
            if self._pending is not None:
                pcm, self._pending, pos, finished = self._pending, None, 0, False
            chunk = pcm[pos:pos + step]
            if len(chunk) < step:
                chunk = chunk + bytes(step - len(chunk))
            if self.room is not None:
                chunk = to_pcm16(np.frombuffer(chunk, "<i2").astype(np.float32) / 32768.0 + self.room(n))
            on_chunk(chunk)
            pos += step
            sent += n
            if pos >= len(pcm) and not finished:
                finished = True
                if self.on_finished is not None:
                    self.on_finished()
            due = t0 + sent / self.rate / self.speed
            self._stop.wait(max(0.0, due - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        self._thread = None

    def close(self) -> None:
        self.stop()


class SoundDeviceMic(Device):
    """A real microphone through PortAudio, opened only while recording. The device's native
    rate is used and resampled to ``rate`` when it cannot record at ``rate`` directly."""

    def __init__(self, device=None, rate: int = 16000, chunk_ms: int = 100):
        import sounddevice as sd
        self.sd, self.device, self.rate, self.chunk_ms = sd, device, rate, chunk_ms
        try:
            info = sd.query_devices(device, kind="input")
        except Exception as exc:
            raise DeviceError(f"no microphone {'named ' + repr(device) + ' ' if device is not None else ''}found ({exc}); "
                              f"plug one in, pick one from '{sys.executable} -m sounddevice' in skull.toml [audio] "
                              f"input_device, or use --mic-file FILE.wav") from None
        self.name = info["name"]
        self.native_rate = int(info["default_samplerate"])
        self.on_error: Callable[[BaseException], None] | None = None
        self._stream = None

    def start(self, on_chunk: Chunk) -> None:
        self.stop()
        sd = self.sd
        try:
            sd.check_input_settings(self.device, channels=1, dtype="int16", samplerate=self.rate)
            rate = self.rate
        except Exception:
            rate = self.native_rate
        block = int(rate * self.chunk_ms / 1000)

        def callback(indata, frames, t, status):
            if status:
                log.warning("microphone %s: %s", self.name, status)
            try:
                x = np.frombuffer(bytes(indata), "<i2").astype(np.float32) / 32768.0
                if rate != self.rate:
                    import soxr
                    x = soxr.resample(x, rate, self.rate)
                on_chunk(to_pcm16(x))
            except Exception as exc:  # reported to the agent; the stream ends for this turn
                if self.on_error is not None:
                    self.on_error(exc)
                raise sd.CallbackAbort from exc

        try:
            self._stream = sd.RawInputStream(device=self.device, samplerate=rate, channels=1, dtype="int16",
                                             blocksize=block, callback=callback)
            self._stream.start()
        except Exception as exc:
            self._stream = None
            raise DeviceError(f"microphone {self.name!r} cannot record: {exc}; is another program using it?") from exc

    def stop(self) -> None:
        if self._stream is not None:
            try:
                self._stream.stop()
                self._stream.close()
            finally:
                self._stream = None

    def close(self) -> None:
        self.stop()
