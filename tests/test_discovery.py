"""Skulls find their host over mDNS (zeroconf) on this machine: a real `skull host` advertising,
a real `skull run` without --url browsing, multicast on this machine's own interfaces."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from host.config import ServerConfig
from host.discovery import Advertiser
from skull.config import LinkConfig, load_skull_config
from skull.core.data import bundled
from skull.core.errors import ConfigError

from conftest import Watched

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "discovery-secret"


class Proc(Watched):
    WAIT_S = 30.0

    def __init__(self, args: list[str], env: dict, cwd: Path):
        self.p = subprocess.Popen([sys.executable, "-m", "skull", *args], cwd=cwd, env=env, text=True,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._watch(str(args), self.p.stdout, self.p.stderr)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


@pytest.fixture
def started(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_CONFIG_HOME=str(tmp_path / "config"),
               XDG_STATE_HOME=str(tmp_path / "state"), XDG_RUNTIME_DIR=str(tmp_path / "run"), SKULL_TOKEN=TOKEN)
    for key in ("SKULL_CONFIG", "SKULL_HOST_CONFIG"):
        env.pop(key, None)
    (tmp_path / "run").mkdir(mode=0o700)
    procs: list[Proc] = []

    def start(*args: str) -> Proc:
        procs.append(Proc(list(args), env, tmp_path))
        return procs[-1]
    yield start
    for proc in reversed(procs):
        proc.stop()


def test_skull_run_without_url_finds_the_host_over_mdns_and_follows_it_to_a_new_address(tmp_path, started):
    """The host listens beyond this machine (0.0.0.0, with a token) and advertises itself under
    its name; the skull, given only that name, says which host it chose and connects. The host
    comes back on another port: the skull looks again before reconnecting and follows it."""
    name = f"crypt-{uuid.uuid4().hex[:8]}"  # a host of this test only, whatever else runs here
    (tmp_path / "host.toml").write_text(f'[server]\nname = "{name}"\n[embedded]\nworkers = 0\n'
                                        f'[vision]\nbackend = "none"\n')
    (tmp_path / "skull.toml").write_text(f'[link]\nhost_name = "{name}"\ndiscovery_wait_s = 2.0\n'
                                         f'reconnect_max_s = 0.5\n')
    first, second = _free_port(), _free_port()
    host = started("host", "--config", "host.toml", "--bind", "0.0.0.0", "--port", str(first))
    host.wait_for(rf"advertised over mDNS as '{name}'")
    skull = started("run", "--sim", "--no-audio", "--mic-file", str(bundled("question.wav")), "--config", "skull.toml")
    chosen = skull.wait_for(rf"connecting to (ws://[\d.]+):{first}: host '{name}', found over mDNS")
    skull.wait_for(rf"connected to {re.escape(chosen.group(1))}:{first} as mr-bones")
    host.wait_for(r"skull mr-bones connected")
    host.stop()
    t0 = time.monotonic()
    moved = started("host", "--config", "host.toml", "--bind", "0.0.0.0", "--port", str(second))
    moved.wait_for(rf"advertised over mDNS as '{name}'")
    skull.wait_for(rf"connected to ws://[\d.]+:{second} as mr-bones again")
    assert time.monotonic() - t0 < 20
    assert "Traceback" not in skull.text + host.text + moved.text


def test_a_host_on_loopback_is_not_advertised_and_the_skull_finds_it_at_the_default():
    """A host bound to 127.0.0.1 is for this machine only: it says why it is not advertised, and
    an empty [link] url means a host here at ws://127.0.0.1:8765 before any mDNS."""
    local = Advertiser(ServerConfig(), 8765)
    assert "this machine only" in local.wanted() and "ws://127.0.0.1:8765" in local.wanted()
    assert Advertiser(ServerConfig(bind="0.0.0.0", discovery=False), 8765).wanted() == "[server] discovery is off"
    assert Advertiser(ServerConfig(bind="0.0.0.0"), 8765).wanted() is None
    assert load_skull_config(None).link.url == ""


@pytest.mark.parametrize("table, words", [
    ('url = "http://host:8765"', "must start with ws:// or wss://, or be empty"),
    ("discovery_wait_s = 0", "discovery_wait_s = 0.0 is out of range: must be 0.2..60 s"),
    ("discovery = 1", "discovery = 1 has the wrong type: it must be true or false")])
def test_link_discovery_keys_are_checked(tmp_path, table, words):
    path = tmp_path / "skull.toml"
    path.write_text(f"[link]\n{table}\n")
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_skull_config(path)


def test_the_host_name_is_checked():
    with pytest.raises(ConfigError, match=re.escape("name = 'a.b' is out of range: at most 63 characters and no dot")):
        from skull.core.validate import build
        build(ServerConfig, {"name": "a.b"}, "host.toml", "server")
    assert LinkConfig(host_name="crypt").discovery
