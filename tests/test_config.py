"""Bad configuration gets an error that names the file, the key, the value and the rule."""
import pytest

from host.config import load_host_config
from skull.config import load_skull_config
from skull.core.errors import ConfigError


def _write(tmp_path, text, name="skull.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_without_a_file():
    cfg = load_skull_config(None)
    assert cfg.calibration.closed_us == 1300 and cfg.link.url.startswith("ws://")


@pytest.mark.parametrize("text, words", [
    ("[calibration]\nopen_us = 3000\n", ["[calibration]: open_us = 3000.0", "500..2500"]),
    ("[calibration]\nclosed_us = 'low'\n", ["[calibration]: closed_us = 'low'", "wrong type"]),
    ("[link]\nurl = 'http://x'\n", ["[link]: url = 'http://x'", "ws://"]),
    ("[pins]\nbutton = 18\n", ["[pins]: button", "three different pins"]),
    ("[jaw]\nframe_rate = 50\n", ["[jaw]: unknown key 'frame_rate'", "frame_hz"]),
    ("[jaww]\n", ["unknown key 'jaww'"]),
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
    cfg = load_host_config(_write(tmp_path, "[tts]\nvoice = 'en-gb'\n", "host.toml"))
    assert cfg.tts.voice == "en-gb" and cfg.tts.backend == "espeak-ng"
    with pytest.raises(ConfigError, match=r"\[server\]: port = 70000"):
        load_host_config(_write(tmp_path, "[server]\nport = 70000\n", "host.toml"))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_skull_config(tmp_path / "absent.toml")


def test_shipped_example_configs_load():
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    cfg = load_skull_config(root / "skull.example.toml")
    assert cfg.calibration.closed_us == 1300.0  # read through [jaw] calibration = calibration/default.toml
    assert load_host_config(root / "host" / "examples" / "embedded.toml").reply.backend == "jokes"
