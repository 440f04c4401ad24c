"""Jaw sync, side by side: our playback-clock jaw against the methods of the best existing
props, through the same servo model and the same audio output latency.

    python bench/jaw_sync.py                 # the generated corpus (espeak-ng voices + music/noise)
    python bench/jaw_sync.py --corpus DIR    # any folder of WAVs

Every clip is levelled to the same speaking volume (-20 dBFS RMS over its voiced parts: the
volume knob a user would set) and "played" on a simulated clock: sample 0 is heard at t = 0,
and every method gets its audio when it really would:

* ours: the host's precomputed jaw track (skull.core.envelope.jaw_track), followed by the real
  JawFollower at 50 Hz targeting the sound heard ``lead_ms`` ahead on the playback clock.
  ``ours (live level)`` is the same loop measuring the level of the audio as it is handed to the
  device (it can only look ahead by the output latency);
* scary-terry: an analog board listening to the speaker line (the heard sound): envelope
  detector (10 ms), one trigger level (set to 30 % of the clip's loud level), jaw fully open
  while above it;
* chatterpi: ChatterPi's "Jawduino" style: mean absolute sample of each 4096-frame callback
  buffer at 44.1 kHz (~10.8 Hz), thresholds 1500/2500/3500 (16-bit units) to four positions, set
  when the buffer is handed to the device (heard one output latency later);
* esp-talkingskull: RMS of the last 1024 samples (at 44.1 kHz) of the I2S bus (heard sound)
  every 25 ms (40 Hz), follower with attack 0.75 / release 0.12 per tick, level relative to the
  clip's loud level spread over the calibrated travel, closed below 10 %;
* billy-b: billy-b-assistant's flap_from_pcm_chunk: 40 ms chunks (25 Hz) decided just before
  each chunk is written to the device; RMS over 1500 (16-bit units) and 0.15 s since the last
  flap opens the mouth (25-100 % by level) for 15-70 ms; under 750 it shuts.

Each method's commands drive the same servo model (skull.jaw.sim.physical_positions: a command
takes effect at the next 20 ms servo frame, then the horn turns at 0.10 s/60 degrees over a
25 degree throw). Scoring (skull.jaw.metrics): effective lag (positive = jaw late) and
correlation of the physical jaw with the heard loudness, per speech clip, averaged. Clips whose
name starts with music or noise are not speech: for them the table shows how much of the time
the jaw stood open (a good jaw mostly ignores them).

The last line: ours_lag_ms=<x> ours_r=<y> best_anchor=<name> anchor_lag_ms=<z> anchor_r=<w>
"""
from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from skull.core.wav import read_wav, to_mono, write_wav  # noqa: E402
from skull.config import Calibration  # noqa: E402
from skull.jaw.metrics import effective_lag, loudness  # noqa: E402
from skull.jaw.simulate import follow, servo_path  # noqa: E402

LEVEL_DBFS = -20.0

LINES = [
    "Welcome, mortal. Step closer, I promise I only bite on Tuesdays.",
    "Nice costume! Is that a ghost, or did you forget to do your laundry?",
    "I have been dead for three hundred years, and your jokes are older than me.",
    "Ooh, spooky! Come back at midnight and bring more candy for the skeleton crew.",
]
VOICES = [("en-us", 175), ("en-gb+f3", 150), ("en-gb-scotland+m3", 200), ("en-us+f2", 230), ("en+m7", 130)]


# --- the corpus -------------------------------------------------------------------------------

def generate_corpus(folder: Path) -> list[Path]:
    """Speech in several espeak-ng voices and speeds, one fake-voice clip, one music/noise clip."""
    folder.mkdir(parents=True, exist_ok=True)
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("espeak-ng is needed to make the default corpus (make bootstrap installs it), "
                         "or give --corpus DIR of WAVs")
    paths = []
    for i, (voice, wpm) in enumerate(VOICES):
        out = folder / f"speech-{i + 1}-{voice.replace('+', '_')}-{wpm}wpm.wav"
        if not out.exists():
            subprocess.run([espeak, "-v", voice, "-s", str(wpm), "-w", str(out), LINES[i % len(LINES)]],
                           check=True, capture_output=True)
        paths.append(out)
    out = folder / "speech-6-syllable-voice.wav"
    if not out.exists():
        from host.fakes.speech import speechlike
        write_wav(out, speechlike(" ".join(LINES[:2]), 24000), 24000)
    paths.append(out)
    out = folder / "music-and-noise.wav"
    if not out.exists():
        write_wav(out, music_and_noise(22050), 22050)
    paths.append(out)
    return paths


def music_and_noise(rate: int, seconds: float = 6.0) -> np.ndarray:
    """A sustained chord bed with a kick drum and hi-hats, then crowd-like noise."""
    rng = np.random.default_rng(7)
    t = np.arange(int(rate * seconds)) / rate
    chords = [(220.0, 277.2, 329.6), (196.0, 246.9, 293.7), (174.6, 220.0, 261.6), (196.0, 246.9, 329.6)]
    bed = np.zeros_like(t)
    for i, chord in enumerate(chords):
        part = (t >= i * 1.0) & (t < (i + 1) * 1.0)
        bed[part] = sum(np.sin(2 * np.pi * f * t[part]) for f in chord) / 3
    beat = t % 0.5
    kick = np.sin(2 * np.pi * 55 * t) * np.exp(-beat / 0.06)
    hat = rng.normal(0, 1, len(t)) * np.exp(-((t + 0.25) % 0.25) / 0.01)
    hat = np.diff(hat, prepend=0.0)  # high-passed: hiss
    music = 0.4 * bed + 0.5 * kick + 0.1 * hat
    music[t >= 4.0] = 0.0
    crowd = np.convolve(rng.normal(0, 1, len(t)), np.ones(8) / 8, mode="same")
    music[t >= 4.0] = 0.3 * crowd[t >= 4.0]
    return (music / np.max(np.abs(music)) * 0.7).astype(np.float32)


def levelled(x: np.ndarray, rate: int) -> np.ndarray:
    """Scale to LEVEL_DBFS RMS over the 50 ms blocks louder than 30 dB below the loudest."""
    n = int(0.05 * rate)
    blocks = x[:len(x) // n * n].reshape(-1, n) if len(x) >= n else x.reshape(1, -1)
    rms = np.sqrt(np.mean(blocks.astype(np.float64) ** 2, axis=1))
    active = rms[rms > rms.max() * 10 ** (-30 / 20)] if rms.max() > 0 else rms
    level = np.sqrt(np.mean(active ** 2)) if len(active) else 0.0
    if level <= 0:
        return x.astype(np.float32)
    return np.clip(x * (10 ** (LEVEL_DBFS / 20) / level), -1, 1).astype(np.float32)


def is_speech(path: Path) -> bool:
    return not path.name.lower().startswith(("music", "noise"))


# --- the methods: each gives jaw commands (heard-clock time, opening) -------------------------

def ours(x: np.ndarray, rate: int, latency_s: float, lead_ms: float, mode: str = "track") -> list:
    return follow(x, rate, lead_ms=lead_ms, latency_s=latency_s, mode=mode)


def scary_terry(x: np.ndarray, rate: int, latency_s: float) -> list:
    a = 1 - math.exp(-1 / (0.010 * rate))
    env = _one_pole(np.abs(x).astype(np.float64), a)
    thr = 0.3 * np.percentile(env, 95)
    cmds, t = [], 0.0
    while t < len(x) / rate + 0.3:
        i = int(t * rate)
        cmds.append((t, 1.0 if i < len(env) and env[i] > thr else 0.0))
        t += 0.02
    return cmds


def chatterpi(x: np.ndarray, rate: int, latency_s: float) -> list:
    block = int(round(4096 / 44100 * rate))
    cmds = []
    for k in range(int(math.ceil(len(x) / block)) + 1):
        chunk = x[k * block:(k + 1) * block]
        level = float(np.mean(np.abs(chunk))) * 32767 if len(chunk) else 0.0
        pos = 0.0 if level < 1500 else 1 / 3 if level < 2500 else 2 / 3 if level < 3500 else 1.0
        cmds.append((k * block / rate - latency_s, pos))
    return cmds


def esp_talkingskull(x: np.ndarray, rate: int, latency_s: float) -> list:
    n = int(round(1024 / 44100 * rate))
    ticks = np.arange(0.0, len(x) / rate + 0.3, 0.025)
    padded = np.concatenate([x.astype(np.float64), np.zeros(int(0.4 * rate))])
    rms = np.array([np.sqrt(np.mean(padded[max(0, int(t * rate) - n):int(t * rate)] ** 2)) if int(t * rate) > 0 else 0.0
                    for t in ticks])
    ref = np.percentile(rms[rms > 0], 95) if np.any(rms > 0) else 1.0
    env, cmds = 0.0, []
    for t, r in zip(ticks, rms):
        env += (r - env) * (0.75 if r > env else 0.12)
        level = min(1.0, env / ref)
        cmds.append((float(t), 0.0 if level < 0.1 else level))
    return cmds


def billy_b(x: np.ndarray, rate: int, latency_s: float) -> list:
    chunk = int(0.040 * rate)
    cmds, last_flap, open_until = [], -1.0, -1.0
    for k in range(int(math.ceil(len(x) / chunk)) + 8):
        now = k * chunk / rate - latency_s  # decided right before the chunk is written
        c = x[k * chunk:(k + 1) * chunk].astype(np.float64) * 32767
        rms = float(np.sqrt(np.mean(c ** 2))) if len(c) else 0.0
        if rms < 750 and now >= open_until:
            cmds.append((now, 0.0))
            continue
        if rms <= 1500 or now - last_flap < 0.15:
            continue
        norm = min(1.0, rms / 32768)
        speed = float(np.clip(np.interp(norm, [0.005, 0.15], [25, 100]), 25, 100))
        dur = float(np.interp(norm, [0.005, 0.15], [15, 70])) / 1000
        last_flap, open_until = now, now + dur
        cmds.append((now, speed / 100))
        cmds.append((now + dur, 0.0))
    return sorted(cmds)


def _one_pole(x: np.ndarray, a: float) -> np.ndarray:
    out, v = np.empty_like(x), 0.0
    for i, s in enumerate(x):
        v += (s - v) * a
        out[i] = v
    return out


# --- scoring -------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", help="folder of WAV files (default: generate one)")
    ap.add_argument("--latency-ms", type=float, default=40.0, help="audio output latency, same for all (40)")
    ap.add_argument("--lead-ms", type=float, default=Calibration().lead_ms, help="our lead (calibration default)")
    ap.add_argument("--throw-deg", type=float, default=25.0)
    ap.add_argument("--sec-per-60", type=float, default=0.10, help="servo speed, seconds per 60 degrees")
    args = ap.parse_args(argv)

    if args.corpus:
        folder = Path(args.corpus)
        paths = sorted(folder.glob("*.wav")) + sorted(folder.glob("*.WAV"))
        if not paths:
            print(f"no .wav files in {folder}", file=sys.stderr)
            return 2
    else:
        folder = Path(tempfile.gettempdir()) / "skull-jaw-corpus"
        paths = generate_corpus(folder)
    latency = args.latency_ms / 1000
    methods = {
        "ours": lambda x, r: ours(x, r, latency, args.lead_ms),
        "ours (live level)": lambda x, r: ours(x, r, latency, args.lead_ms, mode="live"),
        "scary-terry": lambda x, r: scary_terry(x, r, latency),
        "chatterpi": lambda x, r: chatterpi(x, r, latency),
        "esp-talkingskull": lambda x, r: esp_talkingskull(x, r, latency),
        "billy-b": lambda x, r: billy_b(x, r, latency),
    }
    per = {m: {"lag": [], "r": [], "cps": [], "noise_open": []} for m in methods}
    print(f"corpus: {folder} ({len(paths)} clips); output latency {args.latency_ms:.0f} ms; servo "
          f"{args.sec_per_60:.2f} s/60 deg, {args.throw_deg:.0f} deg throw, 50 Hz frames; our lead {args.lead_ms:.0f} ms")
    print(f"{'clip':<42} " + " ".join(f"{m:>18}" for m in methods))
    for path in paths:
        try:
            audio = read_wav(path)
        except Exception as exc:
            print(f"{path.name}: skipped ({exc})", file=sys.stderr)
            continue
        x = levelled(to_mono(audio), audio.rate)
        duration = len(x) / audio.rate + 0.4
        loud = loudness(x, audio.rate)
        cells = []
        for name, method in methods.items():
            cmds = method(x, audio.rate)
            pos = servo_path(cmds, duration, throw_deg=args.throw_deg, sec_per_60deg=args.sec_per_60)
            per[name]["cps"].append(len(cmds) / (len(x) / audio.rate))
            if is_speech(path):
                lag, r = effective_lag(pos, loud)
                per[name]["lag"].append(lag * 1000)
                per[name]["r"].append(r)
                cells.append(f"{lag * 1000:+6.0f} ms r={r:4.2f}")
            else:
                open_frac = float(np.mean(pos[:len(loud)] > 0.2))
                per[name]["noise_open"].append(open_frac)
                cells.append(f"open {open_frac * 100:5.1f}%")
        print(f"{path.name[:42]:<42} " + " ".join(f"{c:>18}" for c in cells), flush=True)

    print()
    print(f"{'method':<18} {'lag ms':>8} {'r':>6} {'cmds/s':>7} {'open on music/noise':>20}")
    summary = {}
    for name, d in per.items():
        if not d["r"]:
            print("no speech clips in the corpus (names starting with music/noise are not speech)", file=sys.stderr)
            return 2
        lag, r = float(np.mean(d["lag"])), float(np.mean(d["r"]))
        summary[name] = (lag, r)
        noise = f"{np.mean(d['noise_open']) * 100:.1f}%" if d["noise_open"] else "-"
        print(f"{name:<18} {lag:>+8.1f} {r:>6.3f} {np.mean(d['cps']):>7.1f} {noise:>20}")
    anchors = {k: v for k, v in summary.items() if not k.startswith("ours")}
    best = max(anchors, key=lambda k: anchors[k][1])
    ol, orr = summary["ours"]
    print(f"ours_lag_ms={ol:.1f} ours_r={orr:.3f} best_anchor={best} anchor_lag_ms={anchors[best][0]:.1f} "
          f"anchor_r={anchors[best][1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
