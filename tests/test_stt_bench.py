"""The speech-to-text bench: its word error rate counts what a reader would count, its noisy set
is pink noise at the stated SNR, and it runs on any folder of WAVs with a refs.tsv, writing each
clip's hypothesis and refusing a folder without references by name."""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from skull.core.wav import read_wav, write_wav

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "stt.py"


@pytest.fixture(scope="module")
def stt_bench():
    spec = importlib.util.spec_from_file_location("stt_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["stt_bench"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["stt_bench"]


def run_bench(*args):
    return subprocess.run([sys.executable, str(BENCH), *map(str, args)], capture_output=True, text=True, timeout=120)


# --- the measure ---------------------------------------------------------------------------------

def test_words_ignore_case_and_punctuation(stt_bench):
    assert stt_bench.words("Hey, Skull! Don't you know me?") == ["hey", "skull", "dont", "you", "know", "me"]
    assert stt_bench.words("A well-known ghost\u2019s trick...") == ["a", "well", "known", "ghosts", "trick"]
    assert stt_bench.words(" ... ") == []


def test_word_errors_count_substitutions_deletions_and_insertions(stt_bench):
    w = stt_bench.words
    assert stt_bench.word_errors(w("do you like my costume"), w("Do you like my costume?")) == (0, 0, 0)
    assert stt_bench.word_errors(w("do you like my costume"), w("do you lick my costume")) == (1, 0, 0)
    assert stt_bench.word_errors(w("do you like my costume"), w("do you my costume")) == (0, 1, 0)
    assert stt_bench.word_errors(w("do you like my costume"), w("so do you like my new costume")) == (0, 0, 2)
    assert stt_bench.word_errors(w("hey skull"), []) == (0, 2, 0)
    assert stt_bench.word_errors([], w("boo")) == (0, 0, 1)
    # "Face curl" for "Hey skull": two substitutions, whatever the alignment
    assert stt_bench.wer_percent("Hey skull, what are you?", "Face curl, what are you?") == pytest.approx(40.0)


def test_noisy_copy_is_pink_noise_at_the_stated_snr_and_reproducible(stt_bench):
    rate = stt_bench.RATE
    t = np.arange(3 * rate) / rate
    speech = (0.3 * np.sin(2 * np.pi * 220 * t) * (t > 0.5) * (t < 2.5)).astype(np.float32)
    noisy = stt_bench.add_noise(speech, 10.0, np.random.default_rng([7, 1]))
    noise = noisy.astype(np.float64) - speech
    level = stt_bench.speech_rms(speech)
    assert level == pytest.approx(0.3 / np.sqrt(2), rel=0.01)  # the tone's RMS, not diluted by the silence
    assert 20 * np.log10(level / np.sqrt(np.mean(noise ** 2))) == pytest.approx(10.0, abs=0.2)
    assert np.array_equal(noisy, stt_bench.add_noise(speech, 10.0, np.random.default_rng([7, 1])))
    assert not np.array_equal(noisy, stt_bench.add_noise(speech, 10.0, np.random.default_rng([7, 2])))
    # pink: each octave holds about the same power (white noise would double it per octave)
    power = np.abs(np.fft.rfft(noise)) ** 2
    f = np.fft.rfftfreq(len(noise), 1 / rate)
    bands = [power[(f >= lo) & (f < 2 * lo)].sum() for lo in (250, 500, 1000, 2000, 4000)]
    assert max(bands) / min(bands) < 1.5


# --- the bench on a folder -------------------------------------------------------------------------

SAID = {
    "hello.wav": "Hello skull, do you like my vampire costume?",
    "joke.wav": "Can you tell me a joke about ghosts?",
    "sub/candy.wav": "What is your favorite kind of candy?",
}


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng makes the clips")
def test_bench_transcribes_a_folder_of_wavs_with_refs(tmp_path):
    pytest.importorskip("moonshine_voice")
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    for file, text in SAID.items():
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(corpus / file), text], check=True)
    # any rate and channel count: one clip as 44.1 kHz stereo
    audio = read_wav(corpus / "joke.wav")
    stereo = np.repeat(audio.samples, 2, axis=1)
    from skull.core.wav import resample
    write_wav(corpus / "joke.wav", resample(stereo, audio.rate, 44100), 44100)
    subprocess.run(["espeak-ng", "-v", "en-gb", "-w", str(corpus / "stray.wav"), "not in the references"], check=True)
    (corpus / "refs.tsv").write_text("".join(f"{f}\t{t}\n" for f, t in SAID.items()), encoding="utf-8")

    out = run_bench("--corpus", corpus, "--hyp", tmp_path / "out.tsv", "--engine", "moonshine")
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"engine=moonshine wer=(\d+\.\d) cpu_per_audio_s=(\d+\.\d{3})", last)
    assert m, last
    assert float(m[1]) <= 50 and 0 < float(m[2]) < 2
    assert "stray.wav" in out.stdout and "not in refs.tsv" in out.stdout
    assert re.search(r"^moonshine corpus all wer=\d+\.\d$", out.stdout, re.M), out.stdout

    lines = (tmp_path / "out.tsv").read_text(encoding="utf-8").splitlines()
    hyps = dict(line.split("\t") for line in lines)
    assert sorted(hyps) == sorted(SAID)  # one line per referenced clip, the stray one left out
    for file, hyp in hyps.items():
        heard, said = set(re.findall(r"[a-z]+", hyp.lower())), re.findall(r"[a-z]+", SAID[file].lower())
        assert sum(w in heard for w in said) >= len(said) / 2, (file, hyp)


def test_bench_refuses_a_folder_without_refs(tmp_path):
    write_wav(tmp_path / "hello.wav", np.zeros(16000, np.float32), 16000)
    out = run_bench("--corpus", tmp_path, "--engine", "pocketsphinx")
    assert out.returncode == 2
    assert "refs.tsv" in out.stderr and "Traceback" not in out.stderr
    out = run_bench("--corpus", tmp_path / "nowhere")
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_bench_refuses_an_engine_that_needs_a_server(tmp_path):
    out = run_bench("--corpus", tmp_path, "--engine", "openai")
    assert out.returncode == 2
    assert "needs a model server" in out.stderr and "moonshine" in out.stderr
