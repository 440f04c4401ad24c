"""The host's ears: the embedded speech-to-text engines on real speech made by espeak-ng."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from host.backends.stt import MoonshineSettings
from host.build import build_stage
from host.config import HostConfig, load_stage
from skull.core.data import bundled
from skull.core.errors import ConfigError
from skull.core.wav import read_wav, to_mono_rate

moonshine = pytest.importorskip("moonshine_voice", reason="the ears extra is not installed on this machine")


def words(text: str) -> list[str]:
    return "".join(c for c in text.lower() if c.isalnum() or c.isspace()).split()


def hear(stt, path) -> str:
    return stt.transcribe(to_mono_rate(read_wav(path), 16000), 16000)


def test_the_default_ears_are_moonshine_and_hear_the_bundled_question_word_for_word(stereo_question):
    stt = build_stage(HostConfig().stt)
    assert stt.name == "moonshine" and "tiny-en" in stt.check()
    assert words(hear(stt, bundled("question.wav"))) == ["do", "you", "like", "my", "costume"]
    assert words(hear(stt, stereo_question)) == ["do", "you", "like", "my", "costume"]  # 22.05 kHz stereo


def test_a_question_in_another_voice_and_rate(tmp_path):
    wav = tmp_path / "hat.wav"
    subprocess.run(["espeak-ng", "-v", "en-gb", "-s", "150", "-w", str(tmp_path / "mono.wav"),
                    "I just came from a party. What do you think of my hat?"], check=True)
    subprocess.run(["sox", str(tmp_path / "mono.wav"), "-r", "22050", "-c", "2", str(wav)], check=True)
    heard = words(hear(build_stage(HostConfig().stt), wav))
    assert heard[:6] == ["i", "just", "came", "from", "a", "party"] and heard[6:11] == ["what", "do", "you", "think",
                                                                                         "of"]


def test_silence_and_a_click_are_heard_as_nothing():
    import numpy as np
    stt = build_stage(HostConfig().stt)
    assert stt.transcribe(np.zeros(800, np.float32), 16000) == ""  # 50 ms: too short to be a word


def test_where_moonshine_cannot_load_pocketsphinx_hears_and_the_log_says_why(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "moonshine_voice", None)  # as on a machine without its wheel
    with caplog.at_level(logging.WARNING, logger="host.build"):
        stt = build_stage(HostConfig().stt)
    assert stt.name == "pocketsphinx"
    said = caplog.text
    assert "[stt.moonshine]" in said and "moonshine-voice cannot load" in said and "uses pocketsphinx instead" in said
    assert "costume" in hear(stt, bundled("question.wav"))


def test_pocketsphinx_is_still_a_named_backend():
    stt = build_stage(load_stage("stt", {"backend": "pocketsphinx"}, "host.toml"))
    assert stt.name == "pocketsphinx" and "costume" in hear(stt, bundled("question.wav"))


def test_a_wrong_moonshine_model_folder_or_arch_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"\[stt.moonshine\]: model = .*nope.* must be a folder"):
        load_stage("stt", {"backend": "moonshine", "moonshine": {"model": str(tmp_path / "nope")}}, "host.toml")
    with pytest.raises(ConfigError, match=r"arch = 'huge' .*tiny, base"):
        load_stage("stt", {"backend": "moonshine", "moonshine": {"arch": "huge"}}, "host.toml")
    # a folder without a model in it: the load fails, the reason is logged, pocketsphinx hears
    cfg = load_stage("stt", {"backend": "moonshine", "moonshine": {"model": str(tmp_path)}}, "host.toml")
    assert isinstance(cfg.settings, MoonshineSettings)
    assert build_stage(cfg).name == "pocketsphinx"


# --- listening while the visitor talks ---------------------------------------------------------

@pytest.fixture(scope="module")
def two_sentences(tmp_path_factory):
    from host.fakes.workload import question_wav
    return question_wav(tmp_path_factory.mktemp("q") / "two-sentences.wav")


def _turn(host_config, backends, question, segmented: bool):
    """One turn of a simulated skull asking ``question``; the record and the host's events."""
    import dataclasses
    from conftest import one_turn
    config = dataclasses.replace(host_config, stt=dataclasses.replace(host_config.stt, segmented=segmented))
    seen = []
    _, rec = one_turn(config, backends, question=question, speed=2.0, events=seen)
    return rec, seen


def test_segmented_hears_what_the_whole_question_says_and_leaves_only_the_tail(host_config, backends, two_sentences):
    from host import events as ev
    whole, whole_seen = _turn(host_config, backends, two_sentences, segmented=False)
    parts, seen = _turn(host_config, backends, two_sentences, segmented=True)
    assert whole.outcome == parts.outcome == "answered"
    assert words(parts.transcript) == words(whole.transcript)
    assert "costume" in words(parts.transcript) and "party" in words(parts.transcript)
    kinds = [type(e) for e in seen]
    stopped = kinds.index(ev.Stopped)
    # the first sentence was heard while the visitor was still talking
    interim = [e for e in seen[:stopped] if isinstance(e, ev.Interim)]
    assert ev.SpeechStarted in kinds[:stopped] and interim and "party" in words(interim[0].text)
    hearing = next(e for e in seen if isinstance(e, ev.Hearing))
    assert hearing.segments == 2 and hearing.before_release == 1
    assert 0 < hearing.tail_audio_s < 0.5 * hearing.audio_s
    assert parts.timings_ms["stt_tail_audio"] == pytest.approx(hearing.tail_audio_s * 1000)
    # whole: one stretch of speech, its silence trimmed, all of it after the release
    whole_hearing = next(e for e in whole_seen if isinstance(e, ev.Hearing))
    assert whole_hearing.before_release == 0 and whole_hearing.tail_audio_s <= whole_hearing.audio_s
    assert parts.timings_ms["stt"] < whole.timings_ms["stt"]


def test_a_question_with_no_speech_in_it_is_transcribed_whole(host_config, backends, tmp_path):
    import numpy as np
    from host import events as ev
    from skull.core.wav import write_wav
    rng = np.random.default_rng(3)
    hum = tmp_path / "hum.wav"
    t = np.arange(16000 * 2) / 16000
    write_wav(hum, (0.05 * np.sin(2 * np.pi * 50 * t) + 0.01 * rng.normal(size=len(t))).astype(np.float32), 16000)
    rec, seen = _turn(host_config, backends, hum, segmented=True)
    hearing = next(e for e in seen if isinstance(e, ev.Hearing))
    assert hearing.segments == 0 and hearing.tail_audio_s == pytest.approx(hearing.audio_s, abs=0.05)
    assert rec.outcome == "answered"  # the skull still says something (the reply to nothing heard)


def test_past_voice_activity_max_questions_at_once_a_question_is_transcribed_whole(host_config, backends):
    import dataclasses
    from conftest import one_turn
    from host import events as ev
    from host.listen import _give_back, listening, take_model
    first = take_model(1)
    assert first is not None and take_model(1) is None and listening() == 1  # one at a time: no second
    _give_back(first)
    assert listening() == 0 and take_model(1) is first  # given back, the model is kept for the next question
    _give_back(first)
    from host.listen import let_go
    assert let_go(keep=0) >= 1 and take_model(1) is not first  # let go: the next question loads its own
    _give_back(None)
    config = dataclasses.replace(host_config, stt=dataclasses.replace(host_config.stt, voice_activity_max=0))
    seen = []
    _, rec = one_turn(config, backends, speed=3.0, events=seen)
    hearing = next(e for e in seen if isinstance(e, ev.Hearing))
    assert rec.outcome == "answered" and words(rec.transcript) == ["do", "you", "like", "my", "costume"]
    assert hearing.segments == 0 and hearing.tail_audio_s == pytest.approx(hearing.audio_s, abs=0.05)
    with pytest.raises(ConfigError, match=r"\[stt\]: voice_activity_max = -1 is out of range: must be \"auto\" or 0..1000"):
        load_stage("stt", {"voice_activity_max": -1}, "host.toml")
    # "auto": every admitted question where the model computes outside the GIL, 8 where it holds it
    stt = load_stage("stt", {}, "host.toml")
    assert stt.voice_activity_max == "auto"
    assert stt.listen_at_once(64, "onnx") == 64 and stt.listen_at_once(64, "ggml") == 8
    assert load_stage("stt", {"voice_activity_max": 3}, "host.toml").listen_at_once(64, "onnx") == 3


def test_moonshine_is_given_half_a_second_of_silence_after_the_last_word_whatever_the_clip_has():
    import numpy as np
    from host.backends.stt import TAIL_S, quiet_tail
    rate = 16000
    t = np.arange(rate) / rate
    word = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)  # one second of sound
    pad = int(TAIL_S * rate)
    for silence_s in (0.0, 0.3, 0.5, 1.2):
        clip = np.concatenate([np.zeros(rate // 4, np.float32), word, np.zeros(int(silence_s * rate), np.float32)])
        out = quiet_tail(clip, rate)
        assert len(out) == rate // 4 + rate + pad, silence_s  # the lead kept, exactly TAIL_S after the word
        assert np.array_equal(out[:rate // 4 + rate], clip[:rate // 4 + rate])
        assert not out[rate // 4 + rate:].any()
    rng = np.random.default_rng(1)
    noisy = np.concatenate([word, 0.2 * rng.standard_normal(rate // 2).astype(np.float32)])  # a loud room
    assert np.array_equal(quiet_tail(noisy, rate)[:len(noisy)], noisy) and len(quiet_tail(noisy, rate)) == len(noisy) + pad
    assert len(quiet_tail(np.zeros(rate, np.float32), rate)) == rate + pad


def test_moonshine_hears_the_samples_buffer_as_its_own_list_call_hears_them():
    from host.backends.stt import quiet_tail
    stt = build_stage(HostConfig().stt)
    x = quiet_tail(to_mono_rate(read_wav(bundled("question.wav")), 16000), 16000)
    t = stt._transcriber
    assert t._handle is not None and hasattr(t, "_lib") and hasattr(t, "_parse_transcript")  # the buffer's way is taken
    own = t.transcribe_without_streaming(x.tolist(), 16000)
    ours = stt._transcribe(x)
    assert [line.text for line in ours.lines] == [line.text for line in own.lines] != []
    assert stt._transcribe(x[: len(x) // 3]).lines != ours.lines  # the length given is the buffer's own
    click = 0.05 * x  # a quiet visitor...
    click[100:260] = 1.0  # ...and a click far louder than any word: the words still count as sound
    assert abs(len(quiet_tail(click, 16000)) - len(x)) <= 320  # within two 10 ms frames, nothing cut
