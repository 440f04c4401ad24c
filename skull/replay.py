"""`skull replay SESSION_DIR`: play recorded replies through a real or simulated jaw and measure
how well the jaw keeps time with the sound.

A session is what ``--record`` writes: ``turn-NNN/`` folders (reply.wav, jaw.csv,
commands.csv, turn.json; see skull/record.py). Each reply is played on the speaker (or the
simulated one) while the jaw loop follows its jaw track exactly as in a show, and every command
the jaw receives is kept, at the time the jaw got it. The report (skull/jaw/metrics.py):

* effective lag: the shift that best lines up the jaw's physical opening (commands through the
  servo model: 20 ms frames, the calibrated travel time) with the heard loudness; positive = the
  jaw is late;
* correlation at that shift;
* commands per second, largest single step, time outside the calibrated limits (must be 0);
* the same lag and correlation for the jaw as it ran live, from commands.csv, when the turn
  recorded when its first sound was heard.

The loudness is taken either **as heard**: on a real speaker behind a sound server (PulseAudio,
PipeWire's pulse layer) the server's monitor of the output is recorded while the reply plays
(skull/audio/monitor.py), so the jaw is scored against what really came out and when; or **as
scheduled**: reply.wav placed where the player said its first sample would be heard (the
simulated speaker, or a device without a sound server). The report says which, and how much
later than scheduled the first sample was really heard.

``--plot out.png`` draws the waveform, the loudness envelope, the commanded and the physical jaw
on one time axis.
"""
from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .core.envelope import jaw_track
from .core.wav import read_wav, to_mono
from .config import Calibration, SkullConfig
from .audio.heardfile import read_heard
from .audio.monitor import Heard
from .core.errors import DeviceError, SkullError
from .jaw import pulse_us
from .jaw.metrics import HOP_S, CommandStats, command_stats, effective_lag, loudness
from .jaw.sim import physical_positions

log = logging.getLogger("skull.replay")


SCHEDULED_SIM = "as scheduled (simulated speaker)"
ONSET_DBFS = -45.0
"""a reply's first sample is the first one louder than this (scaled by the monitor's volume)"""


@dataclass
class LiveSync:
    """The jaw as it ran when the turn was recorded (commands.csv)."""
    lag_ms: float
    r: float
    basis: str
    """how the commands were placed against the sound (as heard, or as scheduled)"""


@dataclass
class HeardReply:
    """The reply found in a monitor recording, on the reply's scheduled clock."""
    samples: np.ndarray
    """the monitor from the scheduled first sample on (mono float)"""
    rate: int
    """Hertz"""
    onset_s: float
    """when the first sample was heard minus when it was scheduled (positive: heard later); the
    reply's first sound above ONSET_DBFS marks where it is"""
    after_queued_s: float
    """when the first sample was heard, after the reply was queued on the player"""
    stretch_s: float
    """how much longer the reply took to be heard than it lasts (underruns and freezes insert time)"""
    source: str


@dataclass
class TurnReplay:
    folder: Path
    duration_s: float
    lag_ms: float
    r: float
    stats: CommandStats
    lead_ms: float
    travel_ms: float
    jaw: str
    live: LiveSync | None = None
    """the jaw as it ran when recorded"""
    commanded_lag_ms: float = 0.0
    """lag of the commands behind the jaw track of the sound being heard (negative: sent ahead)"""
    basis: str = SCHEDULED_SIM
    """what the loudness was taken from: "as heard (monitor of ...)" or "as scheduled (...)"."""
    onset_ms: float | None = None
    """the first sample heard minus scheduled, ms (as heard only)"""
    after_queued_ms: float | None = None
    """the first sample heard after the reply was queued, ms (as heard only)"""
    scheduled: tuple[float, float] | None = None
    """(lag ms, r) of the same jaw against reply.wav where the player scheduled it (as heard only)"""
    stretch_ms: float | None = None
    """how much longer the reply took to be heard than it lasts, ms (as heard only)"""
    underruns: int | None = None
    """the speaker's count of output underflows while the reply played (None: not counted)"""
    late_frames: int = 0
    """servo frames the jaw loop started more than a frame late (this machine was busy)"""
    worst_late_ms: float = 0.0
    """the latest a servo frame started, ms"""

    @property
    def on_time(self) -> bool:
        """The jaw loop kept its frames (none more than a frame late): the figures are the sync's,
        not this machine's load."""
        return self.late_frames == 0

    @property
    def heard(self) -> bool:
        return self.onset_ms is not None


def turn_folders(session: Path, turn: int | None = None) -> list[Path]:
    session = Path(session)
    if not session.is_dir():
        what = "is a file, not a session folder" if session.exists() else "does not exist"
        raise SkullError(f"session folder {session} {what}; give a folder recorded with skull demo --record DIR "
                         f"or skull run --record DIR")
    if (session / "reply.wav").is_file():
        folders = [session]
    else:
        folders = sorted(p for p in session.glob("turn-*") if p.is_dir() and (p / "reply.wav").is_file())
    if turn is not None:
        folders = [p for p in folders if p.name == f"turn-{turn:03d}" or (p == session and turn == 1)]
    if not folders:
        raise SkullError(f"no recorded turn{f' {turn}' if turn is not None else ''} in {session} (a turn is a "
                         f"turn-NNN folder with reply.wav); record one with skull demo --record DIR")
    return folders


def read_track(path: Path) -> tuple[np.ndarray, int]:
    """jaw.csv (time_ms,opening) -> a track at the frame rate its times show."""
    try:
        with open(path, newline="") as f:
            rows = [(float(r["time_ms"]), float(r["opening"])) for r in csv.DictReader(f)]
    except (OSError, KeyError, ValueError) as exc:
        raise SkullError(f"{path} is not a jaw track (time_ms,opening rows): {exc}") from None
    if len(rows) < 2:
        return np.zeros(0, np.float32), 100
    steps = np.diff([t for t, _ in rows])
    step = float(np.median(steps[steps > 0])) if np.any(steps > 0) else 10.0
    fps = max(1, int(round(1000.0 / step)))
    track = np.zeros(int(round(rows[-1][0] / step)) + 1, np.float32)
    for t, v in rows:
        k = int(round(t / step))
        if 0 <= k < len(track):
            track[k] = v
    return track, fps


def physical(log_rows, times, cal: Calibration, t0: float) -> np.ndarray:
    """Where the horn is at ``times`` for a jaw log, by the servo model with this travel time."""
    throw = 25.0
    sec_per_60 = cal.travel_ms / 1000.0 * 60.0 / throw
    return np.asarray(physical_positions(log_rows, times, throw, sec_per_60, 0.020, t0))


def commanded_path(log_rows, times) -> np.ndarray:
    """The last commanded opening at each of ``times`` (0 while detached)."""
    t_cmd = np.array([t for t, _, _ in log_rows])
    vals = np.array([0.0 if us is None else o for _, o, us in log_rows])
    idx = np.searchsorted(t_cmd, times, side="right") - 1
    return np.where(idx >= 0, vals[np.clip(idx, 0, None)], 0.0)


def read_commands(folder: Path) -> list[tuple[float, float, float]] | None:
    """commands.csv as (sent s after the release, reply.wav position s, opening); None when the
    turn has no usable commands.csv (recorded before it existed, or fewer than 3 commands)."""
    try:
        with open(folder / "commands.csv", newline="") as f:
            rows = [(float(r["sent_ms"]) / 1000.0, float(r["reply_ms"]) / 1000.0, float(r["opening"]))
                    for r in csv.DictReader(f)]
    except FileNotFoundError:
        return None
    except (OSError, KeyError, ValueError, TypeError) as exc:
        log.warning("%s is not readable (%s); the jaw as it ran live is left out", folder / "commands.csv", exc)
        return None
    return rows if len(rows) >= 3 else None


def live_sync(folder: Path, x: np.ndarray, rate: int, cal: Calibration) -> LiveSync | None:
    """Lag and r of the commands the jaw got live (commands.csv).

    With heard.wav + heard.json (skull/audio/heardfile.py) each command sits at its real
    ``sent_ms`` against the loudness of what the speaker played. Without them, reply.wav holds
    the segments back to back while the show had pauses between them, so each command is
    placed on reply.wav's clock by the position it was meant for, one lead earlier (when it
    was scheduled to be sent)."""
    rows = read_commands(folder)
    if rows is None:
        return None
    note = ""
    try:
        heard = read_heard(folder)
    except SkullError as exc:
        heard, note = None, f"; {exc}"
    if heard is not None:
        loud = loudness(heard.samples, heard.rate)
        times = heard.t0_s + np.arange(len(loud)) * HOP_S
        cmds = [(sent, o, pulse_us(cal, o)) for sent, _, o in rows]
        lag, r = effective_lag(physical(cmds, times, cal, cmds[0][0]), loud)
        return LiveSync(lag * 1000.0, r, f"as heard: sent_ms against heard.wav, monitor of {heard.source or '?'}")
    lead = cal.lead_ms / 1000.0
    cmds = [(meant - lead, o, pulse_us(cal, o)) for _, meant, o in rows]
    times = np.arange(0.0, len(x) / rate + 0.4, HOP_S)
    lag, r = effective_lag(physical(cmds, times, cal, cmds[0][0]), loudness(x, rate))
    return LiveSync(lag * 1000.0, r, f"as scheduled: placed by reply_ms, no heard.wav{note}")


def find_reply(heard: Heard, x: np.ndarray, rate: int, scheduled_at: float, queued_at: float) -> HeardReply | None:
    """The reply ``x`` in a monitor recording: its first sample was scheduled to be heard at
    ``scheduled_at`` and queued at ``queued_at`` (both time.monotonic()). None when the monitor
    heard nothing of it (the speaker is not the server's output, or it is muted)."""
    duration = len(x) / rate
    after = heard.between(queued_at, scheduled_at + duration + 1.0)
    peak_x, peak_heard = float(np.max(np.abs(x))), float(np.max(np.abs(after), initial=0.0))
    if peak_x <= 0 or peak_heard < 10 ** (-70 / 20):
        return None
    thr = 10 ** (ONSET_DBFS / 20)
    loud_x = np.flatnonzero(np.abs(x) > thr)
    first_x = int(loud_x[0]) if len(loud_x) else 0
    # the monitor carries the sink's volume: the same threshold, scaled by the heard level
    gain_db = 20 * np.log10(peak_heard / peak_x)
    thr_heard = ONSET_DBFS + gain_db
    first = heard.first_sound(queued_at, threshold_dbfs=thr_heard, until=scheduled_at + duration + 1.0)
    if first is None:
        return None
    onset = first - (scheduled_at + first_x / rate)
    # the last sound: a speaker that ran out of sound played the reply over a longer time
    rest = np.flatnonzero(np.abs(heard.between(first, heard.end)) > 10 ** (thr_heard / 20))
    last = first + int(rest[-1]) / heard.rate if len(rest) else first
    last_x = int(loud_x[-1]) if len(loud_x) else first_x
    stretch = (last - first) - (last_x - first_x) / rate
    end = scheduled_at + onset + duration + max(0.0, stretch) + 0.4
    return HeardReply(heard.between(scheduled_at, end), heard.rate, onset, scheduled_at + onset - queued_at,
                      stretch, heard.source)


def _scheduled_basis(player, heard: bool | None) -> str:
    """Why the loudness is taken as scheduled, or "" when the monitor is to be recorded.
    ``heard``: True demands the monitor (an error says why it cannot be), False refuses it, None
    takes it when the speaker is a real device and a sound server answers."""
    from .audio.monitor import sound_server
    from .audio.player import ClockPlayer
    if heard is False:
        return f"as scheduled ({player.name}; --no-heard)"
    if isinstance(player, ClockPlayer):
        if heard:
            raise SkullError("--heard needs a real speaker behind a sound server, but the speaker is simulated "
                             "(no sound device was found): plug one in or leave out --heard")
        return SCHEDULED_SIM
    if sound_server() is None:
        if heard:
            raise SkullError("--heard: no sound server answers (pactl info failed), so what the speaker played "
                             "cannot be recorded; start PulseAudio or PipeWire, or leave out --heard")
        return f"as scheduled ({player.name}; no sound server monitor)"
    return ""


def _start_monitor(player, heard: bool | None):
    """(a started SinkMonitor of the sink this process plays on, "") or (None, why not)."""
    import os
    from .audio.monitor import SinkMonitor, default_monitor, monitor_of_process
    try:
        return SinkMonitor(monitor_of_process(os.getpid()) or default_monitor()).start(), ""
    except DeviceError as exc:
        if heard:
            raise SkullError(f"--heard: {exc}") from None
        return None, f"as scheduled ({player.name}; {exc})"


def replay_turn(folder: Path, config: SkullConfig, *, jaw_kind: str, retrack: bool, plot: Path | None,
                open_jaw, open_speaker, heard: bool | None = None) -> TurnReplay:
    """Play one recorded reply with the jaw following it and measure the sync. ``heard``: score
    the jaw against the sound server's monitor (True: must; False: never; None: when there is
    one and the speaker is real)."""
    cal = config.calibration
    sound = read_wav(folder / "reply.wav")
    x, rate = to_mono(sound), sound.rate
    if not len(x):
        raise SkullError(f"{folder / 'reply.wav'} is empty: that turn had no reply to replay")
    if retrack or not (folder / "jaw.csv").is_file():
        track, fps = jaw_track(x, rate, config.shape), config.shape.fps
    else:
        track, fps = read_track(folder / "jaw.csv")
    from .jaw.sync import JawFollower
    opened = open_jaw()
    jaw = opened.jaw
    try:
        player = open_speaker(rate)
    except BaseException:
        opened.close()
        raise
    follower = JawFollower(player, jaw, frame_hz=config.jaw.frame_hz, lead_ms=cal.lead_ms, mode=config.jaw.mode,
                           shape=config.shape)
    monitor = recording = None
    try:
        basis = _scheduled_basis(player, heard)
        player.start()
        if not basis:  # the stream exists now: the server can tell which sink plays it
            monitor, basis = _start_monitor(player, heard)
        if monitor is not None and not monitor.wait_started(timeout_s=5.0):
            why = f"the monitor {monitor.source!r} did not start recording"
            _stop_quietly(monitor)
            monitor = None
            if heard:
                raise SkullError(f"--heard: {why}; check 'pactl list sources short'")
            basis = f"as scheduled ({player.name}; {why})"
        follower.start()
        counted = getattr(player, "underruns", None)
        started = time.monotonic()
        seg = player.timeline.add(x, rate, track, fps, tag="replay")
        deadline = started + len(x) / rate + 5.0
        while (seg.start < 0 or player.timeline.busy) and time.monotonic() < deadline:
            time.sleep(0.02)
        # the last commands, the servo's travel, and the device's buffer still to be heard
        time.sleep(0.3 + output_latency_s(player))
        follower.stop()
        late_frames, worst_late_ms = follower.late_frames, follower.worst_late_s * 1000.0
        now_counted = getattr(player, "underruns", None)
        underruns = now_counted - counted if isinstance(counted, int) and isinstance(now_counted, int) else None
        scheduled0 = seg.heard_at or seg.started_at
        rows = [e for e in list(getattr(jaw, "log", None) or []) if e[0] >= started]
        if monitor is not None:
            try:
                recording = monitor.stop()
            except DeviceError as exc:  # parec died: no recording to score against
                if heard:
                    raise SkullError(f"--heard: {exc}") from None
                basis = f"as scheduled ({player.name}; {exc})"
            monitor = None
    finally:
        follower.stop()
        if monitor is not None:
            _stop_quietly(monitor)
        player.close()
        opened.close()
    if not rows:
        raise SkullError(f"the {jaw_kind} jaw received no command while {folder.name} played")
    duration = len(x) / rate
    found = None
    if recording is not None:
        found = find_reply(recording, x, rate, scheduled0, started)
        if found is None:
            why = (f"the monitor {recording.source!r} heard nothing of the reply: the speaker does not play "
                   f"through the sound server (an ALSA hw: device?), or the sink is muted")
            if heard:
                raise SkullError(f"--heard: {why}; set [audio] output_device to 'pulse' or 'default', unmute it, or "
                                 f"leave out --heard")
            basis = f"as scheduled ({player.name}; {why})"
        else:
            basis = f"as heard (monitor of {found.source})"
    # every time below is seconds after the reply's first sample was scheduled to be heard
    shifted = [(t - scheduled0, o, us) for t, o, us in rows]
    sound_x, sound_rate, onset = (x, rate, 0.0) if found is None else (found.samples, found.rate, found.onset_s)
    times = np.arange(0.0, max(duration + 0.4, len(sound_x) / sound_rate), HOP_S)
    pos = physical(shifted, times, cal, shifted[0][0])
    loud = loudness(sound_x, sound_rate)
    lag, r = effective_lag(pos, loud)
    # how far ahead of the sound's own jaw track the commands went out (the lead, as measured),
    # the track placed where its sound was heard
    commanded = commanded_path(shifted, times)
    track_heard = (np.interp(times - onset, np.arange(len(track)) / fps, track, left=0.0, right=0.0)
                   if len(track) else times * 0)
    cmd_lag, _ = effective_lag(commanded, track_heard, max_shift_s=0.2)
    result = TurnReplay(folder, duration, lag * 1000.0, r, command_stats(shifted, cal, duration), cal.lead_ms,
                        cal.travel_ms, jaw_kind, live=live_sync(folder, x, rate, cal),
                        commanded_lag_ms=cmd_lag * 1000.0, basis=basis, underruns=underruns,
                        late_frames=late_frames, worst_late_ms=worst_late_ms)
    if found is not None:
        # what the player's own clock would have said: the difference is its error
        lag_s, r_s = effective_lag(pos, loudness(x, rate))
        result.scheduled = (lag_s * 1000.0, r_s)
        result.onset_ms, result.after_queued_ms = found.onset_s * 1000.0, found.after_queued_s * 1000.0
        result.stretch_ms = found.stretch_s * 1000.0
    if plot is not None:
        draw_plot(plot, sound_x, sound_rate, loud, shifted, pos, result)
    return result


def _stop_quietly(monitor) -> None:
    """Stop a monitor whose recording is not wanted (an error is already on its way)."""
    try:
        monitor.stop()
    except DeviceError as exc:
        log.debug("monitor stopped: %s", exc)


def output_latency_s(player) -> float:
    """The speaker's reported output latency, seconds (0 when it does not say)."""
    latency = getattr(player, "latency_s", None)
    if latency is None:
        latency = getattr(getattr(player, "_stream", None), "latency", None)
    try:
        return max(0.0, float(latency or 0.0))
    except (TypeError, ValueError):
        return 0.0


def report_lines(res: TurnReplay) -> list[str]:
    s = res.stats
    lines = [f"{res.folder.name}: {res.duration_s:.2f} s of reply through the {res.jaw} jaw "
             f"(lead {res.lead_ms:.0f} ms, servo travel {res.travel_ms:.0f} ms)",
             f"  measured           {res.basis}"]
    if res.heard:
        lines.append(f"  first sound heard  {res.onset_ms:+.0f} ms from when it was scheduled "
                     f"({res.after_queued_ms:.0f} ms after it was queued; positive = heard later)")
        lines.append(f"  heard length       {res.stretch_ms:+.0f} ms from the reply's own (a speaker that runs out of "
                     f"sound stretches it)")
    if res.underruns is not None:
        lines.append(f"  underruns          {res.underruns}" + ("" if not res.underruns else "  (the speaker ran out of "
                                                                  "sound: raise [audio] output_latency_ms)"))
    lines += [f"  effective lag      {res.lag_ms:+.0f} ms  (positive = jaw late; |lag| under 45 ms is not noticed)",
              f"  commands sent      {-res.commanded_lag_ms:.0f} ms ahead of the sound they open for (the servo's "
              f"frame wait and travel use it up)",
              f"  correlation        {res.r:.3f}  (physical jaw with heard loudness, at that lag)",
              f"  commands/s         {s.per_second:.1f}  ({s.count} commands)",
              f"  largest step       {s.largest_step:.2f} of the travel",
              f"  outside limits     {s.outside_s:.3f} s" + ("" if s.outside_s == 0 else "  <-- NEVER expected")]
    if res.on_time:
        lines.append(f"  jaw loop           on time (worst frame {res.worst_late_ms:.0f} ms late)")
    else:
        lines.append(f"  jaw loop           {res.late_frames} frames more than a frame late, worst {res.worst_late_ms:.0f} ms: "
                     f"this machine was busy, and the lag and correlation above include it; replay again when it is "
                     f"quieter")
    if res.scheduled is not None:
        lines.append(f"  as scheduled       lag {res.scheduled[0]:+.0f} ms, r {res.scheduled[1]:.3f}  (the same jaw against "
                     f"reply.wav where the player said it would be heard)")
    if res.live is not None:
        lines.append(f"  as it ran live     lag {res.live.lag_ms:+.0f} ms, r {res.live.r:.3f}  "
                     f"(commands.csv {res.live.basis})")
    return lines


def caption(res: TurnReplay) -> str:
    """The measured figures in a few words: how far ahead the commands went, the horn's lag."""
    word = "as heard" if res.heard else "as scheduled"
    return (f"commands {-res.commanded_lag_ms:.0f} ms ahead; horn {abs(res.lag_ms):.0f} ms "
            f"{'late' if res.lag_ms >= 0 else 'early'}, r {res.r:.2f}; {word}")


# --- the plot (OpenCV, no plotting library needed) ----------------------------------------------

def draw_plot(path: Path, x: np.ndarray, rate: int, loud: np.ndarray, log_rows, pos: np.ndarray,
              res: TurnReplay) -> None:
    """Waveform, then envelope + commanded + physical jaw over the whole reply, then the same
    over a 1.2 s close-up of the first clear syllables, where the lead can be seen. ``x`` is
    the sound the loudness came from (reply.wav, or the monitor as heard), from the reply's
    scheduled first sample on."""
    import cv2
    W, H, L, R = 1600, 1120, 90, 30
    img = np.full((H, W, 3), 255, np.uint8)
    duration = len(pos) * HOP_S
    grey, blue, red, dark = (110, 110, 110), (200, 120, 30), (40, 40, 210), (20, 20, 20)
    font = cv2.FONT_HERSHEY_SIMPLEX
    env = loud / max(1e-9, float(np.percentile(loud, 99)))
    # close-up: from 0.25 s before the first syllable that rises out of 100 ms of quiet
    onset, quiet = 0, 0
    for k, v in enumerate(env):
        if quiet >= 20 and v > 0.5:
            onset = k
            break
        quiet = quiet + 1 if v < 0.15 else (quiet if quiet >= 20 else 0)
    z0 = max(0.0, onset * HOP_S - 0.25)
    z1 = min(duration, z0 + 1.2)

    def panel(y0, y1, t0, t1, label, wave=False):
        span = W - L - R
        cv2.rectangle(img, (L, y0), (W - R, y1), (200, 200, 200), 1)

        def px(t):
            return int(L + (t - t0) / (t1 - t0) * span)

        def ys(v):
            return int(y1 - 6 - np.clip(v, 0, 1.05) * (y1 - y0 - 12))

        step = next(s for s in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0) if (t1 - t0) / s <= 16)
        t = np.ceil(t0 / step) * step
        while t <= t1 + 1e-9:
            cv2.line(img, (px(t), y0), (px(t), y1), (235, 235, 235), 1)
            cv2.putText(img, f"{t:.1f}", (px(t) - 12, y1 + 18), font, 0.45, (80, 80, 80), 1)
            t += step
        cv2.putText(img, label, (L + 6, y0 + 18), font, 0.55, (90, 90, 90), 1, cv2.LINE_AA)
        if wave:
            mid, half = (y0 + y1) // 2, (y1 - y0) // 2 - 4
            peak = max(1e-6, float(np.max(np.abs(x))))
            for col in range(span):
                a = int((t0 + col / span * (t1 - t0)) * rate)
                b = max(a + 1, int((t0 + (col + 1) / span * (t1 - t0)) * rate))
                seg = x[a:b]
                if len(seg):
                    lo, hi = float(seg.min()) / peak, float(seg.max()) / peak
                    cv2.line(img, (L + col, int(mid - hi * half)), (L + col, int(mid - lo * half)), grey, 1)
            return
        k0, k1 = int(t0 / HOP_S), min(len(pos), int(t1 / HOP_S) + 1)
        poly = [(px(k * HOP_S), ys(env[k])) for k in range(k0, min(k1, len(env)))]
        if poly:
            cv2.fillPoly(img, [np.array([(poly[0][0], ys(0))] + poly + [(poly[-1][0], ys(0))], np.int32)],
                         (228, 228, 228))
            cv2.polylines(img, [np.array(poly, np.int32)], False, grey, 1, cv2.LINE_AA)
        phys = [(px(k * HOP_S), ys(pos[k])) for k in range(k0, k1)]
        cv2.polylines(img, [np.array(phys, np.int32)], False, red, 2, cv2.LINE_AA)
        steps, last = [], 0.0
        for t_cmd, o, us in log_rows:
            o = 0.0 if us is None else o
            if t0 <= t_cmd <= t1:
                steps += [(px(t_cmd), ys(last)), (px(t_cmd), ys(o))]
            last = o
        if steps:
            steps.append((px(t1), steps[-1][1]))
            cv2.polylines(img, [np.array(steps, np.int32)], False, blue, 1, cv2.LINE_AA)

    title = (f"{res.folder.name}: effective lag {res.lag_ms:+.0f} ms (positive = jaw late), r {res.r:.2f}; "
             f"lead {res.lead_ms:.0f} ms, servo travel {res.travel_ms:.0f} ms; {res.basis}")
    cv2.putText(img, title, (L, 32), font, 0.62, dark, 1, cv2.LINE_AA)
    x_leg = L
    for label, colour in (("loudness " + ("heard (monitor)" if res.heard else "(reply.wav)"), grey), ("jaw commanded", blue),
                          ("jaw physical (servo model)", red)):
        cv2.line(img, (x_leg, 56), (x_leg + 30, 56), colour, 3)
        cv2.putText(img, label, (x_leg + 38, 61), font, 0.55, colour, 1, cv2.LINE_AA)
        x_leg += 330
    panel(80, 230, 0.0, duration, "waveform", wave=True)
    panel(260, 580, 0.0, duration, "whole reply")
    cv2.rectangle(img, (int(L + z0 / duration * (W - L - R)), 262), (int(L + z1 / duration * (W - L - R)), 578),
                  (150, 150, 150), 1)
    panel(640, 1080, z0, z1, f"close-up {z0:.1f}-{z1:.1f} s: {caption(res)}")
    axis = ("time (s, as heard; 0 = first sample scheduled)" if res.heard else "time (s, as scheduled)")
    cv2.putText(img, axis, (W // 2 - 10 * len(axis) // 2 - 20, H - 8), font, 0.55, (60, 60, 60), 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise SkullError(f"could not write the plot to {path}; is it a .png path in a writable folder?")


def cmd_replay(args, config: SkullConfig) -> int:
    from .audio.player import ClockPlayer, open_player
    from .runtime import open_jaw
    import dataclasses
    if args.plot and not str(args.plot).lower().endswith(".png"):
        raise SkullError(f"--plot {args.plot}: give a .png file name")
    if args.no_audio and getattr(args, "heard", None):
        raise SkullError("--heard records what the speaker played, and --no-audio opens no speaker: give one of them")
    config = dataclasses.replace(config, board=dataclasses.replace(config.board, driver=args.jaw))
    folders = turn_folders(Path(args.session), args.turn)

    def speaker(rate):
        if args.no_audio:
            return ClockPlayer(rate=rate, block_ms=5.0)
        return open_player(config.audio.output_device, latency_ms=config.audio.output_latency_ms)

    failed = 0
    for i, folder in enumerate(folders):
        plot = None
        if args.plot:
            plot = Path(args.plot) if len(folders) == 1 else Path(args.plot).with_name(
                f"{Path(args.plot).stem}-{folder.name}.png")
        res = replay_turn(folder, config, jaw_kind=args.jaw, retrack=args.retrack, plot=plot,
                          open_jaw=lambda: open_jaw(config), open_speaker=speaker,
                          heard=getattr(args, "heard", None))
        if args.report:
            print("\n".join(report_lines(res)), flush=True)
        else:
            print(f"{folder.name}: lag {res.lag_ms:+.0f} ms, r {res.r:.3f}, outside limits {res.stats.outside_s:.3f} s "
                  f"({res.basis})", flush=True)
        if plot is not None:
            print(f"  plot: {plot}", flush=True)
        failed += res.stats.outside_s > 0
    return 1 if failed else 0

