"""espeak-ng's speaker processes (host.espeak) against the espeak-ng program they replace: the same
voice, the sentence spoken at once, several at a time, failures named, the program where the
library cannot load."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from host import espeak
from host.backends.registry import BackendContext
from host.backends.tts import EspeakSettings, EspeakTTS
from skull.core.errors import BackendError

SENTENCES = ["Ha! A skull that tells jokes, what next?", "I see a person in a red hat.",
             "Numbers 1,234 and 3.5 percent, spoken plainly."]


def voice(timeout_s: float = 10.0, **settings) -> EspeakTTS:
    return EspeakTTS(EspeakSettings(**settings), BackendContext("tts", timeout_s))


def program(tts: EspeakTTS, text: str) -> np.ndarray:
    speakers, tts.speakers = tts.speakers, None
    try:
        return tts.synthesize(text).samples
    finally:
        tts.speakers = speakers


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0


def test_the_first_sentence_of_a_new_speaker_is_the_programs_sample_for_sample():
    tts = voice()
    for text in SENTENCES[:2]:
        speaker = espeak.Speaker()
        try:
            assert speaker.rate == 22050
            assert np.array_equal(samples(speaker.speak(text, tts.voice, tts.wpm, tts.pitch, 10.0)),
                                  program(tts, text)), text
        finally:
            speaker.close()


def sounds(x: np.ndarray, rate: int = 22050) -> list[tuple[int, int]]:
    """The stretches of sound between pauses, in 10 ms steps: (start, end)."""
    step = rate // 100
    n = len(x) // step
    loud = np.sqrt(np.square(x[:n * step]).reshape(n, step).mean(axis=1)) > 0.01
    edges = np.flatnonzero(np.diff(np.concatenate([[0], loud.astype(np.int8), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def alike(said: np.ndarray, alone: np.ndarray) -> bool:
    """The same sentence in the same time: as much sound within 60 ms (or 5 %) in as many stretches
    within two, as long within 150 ms (a pause after "Ha!" or "?" may fall 100 ms longer, pitch
    periods differently)."""
    a, b = sounds(said), sounds(alone)
    voiced = [sum(e - s for s, e in x) for x in (a, b)]
    return (abs(len(said) - len(alone)) <= 0.15 * 22050 and abs(len(a) - len(b)) <= 2
            and abs(voiced[0] - voiced[1]) <= max(6, 0.05 * voiced[1]))


def test_later_sentences_say_the_same_in_the_same_time():
    """The voice's flutter runs on from one sentence to the next, so later sentences differ from
    the program's in their pitch periods and a pause may fall differently; not in words or length.
    Over a night's sentences nothing builds up."""
    tts = voice()
    assert tts.speakers is not None, "libespeak-ng1 is a dependency of espeak-ng: it is installed here"
    for text in SENTENCES * 2:
        assert alike(tts.synthesize(text).samples, program(tts, text)), text
    assert not alike(tts.synthesize(SENTENCES[0]).samples, program(tts, SENTENCES[1]))  # it tells sentences apart
    for i in range(300):
        tts.synthesize(f"Sentence {i}: boo? Ha! What a night...")
    assert alike(tts.synthesize(SENTENCES[0]).samples, program(tts, SENTENCES[0]))


def test_three_threads_speaking_at_once_each_get_their_own_sentence():
    tts = voice()
    lengths = {text: len(tts.synthesize(text).samples) for text in SENTENCES}
    got, errors = [], []

    def speak(text):
        try:
            for _ in range(4):
                got.append((text, len(tts.synthesize(text).samples)))
        except Exception as exc:  # reported below
            errors.append(exc)
    threads = [threading.Thread(target=speak, args=(t,)) for t in SENTENCES]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(got) == 12
    assert all(abs(n - lengths[text]) < 0.05 * lengths[text] for text, n in got)
    assert 1 <= len(tts.speakers.pids()) <= tts.speakers.size >= 2  # started as the sentences overlapped


def test_a_sentence_past_the_timeout_is_cut_with_a_clear_error_and_the_next_one_is_whole():
    tts = voice(timeout_s=0.001)
    with pytest.raises(BackendError, match=r"tts: espeak-ng took longer than 0.001 s"):
        tts.synthesize("A very long sentence. " * 200)
    tts.timeout_s = 10.0
    for text in SENTENCES:  # nothing of the cut one is left in the next ones
        assert alike(tts.synthesize(text).samples, program(tts, text)), text


def test_voices_and_settings_switch_between_sentences():
    low, fast = voice(), voice(voice="en-gb", speed=2.0, pitch=80)
    slow_s = len(low.synthesize(SENTENCES[0]).samples)
    fast_s = len(fast.synthesize(SENTENCES[0]).samples)
    assert fast_s < 0.7 * slow_s
    assert abs(len(low.synthesize(SENTENCES[0]).samples) - slow_s) < 0.05 * slow_s  # its own settings again
    assert alike(fast.synthesize(SENTENCES[0]).samples, program(fast, SENTENCES[0]))


def test_a_voice_is_taken_by_its_name_or_its_language_as_the_program_takes_it():
    for name in ("en-gb", "en-us+m3", "de+klatt", "English (Great Britain)"):
        tts = voice(voice=name)
        assert tts.voice_problem is None, name
        assert alike(tts.synthesize(SENTENCES[1]).samples, program(tts, SENTENCES[1])), name
    refused = voice(voice="English_(Great_Britain)")  # neither the program nor the library has it
    assert "espeak-ng has no voice 'English_(Great_Britain)'" in refused.voice_problem  # found when it starts
    speaker = espeak.Speaker()
    try:
        with pytest.raises(espeak.SpeakerError, match="espeak-ng has no voice 'English_.Great_Britain.'") as err:
            speaker.speak("Hello.", "English_(Great_Britain)", 155, 35, 5.0)
        assert err.value.kind == "voice" and speaker.alive  # it said why, and speaks on
        assert len(speaker.speak("Hello.", "en-us", 155, 35, 5.0)) > 10000
    finally:
        speaker.close()
    refused.voice_problem = None  # the check at the start passed it: the speaker's refusal is the turn's error
    with pytest.raises(BackendError, match="no voice"):
        refused.synthesize("Hello.")
    assert alike(voice().synthesize(SENTENCES[1]).samples, program(voice(), SENTENCES[1]))  # the speaker goes on


def test_a_speaker_that_dies_is_replaced_unheard_and_one_that_hangs_fails_its_sentence_by_name(caplog):
    tts = voice(timeout_s=2.0)
    tts.speakers = espeak.Speakers(1)
    try:
        (first,) = tts.speakers.pids()
        os.kill(first, signal.SIGKILL)
        tts.speakers._idle.queue[0].proc.wait(5)  # dead before the next sentence
        assert alike(tts.synthesize(SENTENCES[1]).samples, program(tts, SENTENCES[1]))  # said by a new one
        (second,) = tts.speakers.pids()
        assert second != first and "ended while idle (exit code -9)" in caplog.text
        os.kill(second, signal.SIGSTOP)  # alive, but never answers
        t0 = time.monotonic()
        with pytest.raises(BackendError, match=r"tts: the espeak-ng speaker gave no answer in time") as err:
            tts.synthesize(SENTENCES[1])
        assert time.monotonic() - t0 < 4.0 and not err.value.retryable
        assert alike(tts.synthesize(SENTENCES[1]).samples, program(tts, SENTENCES[1]))
        assert second not in tts.speakers.pids()
        with pytest.raises(ProcessLookupError):
            os.kill(second, 0)  # killed and reaped, not left stopped
    finally:
        tts.speakers.close()


def test_a_garbled_request_gets_a_named_error_and_the_speaker_goes_on():
    proc = subprocess.Popen([sys.executable, "-m", "host.espeak"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            cwd=Path(espeak.__file__).parents[1])
    try:
        assert json.loads(proc.stdout.readline())["ready"]
        proc.stdin.write(b"not json\n" + json.dumps({"text": "hi"}).encode() + b"\n")
        proc.stdin.write(json.dumps({"text": "Boo.", "voice": "en-us", "wpm": 155, "pitch": 35,
                                     "timeout_s": 5}).encode() + b"\n")
        proc.stdin.flush()
        for _ in range(2):
            head = json.loads(proc.stdout.readline())
            assert head["kind"] == "failed" and "cannot read" in head["error"]
        head = json.loads(proc.stdout.readline())
        assert head["rate"] == 22050 and len(proc.stdout.read(head["bytes"])) == head["bytes"] > 10000
        proc.stdin.close()
        assert proc.wait(5) == 0  # it ends when the host's end of the pipe closes
    finally:
        proc.kill()
        proc.wait()


def test_without_the_library_the_program_speaks(monkeypatch, caplog):
    monkeypatch.setattr(espeak, "_shared", False)
    monkeypatch.setattr(espeak.Speaker, "__init__", lambda self: (_ for _ in ()).throw(
        espeak.SpeakerError("libespeak-ng cannot be loaded (libespeak-ng.so.1: not found)", "unavailable")))
    with caplog.at_level("INFO", logger="host.espeak"):
        tts = voice()
    assert "libespeak-ng cannot be loaded" in caplog.text and "runs as a program for each sentence" in caplog.text
    assert tts.speakers is None and tts.computes_here and tts.check().startswith(f"embedded ({tts.binary}, ")
    assert len(tts.synthesize(SENTENCES[1]).samples) > 0.5 * 22050


def test_a_speaker_without_the_library_says_why_and_ends(monkeypatch):
    import io
    monkeypatch.setattr(espeak.ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(espeak.ctypes, "CDLL", lambda name: (_ for _ in ()).throw(OSError(f"{name}: not found")))
    out = io.BytesIO()
    assert espeak.serve(io.BytesIO(b""), out) == 1
    head = json.loads(out.getvalue())
    assert head["kind"] == "unavailable" and "libespeak-ng cannot be loaded (libespeak-ng.so.1: not found)" in head["error"]
