"""Word error rate of the offline speech-to-text engines, on a generated espeak-ng corpus or on
any folder of WAVs with their reference texts.

    python bench/stt.py                              # generated corpus, every installed offline engine
    python bench/stt.py --engine moonshine --hyp out.tsv
    python bench/stt.py --corpus DIR                 # DIR/*.wav (any rate, any channels) + DIR/refs.tsv
    python bench/stt.py --keep DIR                   # keep the generated corpus in DIR

The generated corpus: SENTENCES (what a visitor says to a talking skull, 5-15 words, no digits)
spoken by the espeak-ng voices VOICES (those espeak-ng cannot speak are skipped with a note) at
140 and 175 wpm, resampled to 16 kHz mono with sox: the set "clean". Each clean clip again with
pink noise at 10 dB SNR (numpy, seeded per clip, scaled to the speech level): the set "noisy".
refs.tsv holds ``file<TAB>reference text``.

An offline engine is every stt backend of the registry that needs no server (its settings are
not HttpSettings). Each is built once through the registry, as the host builds it; one that
cannot load here is skipped and named, and so is one the registry replaces by its fallback.
Load time is not counted; CPU time is the whole process's user + system time around each
transcribe call (getrusage counts every thread, and moonshine runs its own).

Word error rate = word-level edit distance / reference words, both lower-cased with punctuation
removed (numbers are not normalised: the generated sentences have none). Corpus WER sums the
edits and the reference words over the clips, per engine and per set.

The last line: ``engine=<name> wer=<percent, one decimal> cpu_per_audio_s=<CPU s per audio s>``
for the host's default engine (the first engine run when the default was not run), over the
whole corpus.
"""
from __future__ import annotations

import argparse
import logging
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from host.backends.registry import HttpSettings, lookup, names  # noqa: E402
from host.build import build_stage  # noqa: E402
from host.config import HostConfig, load_stage  # noqa: E402
from skull.core.errors import AudioFormatError, BackendError, ConfigError  # noqa: E402
from skull.core.wav import read_wav, to_mono_rate, write_wav  # noqa: E402

RATE = 16000
"""Hertz: every clip is converted to this before it is transcribed"""
REFS = "refs.tsv"
SENTENCES = [
    "Hey skull, what are you supposed to be?",
    "Do you like my vampire costume?",
    "Can you tell me a joke about ghosts?",
    "Where did you get those glowing red eyes?",
    "Are you a real skeleton or just made of plastic?",
    "What is your favorite kind of candy?",
    "My little sister is dressed as a pumpkin, what do you think of her?",
    "How long have you been sitting on this porch?",
    "Why did the skeleton not go to the dance?",
    "Is this house haunted, and who lives here with you?",
    "I am a witch, can you guess my name?",
    "Please say something scary before we go trick or treating down the street.",
]
VOICES = ("en-us", "en-gb", "en-us+f2", "en+m3")
"""the voices of the issue's method; ``--voices all`` adds every other English voice espeak-ng has"""
SPEEDS_WPM = (140, 175)
SNR_DB = 10.0
SEED = 7


class CorpusError(Exception):
    """A corpus or option the bench cannot use; the message says what to do (exit status 2)."""


# --- words and errors ---------------------------------------------------------------------------

def words(text: str) -> list[str]:
    """Lower-cased words without punctuation: apostrophes vanish (don't -> dont), any other
    mark separates words (well-known -> well known)."""
    text = text.lower().replace("\u2019", "'").replace("'", "")
    return re.sub(r"[\W_]+", " ", text).split()


def word_errors(ref: list[str], hyp: list[str]) -> tuple[int, int, int]:
    """(substitutions, deletions, insertions) of the cheapest alignment of ``hyp`` to ``ref``;
    their sum is the word-level edit distance."""
    # each cell: (edits, substitutions, deletions, insertions); ties keep the fewest substitutions
    prev = [(j, 0, 0, j) for j in range(len(hyp) + 1)]
    for i in range(1, len(ref) + 1):
        cur = [(i, 0, i, 0)]
        for j in range(1, len(hyp) + 1):
            e, s, d, n = prev[j - 1]
            best = (e, s, d, n) if ref[i - 1] == hyp[j - 1] else (e + 1, s + 1, d, n)
            e, s, d, n = prev[j]
            best = min(best, (e + 1, s, d + 1, n))
            e, s, d, n = cur[j - 1]
            best = min(best, (e + 1, s, d, n + 1))
            cur.append(best)
        prev = cur
    return prev[-1][1:]


def wer_percent(ref: str, hyp: str) -> float:
    """Word error rate of one hypothesis, in percent of the reference's words."""
    r = words(ref)
    return 100.0 * sum(word_errors(r, words(hyp))) / max(1, len(r))


# --- the corpus ---------------------------------------------------------------------------------

@dataclass
class Clip:
    file: str
    """its path relative to the corpus folder, as refs.tsv names it"""
    reference: str
    samples: np.ndarray
    """mono float32 at RATE"""
    group: str
    """its set: 'clean', 'noisy', 'other' (names with neither word) or 'all' (no name has either)"""
    voice: str = ""
    """the espeak-ng voice that spoke it (generated corpus only)"""

    @property
    def seconds(self) -> float:
        return len(self.samples) / RATE


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of pink noise (power falling 3 dB per octave), RMS 1."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum), dtype=np.float64)
    spectrum[1:] /= np.sqrt(f[1:])
    spectrum[0] = 0.0
    x = np.fft.irfft(spectrum, n)
    return x / np.sqrt(np.mean(x ** 2))


def speech_rms(x: np.ndarray, rate: int = RATE) -> float:
    """RMS over the 50 ms blocks within 30 dB of the loudest: the level of the speech itself,
    not of the silence around it."""
    n = int(0.05 * rate)
    blocks = x[:len(x) // n * n].reshape(-1, n) if len(x) >= n else x.reshape(1, -1)
    rms = np.sqrt(np.mean(blocks.astype(np.float64) ** 2, axis=1))
    active = rms[rms >= rms.max() * 10 ** (-30 / 20)]
    return float(np.sqrt(np.mean(active ** 2))) if rms.max() > 0 else 0.0


def add_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """``x`` plus pink noise ``snr_db`` below its speech level; scaled down together if the sum
    would clip."""
    noise = pink_noise(len(x), rng) * speech_rms(x) / 10 ** (snr_db / 20)
    y = x.astype(np.float64) + noise
    peak = np.max(np.abs(y))
    return (y * (0.99 / peak if peak > 0.99 else 1.0)).astype(np.float32)


def generate_corpus(folder: Path, voices: tuple, seed: int, snr_db: float) -> dict[str, str]:
    """Write the clean and noisy clips and refs.tsv into ``folder``; returns each file's voice."""
    espeak, sox = shutil.which("espeak-ng"), shutil.which("sox")
    if espeak is None or sox is None:
        raise CorpusError(f"{'espeak-ng' if espeak is None else 'sox'} is needed to make the default corpus "
                          f"(make bootstrap installs it), or give --corpus DIR of WAVs with a {REFS}")
    folder.mkdir(parents=True, exist_ok=True)
    refs, voice_of = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "espeak.wav"
        for voice in voices:
            for wpm in SPEEDS_WPM:
                for i, text in enumerate(SENTENCES, 1):
                    said = subprocess.run([espeak, "-v", voice, "-s", str(wpm), "-w", str(raw), text],
                                          capture_output=True, text=True)
                    if said.returncode != 0:
                        break
                    stem = f"s{i:02d}-{voice.replace('+', '_')}-{wpm}wpm"
                    clean = folder / f"clean-{stem}.wav"
                    converted = subprocess.run([sox, str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(clean)],
                                               capture_output=True, text=True)
                    if converted.returncode != 0:
                        raise CorpusError(f"sox could not resample {voice}'s clip to {RATE} Hz: "
                                          f"{converted.stderr.strip()[:200]}")
                    x = to_mono_rate(read_wav(clean), RATE)
                    rng = np.random.default_rng([seed, zlib.crc32(stem.encode())])
                    write_wav(folder / f"noisy-{stem}.wav", add_noise(x, snr_db, rng), RATE)
                    for name in (clean.name, f"noisy-{stem}.wav"):
                        refs.append(f"{name}\t{text}")
                        voice_of[name] = voice
                else:
                    continue
                why = (said.stderr.strip().splitlines() or [f"exit status {said.returncode}"])[-1]
                print(f"note: espeak-ng cannot speak voice {voice} here ({why}); it is left out")
                break
    if not refs:
        raise CorpusError(f"espeak-ng could speak none of the voices {', '.join(voices)}; "
                          f"'espeak-ng --voices=en' lists the ones installed")
    (folder / REFS).write_text("\n".join(refs) + "\n", encoding="utf-8")
    return voice_of


def installed_voices() -> tuple:
    """VOICES, then every other English voice ``espeak-ng --voices=en`` lists, less the mbrola
    ones (their voice files are separate packages)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        return VOICES  # the corpus step then says espeak-ng is missing
    listed = subprocess.run([espeak, "--voices=en"], capture_output=True, text=True).stdout.splitlines()
    more = [cols[1] for cols in (line.split() for line in listed[1:])
            if len(cols) >= 5 and not cols[4].startswith("mb/") and cols[1].startswith("en")]
    return tuple(dict.fromkeys(VOICES + tuple(more)))


def read_refs(folder: Path) -> dict[str, str]:
    """refs.tsv of ``folder``: one ``file<TAB>reference text`` a line; blank and # lines skipped."""
    path = folder / REFS
    if not path.is_file():
        raise CorpusError(f"{folder} has no {REFS}: write one line per clip, 'file<TAB>reference text', "
                          f"the file named relative to the folder (e.g. 'hello.wav\thello skull')")
    refs: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        file, tab, text = line.partition("\t")
        file, text = file.strip(), text.strip()
        if not tab or not file or not text:
            raise CorpusError(f"{path} line {n}: expected 'file<TAB>reference text', got {line[:80]!r}")
        if file in refs:
            raise CorpusError(f"{path} line {n}: {file} is named twice; keep one reference per clip")
        refs[file] = text
    return refs


def group_of(name: str) -> str | None:
    low = name.lower()
    return "noisy" if "noisy" in low else "clean" if "clean" in low else None


def load_corpus(folder: Path, voice_of: dict[str, str] | None = None) -> tuple[list[Clip], list[str]]:
    """The clips of ``folder`` named in its refs.tsv, mono at RATE, with notes on what was left out."""
    if not folder.is_dir():
        raise CorpusError(f"corpus folder {folder} does not exist; give a folder of WAVs with a {REFS}")
    refs = read_refs(folder)
    wavs = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".wav" and p.is_file())
    clips, unlisted = [], []
    for path in wavs:
        rel = path.relative_to(folder).as_posix()
        if rel not in refs:
            unlisted.append(rel)
            continue
        try:
            samples = to_mono_rate(read_wav(path), RATE)
        except AudioFormatError as exc:
            raise CorpusError(f"{exc}; fix or remove it, or drop it from {REFS}") from None
        clips.append(Clip(rel, refs[rel], samples, group_of(rel) or "", (voice_of or {}).get(rel, "")))
    notes = []
    if unlisted:
        notes.append(f"skipped {len(unlisted)} WAV(s) not in {REFS}: {', '.join(unlisted[:5])}"
                     f"{' ...' if len(unlisted) > 5 else ''}")
    missing = sorted(set(refs) - {c.file for c in clips})
    if missing:
        notes.append(f"{REFS} names {len(missing)} file(s) that are not WAVs in {folder}: "
                     f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if not clips:
        raise CorpusError(f"none of the {len(refs)} clips in {folder / REFS} is a WAV file in {folder}; "
                          f"name them relative to the folder")
    grouped = any(c.group for c in clips)
    for clip in clips:
        clip.group = clip.group or ("other" if grouped else "all")
    return clips, notes


# --- the engines --------------------------------------------------------------------------------

def offline_engines() -> list[str]:
    """The stt backends that need no server, the host's default first."""
    return [n for n in names("stt") if lookup("stt", n).cls is not None
            and not issubclass(lookup("stt", n).settings, HttpSettings)]


class _Warnings(logging.Handler):
    """Keeps the registry's fallback warning, to say why an engine was replaced."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def load_engine(name: str):
    """(engine, name the registry built, why it is not ``name``); engine is None when ``name``
    cannot run here."""
    caught = _Warnings()
    log = logging.getLogger("host.build")
    log.addHandler(caught)
    try:
        stt = build_stage(load_stage("stt", {"backend": name}, "bench"))
    except (BackendError, ConfigError) as exc:
        return None, None, str(exc)
    finally:
        log.removeHandler(caught)
    if stt.name != name:
        why = caught.messages[-1] if caught.messages else f"the registry built {stt.name} instead"
        return None, stt.name, why
    return stt, stt.name, ""


def cpu_seconds() -> float:
    """User + system CPU time of this process, every thread included."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class Result:
    clip: Clip
    hypothesis: str
    errors: tuple
    """(substitutions, deletions, insertions)"""
    cpu_s: float
    wall_s: float
    failed: str = ""


def run_engine(stt, clips: list[Clip]) -> list[Result]:
    results = []
    for clip in clips:
        failed = ""
        c0, t0 = cpu_seconds(), time.perf_counter()
        try:
            hyp = " ".join(stt.transcribe(clip.samples, RATE).split())
        except BackendError as exc:  # counted as heard nothing, and named
            hyp, failed = "", str(exc)
        cpu, wall = cpu_seconds() - c0, time.perf_counter() - t0
        results.append(Result(clip, hyp, word_errors(words(clip.reference), words(hyp)), cpu, wall, failed))
    return results


@dataclass
class Score:
    clips: int = 0
    words: int = 0
    sub: int = 0
    dels: int = 0
    ins: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    audio_s: float = 0.0

    def add(self, r: Result) -> None:
        self.clips += 1
        self.words += len(words(r.clip.reference))
        s, d, i = r.errors
        self.sub, self.dels, self.ins = self.sub + s, self.dels + d, self.ins + i
        self.cpu_s += r.cpu_s
        self.wall_s += r.wall_s
        self.audio_s += r.clip.seconds

    @property
    def wer(self) -> float:
        """percent"""
        return 100.0 * (self.sub + self.dels + self.ins) / max(1, self.words)

    @property
    def cpu_per_audio_s(self) -> float:
        return self.cpu_s / max(1e-9, self.audio_s)


def scores(results: list[Result], key) -> dict[str, Score]:
    out: dict[str, Score] = {}
    for r in results:
        out.setdefault(key(r), Score()).add(r)
    return out


GROUP_ORDER = ("clean", "noisy", "other", "all")


def table(rows: list[tuple[str, str, Score]], label: str) -> list[str]:
    lines = [f"{'engine':<13} {label:<15} {'clips':>5} {'words':>6} {'WER %':>6} {'sub':>5} {'del':>5} {'ins':>5} "
             f"{'cpu s/audio s':>13} {'wall s/audio s':>14}"]
    for engine, name, s in rows:
        lines.append(f"{engine:<13} {name:<15} {s.clips:>5} {s.words:>6} {s.wer:>6.1f} {s.sub:>5} {s.dels:>5} "
                     f"{s.ins:>5} {s.cpu_per_audio_s:>13.3f} {s.wall_s / max(1e-9, s.audio_s):>14.3f}")
    return lines


def write_hyp(path: Path, results: list[Result]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{r.clip.file}\t{r.hypothesis}\n" for r in results), encoding="utf-8")


def hyp_path(base: Path, engine: str, headline: str) -> Path:
    """OUT.tsv for the headline engine; OUT.<engine>.tsv beside it for each other engine."""
    return base if engine == headline else base.with_name(f"{base.stem}.{engine}{base.suffix or '.tsv'}")


# --- the bench ----------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/stt.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, help=f"a folder of WAVs (any rate, any channels) with {REFS}")
    p.add_argument("--keep", type=Path, help="write the generated corpus to this folder and keep it")
    p.add_argument("--engine", action="append", metavar="NAME",
                   help="only this engine (repeat for several); default: every installed offline engine")
    p.add_argument("--hyp", type=Path, metavar="OUT.tsv",
                   help="write file<TAB>hypothesis per clip; other engines than the headline one go to "
                        "OUT.<engine>.tsv")
    p.add_argument("--voices", help=f"comma-separated espeak-ng voices for the generated corpus (default "
                                    f"{','.join(VOICES)}), or 'all': those and every other English voice "
                                    f"espeak-ng lists")
    p.add_argument("--seed", type=int, default=SEED, help=f"the pink noise's seed (default {SEED})")
    p.add_argument("--snr-db", type=float, default=SNR_DB, help=f"speech over noise in the noisy set, dB "
                                                                f"(default {SNR_DB:g})")
    p.add_argument("-v", "--verbose", action="store_true", help="print every clip's reference and hypothesis")
    return p.parse_args(argv)


def choose_engines(asked: list[str] | None) -> list[str]:
    offline = offline_engines()
    if not asked:
        return offline
    for name in asked:
        try:
            entry = lookup("stt", name)
        except ConfigError as exc:
            raise CorpusError(str(exc)) from None
        if name not in offline:
            raise CorpusError(f"{entry.name} needs a model server; this bench measures the offline engines: "
                              f"{', '.join(offline)}")
    return list(dict.fromkeys(asked))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return bench(args)
    except CorpusError as exc:
        print(f"stt bench: {exc}", file=sys.stderr)
        return 2


def bench(args) -> int:
    if args.corpus and args.keep:
        raise CorpusError("--keep writes the generated corpus; with --corpus there is nothing to generate")
    engines = choose_engines(args.engine)
    with tempfile.TemporaryDirectory(prefix="stt-bench-") as tmp:
        if args.corpus:
            folder, label, voice_of = args.corpus, args.corpus.resolve().name, None
        else:
            folder, label = args.keep or Path(tmp), "espeak"
            voices = (VOICES if not args.voices else installed_voices() if args.voices == "all"
                      else tuple(v.strip() for v in args.voices.split(",") if v.strip()))
            t0 = time.perf_counter()
            voice_of = generate_corpus(folder, voices, args.seed, args.snr_db)
            print(f"corpus: {len(voice_of)} clips generated in {time.perf_counter() - t0:.1f} s"
                  f"{f' in {folder}' if args.keep else ''}")
        clips, notes = load_corpus(folder, voice_of)
    for note in notes:
        print(f"note: {note}")
    groups = sorted({c.group for c in clips}, key=GROUP_ORDER.index)
    audio_s = sum(c.seconds for c in clips)
    print(f"corpus {label}: {len(clips)} clips, {audio_s:.0f} s of audio, sets "
          + ", ".join(f"{g} {sum(c.group == g for c in clips)}" for g in groups))

    default = HostConfig().stt.backend
    ran: dict[str, list[Result]] = {}
    for name in engines:
        t0 = time.perf_counter()
        stt, built, why = load_engine(name)
        if stt is None:
            if name == default and built:
                default = built  # what build_stage(HostConfig().stt) gives on this machine
            print(f"note: {name} is not available here, skipped: {why}")
            continue
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ran[name] = run_engine(stt, clips)
        del stt
        print(f"{name}: loaded in {load_s:.1f} s, {len(clips)} clips in {time.perf_counter() - t0:.1f} s")
    if not ran:
        which = f"{engines[0]} cannot" if len(engines) == 1 else f"none of {', '.join(engines)} can"
        raise CorpusError(f"{which} run here (see the notes above); 'make bootstrap' installs the offline "
                          f"engines where they can")
    headline = default if default in ran else next(iter(ran))

    for name, results in ran.items():
        for r in results:
            if r.failed:
                print(f"note: {name} failed on {r.clip.file}: {r.failed}")
            if args.verbose:
                print(f"{name} {r.clip.file} wer={wer_percent(r.clip.reference, r.hypothesis):.0f}\n"
                      f"  ref: {r.clip.reference}\n  hyp: {r.hypothesis}")
    print()
    rows = []
    for name, results in ran.items():
        by_group = scores(results, lambda r: r.clip.group)
        rows += [(name, g, by_group[g]) for g in groups]
        if len(groups) > 1:
            rows.append((name, "whole corpus", scores(results, lambda r: "")[""]))
    print("\n".join(table(rows, "set")))
    if voice_of:
        rows = []
        for name, results in ran.items():
            by_voice = scores(results, lambda r: r.clip.voice)
            rows += [(name, v, by_voice[v]) for v in dict.fromkeys(voice_of.values()) if v in by_voice]
        print()
        print("\n".join(table(rows, "voice (both sets)")))
    if args.hyp:
        for name, results in ran.items():
            path = hyp_path(args.hyp, name, headline)
            write_hyp(path, results)
            print(f"hypotheses of {name}: {path}")
    print()
    for name, results in ran.items():
        by_group = scores(results, lambda r: r.clip.group)
        print(f"{name} {label} " + " ".join(f"{g} wer={by_group[g].wer:.1f}" for g in groups))
    whole = scores(ran[headline], lambda r: "")[""]
    print(f"engine={headline} wer={whole.wer:.1f} cpu_per_audio_s={whole.cpu_per_audio_s:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
