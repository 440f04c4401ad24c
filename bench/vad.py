"""Silero's two engines side by side (skull/core/vad.py): what each costs and where each puts
the edges of speech.

    python bench/vad.py [--threads 2]

The corpus is made here: SENTENCES spoken by espeak-ng voices (en-us, en-gb, en-us+f2) at 160
wpm, each with 1 s of silence before and after, clean and again in pink noise at 10 dB SNR
(seeded), plus 3 s of hand claps and 3 s of noise bursts, which must start no speech. The true
edges of a clip are espeak's first and last sample above 0.01. Per engine it prints the start
and end error ranges of the segments found (ms; pre-padding and post-padding included, as a turn
gets them), the speech found in the claps and bursts, the CPU per 32 ms window (process time
around the whole corpus, one stream), and the wall time of ``--threads`` streams run at once
against one stream alone (~1.0: the threads compute in parallel; ~threads: they take turns
holding Python's GIL).

The last line: ``onnx_cpu_ms_per_window=… ggml_cpu_ms_per_window=… cpu_ratio=… onnx_parallel=…
ggml_parallel=… start_diff_ms_max=… end_diff_ms_max=…`` (the diffs: the most the two engines'
edges differ on one clip).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from skull.core import vad  # noqa: E402
from skull.core.wav import read_wav, to_mono_rate  # noqa: E402

RATE = vad.RATE
SENTENCES = [
    "Hello skull, what do you think of my costume tonight?",
    "Tell me a joke about the weather.",
    "Why are you smiling? Is it because you have no lips?",
    "My friend here is scared of you.",
    "What is the best thing about being a skeleton?",
    "Can you guess what I am holding in my hand?",
]
VOICES = ["en-us", "en-gb", "en-us+f2"]


def espeak(text: str, voice: str) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "--stdout", text], capture_output=True,
                         check=True).stdout
    return to_mono_rate(read_wav(wav), RATE).astype(np.float32)


def pink(n: int, rng) -> np.ndarray:
    white = rng.standard_normal(n)
    spectrum = np.fft.rfft(white) / np.maximum(1, np.sqrt(np.arange(n // 2 + 1)))
    x = np.fft.irfft(spectrum, n)
    return (x / np.sqrt(np.mean(x ** 2))).astype(np.float32)


def corpus(rng) -> list[tuple[str, np.ndarray, int | None, int | None]]:
    """(name, 16 kHz audio, true start, true end); None, None for what is not speech."""
    clips = []
    for voice in VOICES:
        for k, text in enumerate(SENTENCES):
            speech = espeak(text, voice)
            loud = np.flatnonzero(np.abs(speech) > 0.01)
            clip = np.concatenate([np.zeros(RATE, np.float32), speech, np.zeros(RATE, np.float32)])
            start, end = RATE + int(loud[0]), RATE + int(loud[-1])
            clips.append((f"{voice}/{k}", clip, start, end))
            level = np.sqrt(np.mean(speech[loud[0]:loud[-1]] ** 2))
            noisy = clip + pink(len(clip), rng) * level * 10 ** (-10 / 20)
            clips.append((f"{voice}/{k}+noise", noisy.astype(np.float32), start, end))
    clap = np.zeros(3 * RATE, np.float32)
    for at in rng.uniform(0.1, 2.8, 8):
        burst = rng.standard_normal(int(0.03 * RATE)) * np.exp(-np.arange(int(0.03 * RATE)) / 80)
        clap[int(at * RATE):int(at * RATE) + len(burst)] += 0.8 * burst.astype(np.float32)
    clips.append(("claps", clap, None, None))
    bursts = np.zeros(3 * RATE, np.float32)
    for at in np.arange(0.2, 2.8, 0.6):
        bursts[int(at * RATE):int((at + 0.12) * RATE)] = 0.3 * pink(int(0.12 * RATE), rng)
    clips.append(("noise bursts", bursts, None, None))
    return clips


def run_engine(engine: str, clips) -> dict:
    edges = {}
    false_speech = 0.0
    windows = 0
    cpu = time.process_time()
    for name, clip, start, end in clips:
        found = vad.speech_segments(clip, RATE, probability=vad.SpeechProbability(engine))
        windows += len(clip) // vad.WINDOW
        if start is None:
            false_speech += sum(s.end - s.start for s in found) / RATE
        elif found:
            edges[name] = (found[0].start - start, found[-1].end - end)
        else:
            edges[name] = None
    cpu = time.process_time() - cpu
    return {"edges": edges, "false_s": false_speech, "cpu_ms": cpu * 1000 / windows}


def parallel(engine: str, clip: np.ndarray, threads: int) -> float:
    """Wall time of ``threads`` streams at once / one stream alone."""
    def one():
        model = vad.SpeechProbability(engine)
        for k in range(0, len(clip) - vad.WINDOW, vad.WINDOW):
            model(clip[k:k + vad.WINDOW])

    one()  # loads
    t = time.perf_counter()
    one()
    alone = time.perf_counter() - t
    workers = [threading.Thread(target=one) for _ in range(threads)]
    t = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return (time.perf_counter() - t) / alone


def ms(samples: list[int]) -> str:
    return f"{min(samples) * 1000 / RATE:+.0f}..{max(samples) * 1000 / RATE:+.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    engines = [e for e in vad.ENGINES if not vad._why_not(e)]
    missing = [e for e in vad.ENGINES if e not in engines]
    for e in missing:
        print(f"vad: the {e} engine cannot load here ({vad._why_not(e)}); left out")
    if not engines:
        print("vad: no engine loads here: install the 'ears' extra")
        return 1
    clips = corpus(np.random.default_rng(7))
    print(f"vad: {len(clips)} clips ({sum(len(c[1]) for c in clips) / RATE:.0f} s of audio), "
          f"{args.threads} streams at once for the parallel figure")
    print("| engine | start error ms clean / noise | end error ms clean / noise | speech in claps, bursts s "
          "| CPU ms per window | parallel wall / alone |")
    print("|---|---|---|---|---|---|")
    results = {}
    for e in engines:
        r = results[e] = run_engine(e, clips)
        r["parallel"] = parallel(e, clips[0][1], args.threads)
        clean = [v for k, v in r["edges"].items() if v and "+noise" not in k]
        noisy = [v for k, v in r["edges"].items() if v and "+noise" in k]
        missed = sum(1 for v in r["edges"].values() if v is None)
        print(f"| {e} | {ms([a for a, _ in clean])} / {ms([a for a, _ in noisy])} "
              f"| {ms([b for _, b in clean])} / {ms([b for _, b in noisy])} | {r['false_s']:.2f} "
              f"| {r['cpu_ms']:.3f} | {r['parallel']:.2f} |"
              + (f" ({missed} clips with no speech found)" if missed else ""))
    if len(engines) < 2:
        return 0
    a, b = (results[e]["edges"] for e in vad.ENGINES)
    both = [k for k in a if a[k] and b.get(k)]
    start_diff = max(abs(a[k][0] - b[k][0]) for k in both) * 1000 / RATE
    end_diff = max(abs(a[k][1] - b[k][1]) for k in both) * 1000 / RATE
    onnx, ggml = results["onnx"], results["ggml"]
    print(f"onnx_cpu_ms_per_window={onnx['cpu_ms']:.3f} ggml_cpu_ms_per_window={ggml['cpu_ms']:.3f} "
          f"cpu_ratio={onnx['cpu_ms'] / ggml['cpu_ms']:.3f} onnx_parallel={onnx['parallel']:.2f} "
          f"ggml_parallel={ggml['parallel']:.2f} start_diff_ms_max={start_diff:.0f} end_diff_ms_max={end_diff:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
