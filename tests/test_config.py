"""Bad configuration gets an error that names the file, the key, the value and the rule."""
import pytest

from host.config import StageConfig, load_host_config
from skull.config import load_skull_config
from skull.core.errors import ConfigError


def _write(tmp_path, text, name="skull.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_without_a_file():
    cfg = load_skull_config(None)
    assert cfg.calibration.closed_us == 1300 and cfg.link.url == ""  # empty: the skull finds its host (skull.discovery)


@pytest.mark.parametrize("text, words", [
    ("[calibration]\nopen_us = 3000\n", ["[calibration]: open_us = 3000.0", "500..2500"]),
    ("[calibration]\nclosed_us = 'low'\n", ["[calibration]: closed_us = 'low'", "wrong type"]),
    ("[link]\nurl = 'http://x'\n", ["[link]: url = 'http://x'", "ws://"]),
    ("[link]\nname = 'Mr Bones'\n", ["[link]: name = 'Mr Bones'", "letters, digits", "the host refuses"]),
    ("[pins]\nbutton = 18\n", ["[pins]: button", "three different pins"]),
    ("[jaw]\nframe_rate = 50\n", ["[jaw]: unknown key 'frame_rate'", "frame_hz"]),
    ("[jaww]\n", ["unknown key 'jaww'"]),
    ("[offline]\nmax_mb = 0\n", ["[offline]: max_mb = 0.0", "1..512 MB"]),
    ("[offline]\napology = ''\n", ["[offline]: apology", "1..300 characters"]),
    ("[idle]\nquiet_hours = '10pm-8am'\n", ["[idle]: quiet_hours = '10pm-8am'", "HH:MM-HH:MM"]),
    ("[idle]\nattract_every_min = 0.01\n", ["[idle]: attract_every_min", "0 (off) or 0.1..1440"]),
    ("[idle]\nbreathe = true\n", ["[idle]: unknown key 'breathe'", "led_breathe"]),
    ("this is not toml", ["not valid TOML"]),
])
def test_bad_skull_config_is_named(tmp_path, text, words):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_skull_config(path)
    for w in words:
        assert w in str(e.value)
    assert str(path) in str(e.value)


def test_calibration_profile_file_is_used(tmp_path):
    (tmp_path / "cal.toml").write_text("[servo]\nclosed_us = 1200\nopen_us = 1700\nlead_ms = 40\n")
    cfg = load_skull_config(_write(tmp_path, "[jaw]\ncalibration = 'cal.toml'\n"))
    assert (cfg.calibration.closed_us, cfg.calibration.open_us, cfg.calibration.lead_ms) == (1200, 1700, 40)


def test_host_config_stage_and_range(tmp_path):
    cfg = load_host_config(_write(tmp_path, "[tts.espeak-ng]\nvoice = 'en-gb'\n", "host.toml"))
    assert cfg.tts.settings.voice == "en-gb" and cfg.tts.backend == "espeak-ng" and cfg.tts.timeout_s == 20.0
    with pytest.raises(ConfigError, match=r"\[server\]: port = 70000"):
        load_host_config(_write(tmp_path, "[server]\nport = 70000\n", "host.toml"))


SIDE_BY_SIDE = """
[tts]
backend = "espeak-ng"
timeout_s = 8
retries = 0

[tts.espeak-ng]
voice = "en-gb"

[tts.piper]
url = "http://127.0.0.1:5000"
voice = "en_GB-alan-medium"
"""


def test_backend_tables_side_by_side_switch_with_one_key(tmp_path):
    cfg = load_host_config(_write(tmp_path, SIDE_BY_SIDE, "host.toml"))
    assert (cfg.tts.backend, cfg.tts.settings.voice, cfg.tts.timeout_s, cfg.tts.retries) == ("espeak-ng", "en-gb", 8, 0)
    cfg = load_host_config(_write(tmp_path, SIDE_BY_SIDE.replace('"espeak-ng"', '"piper"'), "host.toml"))
    assert (cfg.tts.backend, cfg.tts.settings.url, cfg.tts.settings.voice) == \
        ("piper", "http://127.0.0.1:5000", "en_GB-alan-medium")
    # the table of the backend not in use is checked all the same
    with pytest.raises(ConfigError, match=r"\[tts.piper\]: speed = 9.0 is out of range"):
        load_host_config(_write(tmp_path, SIDE_BY_SIDE + "speed = 9\n", "host.toml"))


@pytest.mark.parametrize("text, words", [
    # a key in the wrong backend's table
    ("[tts]\nbackend = 'piper'\n[tts.piper]\nurl = 'http://127.0.0.1:5000'\nspeaker_wav = 'skull'\n",
     ["[tts.piper]: unknown key 'speaker_wav'; known keys: url, urls, api_key, connect_timeout_s, voice, speed, api, "
      "options"]),
    # a backend key written flat in the stage table
    ("[tts]\nbackend = 'piper'\nurl = 'http://127.0.0.1:5000'\n",
     ["[tts]: url is a setting of the backend", "it belongs in [tts.<backend>], here [tts.piper]",
      "[tts] itself takes only backend, timeout_s, retries"]),
    ("[tts]\nvoice = 'en-gb'\n", ["[tts]: voice is a setting of the backend", "here [tts.espeak-ng]"]),
    ("[tts]\nbackend = 'openai'\nspeaker_wav = 'skull'\n", ["[tts]: speaker_wav is a setting", "here [tts.xtts]"]),
    # a dotted backend name left unquoted
    ('[stt]\nbackend = "whisper.cpp"\n[stt.whisper.cpp]\nurl = "http://127.0.0.1:8081"\n',
     ["[stt.whisper.cpp]: there is no backend 'whisper'", 'quote the backend\'s name: [stt."whisper.cpp"]']),
    ("[tts.pipr]\nurl = 'http://127.0.0.1:5000'\n",
     ["[tts.pipr]: no tts backend is called 'pipr'; choose one of espeak-ng, openai, piper, xtts"]),
    ("[tts]\nbackend = 'kokoro'\n", ["[tts]: backend = 'kokoro'", "choose one of espeak-ng, openai, piper, xtts"]),
    ("[vision]\nbackend = 'llava'\n", ["choose one of opencv, openai-chat, ollama, reply, none"]),
    ("[tts]\nbackend = 'piper'\n", ["[tts.piper]: url = ''", "needs the server's address, e.g. http://127.0.0.1:5000"]),
    ("[reply]\nbackend = 'ollama'\n[reply.ollama]\nurl = 'http://127.0.0.1:11434'\n",
     ["[reply.ollama]: model = ''", "ollama needs a model"]),
    ("[tts.piper]\nurl = 'http://x'\nspeed = 'fast'\n", ["[tts.piper]: speed = 'fast' has the wrong type"]),
    ("[reply]\ntimeout_s = 0\n", ["[reply]: timeout_s = 0.0 is out of range"]),
    ("[tts]\nfrobnicate = 1\n", ["[tts]: unknown key 'frobnicate'; known keys: backend, timeout_s, retries"]),
])
def test_bad_host_stage_config_is_named(tmp_path, text, words):
    path = _write(tmp_path, text, "host.toml")
    with pytest.raises(ConfigError) as e:
        load_host_config(path)
    for w in words:
        assert w in str(e.value)
    assert str(e.value).startswith(f"{path} [")


def test_stage_config_made_in_python_is_checked_the_same_way():
    cfg = StageConfig.of("tts", "openai", timeout_s=5, url="http://127.0.0.1:8880", voice="bm_george")
    assert (cfg.backend, cfg.timeout_s, cfg.retries, cfg.settings.voice, cfg.settings.model) == \
        ("openai", 5.0, 1, "bm_george", "tts-1")
    with pytest.raises(ConfigError, match=r"\[tts.openai\]: unknown key 'speaker_wav'; known keys: url, urls, api_key"):
        StageConfig.of("tts", "openai", url="http://127.0.0.1:8880", speaker_wav="skull")
    with pytest.raises(ConfigError, match=r'\[stt."whisper.cpp"\]: url = \'\''):
        StageConfig.of("stt", "whisper.cpp")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_skull_config(tmp_path / "absent.toml")


def test_shipped_example_configs_load():
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    cfg = load_skull_config(root / "skull.example.toml")
    assert cfg.calibration.closed_us == 1300.0  # read through [jaw] calibration = calibration/default.toml
    assert load_host_config(root / "host" / "examples" / "embedded.toml").reply.backend == "jokes"


def test_calibration_is_resolved_beside_the_config_file_not_the_current_folder(tmp_path, monkeypatch):
    """Names, [jaw] calibration and the default profile are all found next to skull.toml,
    wherever the command is run from; --calibration NAME beats [jaw] calibration."""
    from skull.config import calibration_dir
    show = tmp_path / "show"
    (show / "calibration").mkdir(parents=True)
    (show / "calibration" / "default.toml").write_text("[servo]\nclosed_us = 1250\nopen_us = 1750\n")
    (show / "calibration" / "wide.toml").write_text("[servo]\nclosed_us = 1100\nopen_us = 1900\n")
    config = _write(show, "[link]\nname = 'bones'\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert calibration_dir(config) == show / "calibration"
    cfg = load_skull_config(config)
    assert (cfg.calibration.closed_us, cfg.jaw.calibration) == (1250, str(show / "calibration" / "default.toml"))
    assert load_skull_config(config, calibration="wide").calibration.open_us == 1900
    with_table = _write(show, "[jaw]\ncalibration = 'calibration/wide.toml'\n", "table.toml")
    assert load_skull_config(with_table).calibration.closed_us == 1100
    assert load_skull_config(with_table, calibration="default").calibration.closed_us == 1250
    with pytest.raises(ConfigError, match=r"calibration profile calibration/nope.toml \(--calibration\) is not in "
                                          r"any of .*show/calibration/nope.toml, .*; make it with skull "
                                          "calibrate --name nope --config"):
        load_skull_config(config, calibration="nope")
    own = _write(show, "[calibration]\nclosed_us = 1400\nopen_us = 1600\n", "own.toml")
    assert load_skull_config(own).calibration.closed_us == 1400  # its own table beats default.toml
