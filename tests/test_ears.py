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
