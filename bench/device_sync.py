"""What the speaker really played: first audio, jaw sync, underruns and freezes, measured from
a sound server's monitor, side by side with the simulated speaker.

    python bench/device_sync.py                        # a private PulseAudio server, null sink
    python bench/device_sync.py --turns 2 --json out.json
    python bench/device_sync.py --hog 2                # two busy processes for the whole run
    python bench/device_sync.py --server pipewire      # a private PipeWire (+ pipewire-pulse)
    python bench/device_sync.py --no-private-server    # the running server's default sink
    python bench/device_sync.py --keep out/            # also write what the device played

What runs:

* a private PulseAudio daemon (bench/soundserver.py; or PipeWire with its PulseAudio layer,
  ``--server pipewire``) whose default output is a null sink: a real-time clocked device. Its monitor, recorded with parec (skull.audio.monitor.SinkMonitor)
  on time.monotonic(), is what the device played and when;
* the host in its own process (host.process.HostProcess) with the embedded backends;
* a load skull in a subprocess (this script with ``--load-skull URL``) asking the bundled
  question back to back (pressing again as soon as the host has heard it), so the host is
  recognising speech while the measured skulls speak;
* two measured skulls in this process: ``device`` plays through PortAudio on ALSA's pulse
  device (SoundDevicePlayer, the default output once the server's environment is set),
  ``sim`` on the simulated speaker (ClockPlayer). Each presses its button, speaks the bundled
  question, releases and waits for the whole answer. They take turns at the host: one asks
  while the other is still speaking, never both at once;
* ``--hog N``: N processes spinning a Python loop for the whole run.

Figures per turn ("heard" is the monitor for device; for sim, the reply placed where the
simulated speaker's clock says it was heard):

* first_audio: button release to the first reply sample louder than -45 dBFS heard.
  ``skull_ms``: what the skull itself believed (its turn timing ``first_audio``, the first
  segment's start, a little before its first loud sample). ``speaker_ms``: the speaker's own
  share, from the first segment being queued on the player to its first sample heard; the
  rest is the host's, which swings with its load;
* jaw_lag and jaw_r: every command the jaw got (its log, which also holds the agent's closes and
  detaches) through the servo model (skull.replay.physical: next 20 ms frame, the calibrated
  travel time) against the loudness of what was heard, on one monotonic time axis
  (skull.jaw.metrics.effective_lag; positive = the jaw is late);
* lead_first: first heard sample minus when the reply's first opening command was sent. The
  jaw is meant to be lead_ms early; more than lead_ms + one servo frame is a jaw moving before
  the sound;
* clock_ms: where the monitor found each segment's first sample minus where the skull's playback
  clock said it would be heard (Segment.heard_at); the largest of the turn. The jaw follows
  that clock;
* freeze and dropped: each segment is found in the monitor by cross-correlating its first and
  last 0.3 s of sound; its span, the gap from the segment before (against the silence the
  player's timeline itself had there) and its longest silence (< -60 dBFS) against its own
  give the time the device inserted (freeze) or lost (dropped);
* underruns: the player's count (its ``underruns``) when it keeps one; otherwise the underflows
  it logged plus the underruns alsa-lib printed (ALSA's pulse plugin recovers from those itself
  and PortAudio never tells the callback). Each of alsa-lib's is placed in a turn.

Prints a table per turn, the summary, and as its last line:

    device=<name> first_audio_ms=<x> sim_first_audio_ms=<y> jaw_lag_ms=<z> jaw_r=<r> underruns=<n> \
max_freeze_ms=<f> jaw_lead_first_ms=<l> lead_ms=<lead> speaker_ms=<s> sim_speaker_ms=<t> hog=<N>

first_audio_ms, sim_first_audio_ms (the sim skull's own timing) and the speaker shares are
medians; jaw lag and r are pooled over the device turns; jaw_lead_first_ms and max_freeze_ms are
the largest. lead_ms is the built-in calibration's. Without a sound server it says why and
prints ``device=none``. The exit status is 0 whatever the figures (it is a measurement),
nonzero only when the bench itself fails.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import re
import statistics
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.soundserver import SERVERS, SoundServerError  # noqa: E402
from host.config import HostConfig, ServerConfig  # noqa: E402
from host.process import HostProcess  # noqa: E402
from skull import events as ev  # noqa: E402
from skull.agent import Agent  # noqa: E402
from skull.audio.monitor import Heard, SinkMonitor, default_monitor, sound_server  # noqa: E402
from skull.audio.player import Timeline  # noqa: E402
from skull.config import SkullConfig  # noqa: E402
from skull.core.data import bundled  # noqa: E402
from skull.demo import press_and_speak  # noqa: E402
from skull.core.wav import resample, write_wav  # noqa: E402
from skull.jaw.metrics import HOP_S, effective_lag, loudness  # noqa: E402
from skull.machine import State  # noqa: E402
from skull.replay import physical  # noqa: E402
from skull.runtime import build_body  # noqa: E402
from skull.segment import SegmentTag  # noqa: E402

log = logging.getLogger("bench.device_sync")

SOUND_DBFS = -45.0
"""a reply sample louder than this is sound (the question is never played on the speaker)"""
SILENT_DBFS = -60.0
"""a 5 ms stretch quieter than this is silence (for freezes)"""
SERVO_FRAME_MS = 20.0
EXCERPT_S = 0.3
"""how much of a segment's first and last sound is looked for in the monitor"""
MIN_MATCH = 0.5
"""a segment's excerpt correlating less than this with the monitor is not found there"""
AFTER_S = 0.5
"""how long after a turn ends its sound may still be heard (the device's buffer)"""


# --- the skulls ---------------------------------------------------------------------------------

class KeptTimeline(Timeline):
    """A player's timeline that keeps every segment queued on it (the player itself forgets
    them after 10 s): when it was queued, the timeline frame it started at, and when the player
    said its first sample would be heard (``heard_at``, time.monotonic())."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kept = []
        self.queued_at: dict[int, float] = {}
        """id(segment) -> time.monotonic() when it was queued"""

    def add(self, *args, **kwargs):
        seg = super().add(*args, **kwargs)
        self.queued_at[id(seg)] = time.monotonic()
        self.kept.append(seg)
        return seg


_STATE = tempfile.TemporaryDirectory(prefix="bench-skull-state-")
"""where the bench's skull keeps its line sets: never the user's ~/.local/state (removed at exit)"""


def make_agent(url: str, token: str, name: str, *, audio: bool, mic_speed: float = 1.0) -> Agent:
    """A simulated skull (MockFactory button, LED and servo; the bundled question as its
    microphone). ``audio``: the default PortAudio speaker, else the simulated one."""
    cfg = SkullConfig()
    cfg = dataclasses.replace(cfg, link=dataclasses.replace(cfg.link, url=url, token=token, name=name,
                                                            reconnect_min_s=0.1, reconnect_max_s=1.0),
                              offline=dataclasses.replace(cfg.offline, cache_dir=f"{_STATE.name}/{name}/lines"))
    body = build_body(cfg, sim=True, mic_file=bundled("question.wav"), image=bundled("snapshot.jpg"), audio=audio,
                      mic_speed=mic_speed)
    body.player.timeline = KeptTimeline(int(body.player.rate))
    return Agent(cfg, body, reply_timeout_s=60.0)


async def until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s")
        await asyncio.sleep(0.01)


def host_done(agent: Agent, turn: int) -> bool:
    """The host has sent all of ``turn`` (its ``done`` came), or the turn is over."""
    rec = agent.records.get(turn)
    return rec is None or "total" in rec.timings_ms or bool(rec.outcome)


async def ask(agent: Agent, timeout_s: float, on_host_done=None):
    """One whole turn: (its record, time.monotonic() when it ended). ``on_host_done()`` is
    called once the host has sent the whole reply (the skull may still be speaking it)."""
    try:
        await until(lambda: agent.state is State.IDLE, timeout_s, f"{agent.config.link.name} idle")
        agent.turn_ended.clear()
        await press_and_speak(agent, timeout_s)
        turn = agent.machine.turn
        await until(lambda: host_done(agent, turn), timeout_s, f"{agent.config.link.name}'s reply")
    finally:
        if on_host_done is not None:
            on_host_done()
    await asyncio.wait_for(agent.turn_ended.wait(), timeout_s)
    return agent.finished[-1], time.monotonic()


# --- the load skull (a subprocess) ---------------------------------------------------------------

def run_load_skull(url: str, token: str, speed: float) -> int:
    """Ask the bundled question over and over; press again as soon as the host has heard it
    (cutting the answer short), so its speech recogniser is busy most of the time. Prints
    ``asked N`` after each question."""
    logging.basicConfig(level=logging.CRITICAL)

    async def main():
        agent = make_agent(url, token, "bench-load", audio=False, mic_speed=speed)
        heard = asyncio.Event()
        agent.events.subscribe(lambda e: heard.set(), ev.Heard)
        task = asyncio.create_task(agent.run())
        try:
            await until(lambda: agent.state is not State.OFFLINE, 60, "the load skull's connection")
            n = 0
            while not task.done():
                heard.clear()
                await press_and_speak(agent)
                try:
                    await asyncio.wait_for(heard.wait(), 30)
                except asyncio.TimeoutError:
                    pass
                n += 1
                print(f"asked {n}", flush=True)
                await until(lambda: agent.state is not State.OFFLINE, 60, "the load skull's connection")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return 0


class LoadSkull:
    """``--load-skull`` in a subprocess; counts the questions it asked."""

    def __init__(self, url: str, token: str, speed: float, workdir: Path):
        self.asked = 0
        self.err_path = workdir / "load-skull.log"
        self._err = open(self.err_path, "w")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--load-skull", url,
                                      "--token", token, "--load-speed", str(speed)],
                                     stdout=subprocess.PIPE, stderr=self._err, text=True, cwd=ROOT)
        self._reader = threading.Thread(target=self._read, name="load-skull", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("asked "):
                self.asked += 1

    def wait_first(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.asked == 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the load skull asked nothing (see {self.err_path}): {self.err_tail()}")
            time.sleep(0.05)

    def err_tail(self) -> str:
        self._err.flush()
        return " | ".join(self.err_path.read_text().strip().splitlines()[-5:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(2)
        self._reader.join(2)
        self._err.close()


def start_hogs(n: int) -> list[subprocess.Popen]:
    """``n`` processes spinning a pure-Python loop: a machine busy with something else."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop_procs(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(3)
        except subprocess.TimeoutExpired:
            p.kill()


# --- what was heard, and the figures ------------------------------------------------------------

def simulated_heard(segments, rate: int) -> Heard:
    """The simulated speaker's output as a recording: each segment at its ``heard_at``."""
    played = [s for s in segments if s.start >= 0 and len(s.samples)]
    if not played:
        return Heard(np.zeros(0, np.float32), rate, time.monotonic(), "simulated speaker")
    t0 = min(s.heard_at for s in played)
    end = max(s.heard_at + len(s.samples) / rate for s in played)
    y = np.zeros(int((end - t0) * rate) + 2, np.float32)
    for s in played:
        i = int(round((s.heard_at - t0) * rate))
        y[i:i + len(s.samples)] = s.samples[:len(y) - i]
    return Heard(y, rate, t0, "simulated speaker")


def _best_match(y: np.ndarray, template: np.ndarray) -> tuple[int, float]:
    """(index in ``y`` where ``template`` fits best, normalised correlation there)."""
    n, m = len(y), len(template)
    if m == 0 or n < m:
        return 0, 0.0
    size = 1 << int(np.ceil(np.log2(n + m)))
    corr = np.fft.irfft(np.fft.rfft(y, size) * np.conj(np.fft.rfft(template, size)), size)[:n - m + 1]
    i = int(np.argmax(corr))
    energy = float(np.sqrt(np.sum(y[i:i + m].astype(np.float64) ** 2) * np.sum(template.astype(np.float64) ** 2)))
    return i, float(corr[i]) / energy if energy > 0 else 0.0


def _longest_silence_s(x: np.ndarray, rate: int) -> float:
    n = max(1, int(rate * 0.005))
    k = len(x) // n
    if k == 0:
        return 0.0
    quiet = np.max(np.abs(x[:k * n].reshape(k, n)), axis=1) < 10 ** (SILENT_DBFS / 20)
    best = run = 0
    for q in quiet:
        run = run + 1 if q else 0
        best = max(best, run)
    return best * n / rate


@dataclass
class Placed:
    """A reply segment found in what was heard."""
    seq: int
    start: float
    """time.monotonic() of its first sample, as heard"""
    end: float
    """time.monotonic() just after its last sample, as heard"""
    match: float
    """normalised correlation of its first sound with the monitor (1 = identical)"""
    clock_ms: float
    """heard minus where the skull's playback clock said it would be heard"""
    inserted_ms: float
    """time the device added inside it (span) or before it (gap after the previous segment)"""
    removed_ms: float
    """time the device dropped inside it or before it (sound never played)"""


def place_segments(segments, player_rate: int, heard: Heard, a: float, b: float) -> tuple[list[Placed], int]:
    """Find each segment (in playing order) in ``heard`` between ``a`` and ``b``. Returns the
    segments found and how many were not (mangled past recognition, or never played)."""
    out: list[Placed] = []
    missing = 0
    thr = 10 ** (SOUND_DBFS / 20)
    k = int(EXCERPT_S * heard.rate)
    prev = None
    search = a
    for s in segments:
        x = resample(np.asarray(s.samples, np.float32), player_rate, heard.rate)
        voiced = np.flatnonzero(np.abs(x) > thr)
        if not len(voiced):
            continue
        i0, i1 = int(voiced[0]), int(voiced[-1]) + 1
        y = heard.between(search, b)
        h, match = _best_match(y, x[i0:i0 + k])
        if match < MIN_MATCH:
            missing += 1
            continue
        start = search + (h - i0) / heard.rate
        tail = x[max(i0, i1 - k):i1]
        t, tail_match = _best_match(y[h:], tail)  # the tail comes after the head
        if tail_match >= MIN_MATCH:
            end = search + (h + t + len(tail) + len(x) - i1) / heard.rate
        else:  # the span cannot be told: take it as played whole
            end = start + len(x) / heard.rate
        span_extra = (end - start) - len(x) / heard.rate
        own = _longest_silence_s(x[i0:i1], heard.rate)
        seen = _longest_silence_s(heard.between(start + i0 / heard.rate, end - (len(x) - i1) / heard.rate),
                                  heard.rate)
        inserted, removed = max(span_extra, seen - own), -span_extra
        if prev is not None:
            expected_gap = (s.start - prev[0].end) / player_rate  # silence the timeline itself had
            inserted = max(inserted, (start - prev[1].end) - expected_gap)
            removed = max(removed, expected_gap - (start - prev[1].end))
        placed = Placed(s.tag.seq, start, end, min(match, tail_match), (start - s.heard_at) * 1000.0,
                        inserted * 1000.0, removed * 1000.0)
        out.append(placed)
        prev = (s, placed)
        search = max(search, end - 0.05)
    return out, missing


@dataclass
class TurnFigures:
    speaker: str
    """device or sim"""
    turn: int
    outcome: str = ""
    first_audio_ms: float | None = None
    """release to the first reply sample heard"""
    skull_ms: float | None = None
    """release to the first reply sample, as the skull's own clock said"""
    speaker_ms: float | None = None
    """from the first segment queued on the player to its first sample heard: the speaker's own
    share of first_audio (the host's share varies with its load, the speaker's should not)"""
    jaw_lag_ms: float | None = None
    jaw_r: float | None = None
    lead_first_ms: float | None = None
    """first heard sample minus the send time of the reply's first opening command"""
    clock_ms: float | None = None
    """largest |heard - skull's clock| over the reply's segments (signed)"""
    freeze_ms: float | None = None
    """most time the device inserted into the reply"""
    dropped_ms: float | None = None
    """most time the device dropped from the reply"""
    segments: int = 0
    """reply segments found in what was heard"""
    missing: int = 0
    """reply segments played but not found in what was heard"""
    weakest_match: float | None = None
    note: str = ""
    timings_ms: dict = field(default_factory=dict)
    """the turn's own timings (the host's steps, the skull's first_audio)"""
    jaw: tuple = field(default=(), repr=False)
    """(physical jaw, loudness) over the reply, for the pooled figures"""


def turn_figures(speaker: str, rec, ended_at: float, heard: Heard, jaw_log, timeline: KeptTimeline,
                 player_rate: int, cal) -> TurnFigures:
    f = TurnFigures(speaker, rec.turn, rec.outcome, skull_ms=rec.timings_ms.get("first_audio"),
                    timings_ms=dict(rec.timings_ms))
    a, b = rec.released_at, ended_at + AFTER_S
    if a is None:
        f.note = "never released"
        return f
    first = heard.first_sound(a, SOUND_DBFS, until=b)
    if first is None:
        f.note = "nothing heard"
        return f
    f.first_audio_ms = (first - a) * 1000.0
    loud_idx = np.flatnonzero(np.abs(heard.between(first, b)) > 10 ** (SOUND_DBFS / 20))
    last = first + int(loud_idx[-1]) / heard.rate
    rows = [e for e in jaw_log if a <= e[0] <= b]
    opening = [e for e in rows if e[1] > 0 and e[2] is not None]
    if opening:
        f.lead_first_ms = (first - opening[0][0]) * 1000.0
    w0, w1 = first - 0.3, last + 0.3
    times = w0 + np.arange(int((w1 - w0) / HOP_S)) * HOP_S
    pos = physical(rows, times, cal, rows[0][0]) if rows else np.zeros(len(times))
    loud = loudness(heard.between(w0, w1), heard.rate)
    n = min(len(pos), len(loud))
    f.jaw = (pos[:n], loud[:n])
    lag, r = effective_lag(pos[:n], loud[:n])
    f.jaw_lag_ms, f.jaw_r = lag * 1000.0, r
    mine = sorted((s for s in timeline.kept if isinstance(s.tag, SegmentTag) and s.tag.turn == rec.turn
                   and s.start >= 0), key=lambda s: s.start)
    if mine:
        f.speaker_ms = (first - timeline.queued_at[id(mine[0])]) * 1000.0
    placed, f.missing = place_segments(mine, player_rate, heard, a, b)
    f.segments = len(placed)
    if f.missing:
        f.note = f"{f.missing} segment{'s' * (f.missing > 1)} not found in what was heard"
    if placed:
        f.clock_ms = max((p.clock_ms for p in placed), key=abs)
        f.freeze_ms = max(0.0, max(p.inserted_ms for p in placed))
        f.dropped_ms = max(0.0, max(p.removed_ms for p in placed))
        f.weakest_match = min(p.match for p in placed)
    return f


def pooled_sync(figs: list[TurnFigures]) -> tuple[float | None, float | None]:
    parts = [f.jaw for f in figs if f.jaw]
    if not parts:
        return None, None
    lag, r = effective_lag(np.concatenate([p for p, _ in parts]), np.concatenate([q for _, q in parts]))
    return lag * 1000.0, r


def median(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(statistics.median(xs)) if xs else None


def fmt(x, spec: str = ".0f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


# --- the run ------------------------------------------------------------------------------------

@dataclass
class Measured:
    device: list = field(default_factory=list)
    """(record, ended_at) per device turn"""
    sim: list = field(default_factory=list)
    device_jaw: list = field(default_factory=list)
    sim_jaw: list = field(default_factory=list)
    device_timeline: KeptTimeline | None = None
    sim_timeline: KeptTimeline | None = None
    device_rate: int = 0
    sim_rate: int = 0
    underruns: int | None = None
    underruns_from: str = ""
    alsa_underruns: list = field(default_factory=list)
    """time.monotonic() of each underrun alsa-lib reported on stderr while the skulls ran"""
    speaker: str = ""
    sink_latency_ms: tuple | None = None
    """(latency, configured latency) of the sink while the device skull played, as pactl says"""
    failures: list = field(default_factory=list)


class UnderflowCount(logging.Handler):
    """Counts the player's "speaker underrun" warnings (PortAudio's output underflow flag)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "underrun" in record.getMessage():
            self.count += 1


class AlsaMessages:
    """Counts alsa-lib's "underrun occurred" lines on this process's stderr and passes all of it
    on. ALSA's pulse plugin recovers from an underrun by itself (the message is all that shows):
    PortAudio does not tell the callback, so the player cannot count those."""

    NEEDLE = b"underrun occurred"

    def __init__(self):
        self.count = 0
        self.times: list[float] = []
        """time.monotonic() when each was read (within a few ms of when it happened)"""
        self._saved: int | None = None
        self._thread = None

    def start(self) -> "AlsaMessages":
        sys.stderr.flush()
        self._saved = os.dup(2)
        r, w = os.pipe()
        os.dup2(w, 2)
        os.close(w)
        self._thread = threading.Thread(target=self._pump, args=(r,), name="alsa-messages", daemon=True)
        self._thread.start()
        return self

    def _pump(self, r: int) -> None:
        pending = b""
        while True:
            data = os.read(r, 4096)
            if not data:
                break
            os.write(self._saved, data)
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                if self.NEEDLE in line:
                    self.count += 1
                    self.times.append(time.monotonic())
        self.count += self.NEEDLE in pending
        os.close(r)

    def stop(self) -> None:
        """Stderr back as it was (the pipe's last writer closes, so the reader ends)."""
        if self._saved is None:
            return
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        self._thread.join(2)
        os.close(self._saved)
        self._saved = None


class NoSpeaker(RuntimeError):
    """The sound server runs but PortAudio cannot play to it."""


async def measure(url: str, token: str, turns: int, timeout_s: float, on_turn) -> Measured:
    """``turns`` turns of the device skull and as many of the sim skull, alternating."""
    out = Measured()
    underflows = UnderflowCount()
    player_log = logging.getLogger("skull.player")
    player_log.addHandler(underflows)
    player_log.propagate = False  # counted here, not printed one by one
    alsa = AlsaMessages().start()
    try:
        return await _measure(out, underflows, alsa, url, token, turns, timeout_s, on_turn)
    finally:
        alsa.stop()
        out.alsa_underruns = list(alsa.times)
        player_log.removeHandler(underflows)
        player_log.propagate = True


async def _measure(out: Measured, underflows: UnderflowCount, alsa: AlsaMessages, url: str, token: str, turns: int,
                   timeout_s: float, on_turn) -> Measured:
    from skull.audio.player import SoundDevicePlayer
    device = make_agent(url, token, "bench-device", audio=True)
    if not isinstance(device.body.player, SoundDevicePlayer):
        device.close()
        raise NoSpeaker("PortAudio found no speaker on the sound server (is libasound2-plugins installed?)")
    sim = make_agent(url, token, "bench-sim", audio=False)
    out.speaker = device.body.player.name
    out.device_rate, out.sim_rate = int(device.body.player.rate), int(sim.body.player.rate)
    tasks = [asyncio.create_task(a.run(), name=a.config.link.name) for a in (device, sim)]
    try:
        for a in (device, sim):
            await until(lambda a=a: a.state is State.IDLE, 30, f"{a.config.link.name} connecting")
        # the two skulls take turns at the host: one asks while the other speaks its answer,
        # never both at once (each waits until the host has sent the other's whole reply)
        sent = {"device": 0, "sim": 0}

        async def turns_of(kind, agent, into, other, ahead):
            for k in range(turns):
                await until(lambda: sent[other] >= k + ahead, timeout_s * 3, f"the {other} skull's turn {k + ahead}")
                try:
                    rec, ended = await ask(agent, timeout_s, lambda: sent.__setitem__(kind, sent[kind] + 1))
                except (TimeoutError, asyncio.TimeoutError) as exc:
                    out.failures.append(f"{kind} turn {k + 1}: {exc or 'timed out'}")
                    continue
                into.append((rec, ended))
                on_turn(kind, rec)
                await asyncio.sleep(AFTER_S)  # the device's buffer plays out before the next press

        await asyncio.gather(turns_of("device", device, out.device, "sim", 0),
                             turns_of("sim", sim, out.sim, "device", 1))
        player = device.body.player
        await asyncio.sleep(0.1)  # alsa-lib's last lines through the pipe
        counted = getattr(player, "underruns", None)
        # ALSA's pulse plugin recovers from an underrun by itself, so PortAudio may not flag it:
        # the larger of the player's count and what PortAudio and alsa-lib reported
        out.underruns = max(counted or 0, underflows.count + alsa.count)
        out.underruns_from = ("the player's count" if counted is not None and counted >= underflows.count + alsa.count
                              else "the player's warnings and alsa-lib's messages")
        out.device_jaw, out.sim_jaw = list(device.body.jaw.log or []), list(sim.body.jaw.log or [])
        out.device_timeline, out.sim_timeline = device.body.player.timeline, sim.body.player.timeline
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return out


def when(t: float, turns, figs: list[TurnFigures]) -> str:
    """Where in the device skull's turns time ``t`` falls, in words."""
    for (rec, ended), f in zip(turns, figs):
        if rec.released_at is not None and rec.released_at - 4.0 <= t <= ended + AFTER_S:
            after = (t - rec.released_at) * 1000.0
            if f.first_audio_ms is not None and after >= f.first_audio_ms:
                return f"turn {rec.turn}, {after - f.first_audio_ms:.0f} ms into the reply"
            return f"turn {rec.turn}, {after:.0f} ms after the release, before the reply"
    return "between turns"


def report(args, device_name: str, measured: Measured, heard: Heard, load_asked: int) -> dict:
    cal = SkullConfig().calibration
    dev = [turn_figures("device", rec, ended, heard, measured.device_jaw, measured.device_timeline,
                        measured.device_rate, cal) for rec, ended in measured.device]
    sim_heard = simulated_heard(measured.sim_timeline.kept, measured.sim_rate)
    sim = [turn_figures("sim", rec, ended, sim_heard, measured.sim_jaw, measured.sim_timeline, measured.sim_rate,
                        cal) for rec, ended in measured.sim]
    print(f"{'turn':>4} {'speaker':<7} {'first_audio':>11} {'skull_ms':>8} {'speaker_ms':>10} {'jaw_lag':>7} "
          f"{'jaw_r':>6} {'lead_first':>10} {'clock_ms':>8} {'freeze':>6} {'dropped':>7} {'segs':>4}  outcome")
    for f in sorted(dev + sim, key=lambda f: (f.turn, f.speaker)):
        print(f"{f.turn:>4} {f.speaker:<7} {fmt(f.first_audio_ms):>11} {fmt(f.skull_ms):>8} {fmt(f.speaker_ms):>10} "
              f"{fmt(f.jaw_lag_ms, '+.0f'):>7} {fmt(f.jaw_r, '.3f'):>6} {fmt(f.lead_first_ms):>10} "
              f"{fmt(f.clock_ms, '+.0f'):>8} {fmt(f.freeze_ms):>6} {fmt(f.dropped_ms):>7} {f.segments:>4}  "
              f"{f.outcome} {f.note}".rstrip())
    lag, r = pooled_sync(dev)
    sim_lag, sim_r = pooled_sync(sim)
    first = median(f.first_audio_ms for f in dev)
    sim_first = median(rec.timings_ms.get("first_audio") for rec, _ in measured.sim)
    freezes = [f.freeze_ms for f in dev if f.freeze_ms is not None]
    drops = [f.dropped_ms for f in dev if f.dropped_ms is not None]
    leads = [f.lead_first_ms for f in dev if f.lead_first_ms is not None]
    clocks = [f.clock_ms for f in dev if f.clock_ms is not None]
    underruns_at = [when(t, measured.device, dev) for t in measured.alsa_underruns]
    figures = {
        "device": device_name, "speaker": measured.speaker, "turns": len(dev), "sim_turns": len(sim),
        "first_audio_ms": first, "sim_first_audio_ms": sim_first,
        "sim_heard_first_audio_ms": median(f.first_audio_ms for f in sim),
        "skull_first_audio_ms": median(f.skull_ms for f in dev),
        "speaker_ms": median(f.speaker_ms for f in dev), "sim_speaker_ms": median(f.speaker_ms for f in sim),
        "jaw_lag_ms": lag, "jaw_r": r, "jaw_lag_median_ms": median(f.jaw_lag_ms for f in dev),
        "jaw_r_median": median(f.jaw_r for f in dev), "sim_jaw_lag_ms": sim_lag, "sim_jaw_r": sim_r,
        "underruns": measured.underruns, "underruns_from": measured.underruns_from,
        "alsa_underruns": len(measured.alsa_underruns), "alsa_underruns_at": underruns_at,
        "max_freeze_ms": max(freezes) if freezes else None, "max_dropped_ms": max(drops) if drops else None,
        "jaw_lead_first_ms": max(leads) if leads else None,
        "sim_jaw_lead_first_ms": max((f.lead_first_ms for f in sim if f.lead_first_ms is not None), default=None),
        "clock_ms": max(clocks, key=abs) if clocks else None,
        "lead_ms": cal.lead_ms, "travel_ms": cal.travel_ms, "servo_frame_ms": SERVO_FRAME_MS,
        "hog": args.hog, "load_questions": load_asked, "failures": measured.failures,
        "sink_latency_ms": measured.sink_latency_ms,
        "per_turn": [{k: v for k, v in dataclasses.asdict(f).items() if k != "jaw"} for f in dev + sim],
    }
    print()
    print(f"first audio: device {fmt(first)} ms (median of {len(dev)}; the skull believed "
          f"{fmt(figures['skull_first_audio_ms'])} ms), simulated speaker {fmt(sim_first)} ms; of that, queued to "
          f"heard: device {fmt(figures['speaker_ms'])} ms, simulated {fmt(figures['sim_speaker_ms'])} ms")
    print(f"jaw, pooled: device lag {fmt(lag, '+.0f')} ms r {fmt(r, '.3f')}; simulated lag {fmt(sim_lag, '+.0f')} ms "
          f"r {fmt(sim_r, '.3f')} (positive = jaw late; |lag| under 45 ms is not noticed)")
    print(f"first opening command sent up to {fmt(figures['jaw_lead_first_ms'])} ms before the first sound "
          f"(lead_ms {cal.lead_ms:.0f} + servo frame {SERVO_FRAME_MS:.0f} = {cal.lead_ms + SERVO_FRAME_MS:.0f} allowed); "
          f"the skull's playback clock off by up to {fmt(figures['clock_ms'], '+.0f')} ms")
    latency = figures["sink_latency_ms"]
    print(f"underruns {measured.underruns} (from {measured.underruns_from})"
          + (f"; sink latency {latency[0]:.1f} ms (configured {latency[1]:.1f})" if latency else ""))
    for where in underruns_at:
        print(f"  alsa-lib reported an underrun: {where}")
    print(f"longest freeze {fmt(figures['max_freeze_ms'])} ms, most dropped {fmt(figures['max_dropped_ms'])} ms; "
          f"the load skull asked {load_asked} questions; {args.hog} hog processes")
    for failure in measured.failures:
        print(f"failed: {failure}")
    print(f"device={device_name} first_audio_ms={fmt(first)} sim_first_audio_ms={fmt(sim_first)} "
          f"jaw_lag_ms={fmt(lag, '.1f')} jaw_r={fmt(r, '.3f')} underruns={fmt(measured.underruns, 'd', 'na')} "
          f"max_freeze_ms={fmt(figures['max_freeze_ms'])} jaw_lead_first_ms={fmt(figures['jaw_lead_first_ms'])} "
          f"lead_ms={cal.lead_ms:.0f} speaker_ms={fmt(figures['speaker_ms'])} "
          f"sim_speaker_ms={fmt(figures['sim_speaker_ms'])} hog={args.hog}", flush=True)
    return figures


def keep(folder: Path, heard: Heard, measured: Measured) -> None:
    """The monitor recording (monitor.wav) and where each device turn is in it (turns.json),
    to listen to what the device played."""
    folder.mkdir(parents=True, exist_ok=True)
    write_wav(folder / "monitor.wav", heard.samples, heard.rate)
    turns = [{"turn": rec.turn, "released_s": rec.released_at - heard.t0, "ended_s": ended - heard.t0,
              "segments": [{"seq": s.tag.seq, "skull_heard_at_s": s.heard_at - heard.t0, "seconds": len(s.samples) /
                            measured.device_rate} for s in measured.device_timeline.kept
                           if isinstance(s.tag, SegmentTag) and s.tag.turn == rec.turn and s.start >= 0]}
             for rec, ended in measured.device]
    (folder / "turns.json").write_text(json.dumps({"source": heard.source, "rate": heard.rate, "turns": turns},
                                                  indent=2))
    print(f"what the device played: {folder / 'monitor.wav'} (turns in {folder / 'turns.json'})")


def no_device(args, why: str, stage: str) -> int:
    print(f"no sound device to measure: {why}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": None, "why": why, "stage": stage}, indent=2))
    print(f"device=none first_audio_ms=- sim_first_audio_ms=- jaw_lag_ms=- jaw_r=- underruns=na hog={args.hog}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--turns", type=int, default=6, help="turns per speaker (default 6)")
    ap.add_argument("--hog", type=int, default=0, metavar="N", help="busy processes for the whole run (default 0)")
    ap.add_argument("--json", metavar="PATH", help="write the figures here")
    ap.add_argument("--keep", metavar="DIR", help="write what the device played (monitor.wav) and where the "
                    "turns are in it (turns.json) here")
    ap.add_argument("--server", choices=sorted(SERVERS), default="pulseaudio",
                    help="the private sound server to start (default pulseaudio)")
    ap.add_argument("--no-private-server", action="store_true",
                    help="play to the running sound server's default sink instead of a private PulseAudio")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds one turn may take (default 60)")
    ap.add_argument("--load-speed", type=float, default=2.0,
                    help="the load skull speaks its question this many times faster than real time (default 2)")
    ap.add_argument("--load-skull", metavar="URL", help=argparse.SUPPRESS)
    ap.add_argument("--token", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # unwinds: the hogs stop
    if args.load_skull:
        return run_load_skull(args.load_skull, args.token, args.load_speed)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("skull").setLevel(logging.CRITICAL)  # a failed stage is the bench's figure, not a log line

    hogs = start_hogs(args.hog)
    server = None
    try:
        if args.no_private_server:
            if sound_server() is None or default_monitor() is None:
                return no_device(args, "no running sound server answers (pactl info failed)", "server")
        else:
            try:
                server = SERVERS[args.server]().start()
            except SoundServerError as exc:
                return no_device(args, str(exc), "server")
            server.export()  # before sounddevice is first imported: PortAudio reads ALSA's config once
        name = sound_server() or "pulse"
        sink = (default_monitor() or "default.monitor").removesuffix(".monitor")
        short = server.version if server is not None else name
        device_name = f"{sink}@{re.sub(r'[^A-Za-z0-9._-]+', '-', short).strip('-')}"
        print(f"sound server: {name}, sink {sink}" + (f" ({server.server})" if server else " (the running one)"),
              flush=True)
        return run(args, device_name, server)
    finally:
        if server is not None:
            server.stop()
        stop_procs(hogs)


def run(args, device_name: str, server) -> int:
    monitor = SinkMonitor().start()
    try:
        if not monitor.wait_started():
            raise SoundServerError(f"the monitor {monitor.source} gave no sound")
        with tempfile.TemporaryDirectory() as tmp, HostProcess(HostConfig(server=ServerConfig(port=0))) as host:
            token = host.config.server.token
            load = LoadSkull(host.url, token, args.load_speed, Path(tmp))
            try:
                load.wait_first(90)
                asked_before, t0, latencies = load.asked, time.monotonic(), []

                def progress(kind, rec):
                    if kind == "device" and server is not None:
                        latencies.append(server.sink_latency())
                    print(f"  {kind} turn {rec.turn} {rec.outcome} ({time.monotonic() - t0:.0f} s)", flush=True)

                measured = asyncio.run(measure(host.url, token, args.turns, args.timeout, progress))
                load_asked = load.asked - asked_before
            finally:
                load.stop()
    except NoSpeaker as exc:
        monitor.stop()
        return no_device(args, str(exc), "speaker")
    except BaseException:
        try:
            monitor.stop()
        except Exception as exc:  # the bench's own failure is the one to show
            log.debug("stopping the monitor: %s", exc)
        raise
    heard = monitor.stop()
    measured.sink_latency_ms = max((x for x in latencies if x and x[1] > 0), default=None)  # PipeWire says 0
    print(f"{len(measured.device)} device and {len(measured.sim)} sim turns in {time.monotonic() - t0:.0f} s "
          f"({measured.speaker}, {measured.device_rate} Hz; monitor {heard.source} at {heard.rate} Hz)\n", flush=True)
    figures = report(args, device_name, measured, heard, load_asked)
    if args.keep:
        keep(Path(args.keep), heard, measured)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
