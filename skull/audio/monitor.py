"""What the speaker really played: a recording of the sound server's monitor of the output.

PulseAudio (and PipeWire's pulse layer) gives every output a ``<sink>.monitor`` source that
carries exactly what the sink rendered, when it rendered it. :class:`SinkMonitor` records it
with ``parec`` and places every sample on this machine's ``time.monotonic()`` clock, so a
reply's first audible sample, a freeze in the middle of it, and the jaw commands sent by the
skull can be compared on one time axis (``skull replay``, ``skull doctor``,
``bench/device_sync.py``).

Placing samples in time: ``parec`` hands over the monitor in small fragments (5 ms asked). A
fragment ending at sample ``e`` arrives at ``a`` no earlier than that sample was rendered, so
``t0 = min(a - e / rate)`` over all fragments is the time of sample 0, accurate to the
shortest delivery delay seen (about a millisecond when the machine is quiet).
"""
from __future__ import annotations

import collections
import logging
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass

import numpy as np

from ..core.errors import DeviceError

log = logging.getLogger("skull.monitor")


def _pactl(*args: str, timeout: float = 3.0) -> str | None:
    if shutil.which("pactl") is None:
        return None
    try:
        out = subprocess.run(["pactl", *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def sound_server() -> str | None:
    """The name and version of the running PulseAudio-compatible sound server, or None."""
    info = _pactl("info")
    if not info:
        return None
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    name = fields.get("Server Name", "").strip()
    version = fields.get("Server Version", "").strip()
    return f"{name} {version}".strip() or "a pulse server"


def default_monitor() -> str | None:
    """The monitor source of the default output (``<sink>.monitor``), or None without a server."""
    sink = _pactl("get-default-sink")
    return f"{sink}.monitor" if sink else None


def monitor_of_process(pid: int) -> str | None:
    """The monitor of the sink that plays process ``pid``'s output stream (the speaker may be
    routed to a sink that is not the default, e.g. by PULSE_SINK); None when the server cannot
    tell (no such stream, or a pactl older than 15 without JSON output)."""
    import json
    listed = _pactl("-f", "json", "list", "sink-inputs")
    sinks = _pactl("-f", "json", "list", "sinks", "short")
    try:
        names = {s["index"]: s["name"] for s in json.loads(sinks or "[]")}
        for stream in json.loads(listed or "[]"):
            if str(stream.get("properties", {}).get("application.process.id")) == str(pid):
                sink = names.get(stream.get("sink"))
                if sink:
                    return f"{sink}.monitor"
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return None


@dataclass
class Heard:
    """A monitor recording: mono float samples and the monotonic time of sample 0."""
    samples: np.ndarray
    rate: int
    t0: float
    source: str = ""

    @property
    def end(self) -> float:
        return self.t0 + len(self.samples) / self.rate

    def index(self, t: float) -> int:
        return int(round((t - self.t0) * self.rate))

    def between(self, a: float, b: float) -> np.ndarray:
        """The samples heard from monotonic time ``a`` to ``b`` (zeros where nothing was recorded)."""
        n = max(0, int(round((b - a) * self.rate)))
        out = np.zeros(n, np.float32)
        i = self.index(a)
        lo, hi = max(0, i), min(len(self.samples), i + n)
        if lo < hi:
            out[lo - i:hi - i] = self.samples[lo:hi]
        return out

    def first_sound(self, after: float, threshold_dbfs: float = -45.0, until: float | None = None) -> float | None:
        """Monotonic time of the first sample louder than ``threshold_dbfs`` after ``after``."""
        i0 = max(0, self.index(after))
        i1 = len(self.samples) if until is None else max(i0, min(len(self.samples), self.index(until)))
        thr = 10 ** (threshold_dbfs / 20.0)
        idx = np.flatnonzero(np.abs(self.samples[i0:i1]) > thr)
        return self.t0 + (i0 + int(idx[0])) / self.rate if len(idx) else None


class SinkMonitor:
    """Records a monitor source with ``parec`` while started. ``stop()`` returns :class:`Heard`."""

    def __init__(self, source: str | None = None, rate: int = 48000, fragment_ms: float = 5.0,
                 keep_s: float | None = None):
        """``keep_s``: keep only the last this many seconds (a recording that runs for hours);
        None keeps everything until ``stop()``."""
        if shutil.which("parec") is None:
            raise DeviceError("parec is not installed (Debian package pulseaudio-utils); it records what the "
                              "speaker played")
        self.source = source or default_monitor()
        if not self.source:
            raise DeviceError("no sound server answers (pactl get-default-sink failed): the played sound can only "
                              "be recorded from a PulseAudio or PipeWire server's monitor")
        self.rate, self.keep_s = rate, keep_s
        self.fragment = max(1, int(rate * fragment_ms / 1000))
        self._proc = None
        self._chunks: collections.deque[tuple[float, int, bytes]] = collections.deque()  # (arrival, end, data)
        self._t0 = float("inf")  # the earliest (arrival - end / rate) seen: the time of sample 0
        self._samples = 0
        self._thread = None

    def start(self) -> "SinkMonitor":
        self._chunks.clear()
        self._t0, self._samples = float("inf"), 0
        try:
            self._proc = subprocess.Popen(
                ["parec", "-d", self.source, "--raw", "--format=s16le", f"--rate={self.rate}", "--channels=1",
                 f"--latency-msec={max(1, round(self.fragment * 1000 / self.rate))}"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            raise DeviceError(f"cannot record the monitor {self.source!r}: {exc}") from None
        self._thread = threading.Thread(target=self._read, name="monitor", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        size = self.fragment * 2
        stream = self._proc.stdout
        while True:
            try:
                b = stream.read(size)
            except (OSError, ValueError):  # the pipe was closed under us: the recording is over
                break
            if not b:
                break
            now = time.monotonic()
            self._samples += len(b) // 2
            self._t0 = min(self._t0, now - self._samples / self.rate)
            self._chunks.append((now, self._samples, b))
            if self.keep_s is not None:
                while self._chunks and now - self._chunks[0][0] > self.keep_s:
                    self._chunks.popleft()

    def wait_started(self, timeout_s: float = 5.0) -> bool:
        """True once the first fragment arrived (parec takes a moment to connect)."""
        deadline = time.monotonic() + timeout_s
        while not self._chunks and time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                return False
            time.sleep(0.01)
        return bool(self._chunks)

    def snapshot(self) -> Heard:
        """What was recorded so far (the last ``keep_s`` seconds), while recording goes on."""
        chunks = list(self._chunks)
        if not chunks:
            raise DeviceError(f"the monitor {self.source!r} gave no sound yet")
        first = chunks[0][1] - len(chunks[0][2]) // 2
        raw = b"".join(c for _, _, c in chunks)
        samples = np.frombuffer(raw[:len(raw) // 2 * 2], np.int16).astype(np.float32) / 32768.0
        return Heard(samples, self.rate, self._t0 + first / self.rate, self.source)

    def stop(self) -> Heard:
        proc, self._proc = self._proc, None
        err = b""
        if proc is not None:
            proc.terminate()
            # the reader thread owns stdout and reads it to the end once parec exits; reading it
            # here too (communicate) would close the pipe under the thread
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if self._thread is not None:
                self._thread.join(timeout=3)
            err = proc.stderr.read() if proc.stderr is not None else b""
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        elif self._thread is not None:
            self._thread.join(timeout=3)
        if not self._chunks:
            raise DeviceError(f"the monitor {self.source!r} gave no sound"
                              + (f": {err.decode(errors='replace').strip()}" if err else ""))
        return self.snapshot()

    def __enter__(self) -> "SinkMonitor":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None
