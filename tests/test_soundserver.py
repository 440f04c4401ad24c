"""The private sound servers the device bench plays through (bench/soundserver.py): a null sink
as the default output, reachable by a client given only the exported environment, and nothing
left behind. Each is skipped, with the reason, where it cannot run."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.soundserver import SERVERS, PulseServer  # noqa: E402


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_a_client_given_the_environment_plays_to_the_null_sink(name):
    cls = SERVERS[name]
    ok = cls.available()
    if not ok:
        pytest.skip(ok.why)
    before = os.environ.get("PULSE_SERVER")
    with cls() as server:
        folder = server.dir
        server.export()
        assert os.environ["PULSE_SERVER"] == server.server
        out = subprocess.run(["pactl", "get-default-sink"], capture_output=True, text=True, timeout=5)
        assert out.stdout.strip() == "skull_null"
        sources = subprocess.run(["pactl", "list", "short", "sources"], capture_output=True, text=True, timeout=5)
        assert "skull_null.monitor" in sources.stdout
    assert os.environ.get("PULSE_SERVER") == before
    assert not folder.exists()
    server.stop()  # twice is fine


def test_without_pulseaudio_it_names_the_packages(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    ok = PulseServer.available()
    assert not ok
    assert "pulseaudio" in ok.why and "pulseaudio-utils" in ok.why and "bootstrap" in ok.why
