"""Show mode, services: the config lookup order, `skull service install/uninstall` (units
checked by systemd's own `systemd-analyze verify`), and the sd_notify watchdog of `skull run`
and `skull host` against a real unix datagram socket."""
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from skull.config import load_skull_config
from skull.core import sdnotify
from skull.core.errors import ConfigError
from skull.core.places import find_config

ROOT = Path(__file__).resolve().parent.parent
QUESTION = ROOT / "skull" / "data" / "question.wav"


@pytest.fixture
def places(tmp_path, monkeypatch):
    """A user config folder and a system folder of our own; no SKULL_CONFIG."""
    user, system = tmp_path / "xdg", tmp_path / "etc-skull"
    (user / "skull").mkdir(parents=True)
    system.mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(user))
    monkeypatch.delenv("SKULL_CONFIG", raising=False)
    monkeypatch.delenv("SKULL_HOST_CONFIG", raising=False)
    return user / "skull", system


# --- config lookup ---------------------------------------------------------------------------

def test_lookup_order_each_step(places, tmp_path, monkeypatch):
    user, system = places
    none = find_config("skull.toml", system_dir=system)
    assert none.path is None
    assert none.line() == (f"config: built-in defaults (no skull.toml in {user}/ or {system}/; $SKULL_CONFIG is "
                           f"not set)")
    (system / "skull.toml").write_text('[link]\nname = "system"\n')
    assert find_config("skull.toml", system_dir=system).line() == f"config: {system / 'skull.toml'} (system config)"
    (user / "skull.toml").write_text('[link]\nname = "user"\n')
    chosen = find_config("skull.toml", system_dir=system)
    assert chosen.line() == f"config: {user / 'skull.toml'} (user config)"
    assert load_skull_config(chosen.path).link.name == "user"
    env = tmp_path / "env.toml"
    env.write_text('[link]\nname = "env"\n')
    monkeypatch.setenv("SKULL_CONFIG", str(env))
    assert find_config("skull.toml", system_dir=system).line() == f"config: {env} ($SKULL_CONFIG)"
    named = tmp_path / "named.toml"
    named.write_text("")
    assert find_config("skull.toml", str(named), system_dir=system).line() == f"config: {named} (--config)"
    # host.toml has its own variable; skull.toml's does not count for it
    assert find_config("host.toml", system_dir=system).path is None
    (system / "host.toml").write_text("")
    assert find_config("host.toml", system_dir=system).why == "system config"
    monkeypatch.setenv("SKULL_HOST_CONFIG", str(named))
    assert find_config("host.toml", system_dir=system).line() == f"config: {named} ($SKULL_HOST_CONFIG)"


def test_a_named_file_that_does_not_exist_is_an_error(places, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"config file .*nope.toml \(from --config\) does not exist"):
        find_config("skull.toml", str(tmp_path / "nope.toml"))
    monkeypatch.setenv("SKULL_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match=r"gone.toml \(from \$SKULL_CONFIG\) does not exist"):
        find_config("skull.toml")


def test_a_profile_by_name_resolves_beside_the_config_found(places):
    user, _ = places
    (user / "skull.toml").write_text("")
    (user / "calibration").mkdir()
    (user / "calibration" / "show.toml").write_text("closed_us = 1200\nopen_us = 1800\n")
    cfg = load_skull_config(find_config("skull.toml").path, calibration="show")
    assert cfg.jaw.calibration == str(user / "calibration" / "show.toml")
    assert (cfg.calibration.closed_us, cfg.calibration.open_us) == (1200.0, 1800.0)


def _skull(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "skull", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_commands_say_which_config_they_use(places, tmp_path):
    user, _ = places
    env = dict(os.environ)
    r = _skull("replay", str(tmp_path / "no-session"), env=env)
    assert r.stderr.splitlines()[0].startswith("config: built-in defaults (no skull.toml in ")
    (user / "skull.toml").write_text("[link]\nname = 'user'\n")
    r = _skull("replay", str(tmp_path / "no-session"), env=env)
    assert r.stderr.splitlines()[0] == f"config: {user / 'skull.toml'} (user config)"
    (user / "skull.toml").write_text("[calibration]\nopen_us = 3000\n")  # a bad key: the usual one-line error
    r = _skull("replay", str(tmp_path / "no-session"), env=env)
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1].startswith(f"skull replay: error: {user / 'skull.toml'} [calibration]: "
                                                f"open_us = 3000.0 is out of range")
    r = _skull("run", "--sim", "--no-audio", "--config", str(tmp_path / "missing.toml"), env=env)
    assert r.returncode == 2
    assert f"config file {tmp_path / 'missing.toml'} (from --config) does not exist" in r.stderr
    host = tmp_path / "h.toml"
    host.write_text("[server]\nport = 0\n")
    r = _skull("host", "--check", env=dict(env, SKULL_HOST_CONFIG=str(host)))
    assert r.stderr.splitlines()[0] == f"config: {host} ($SKULL_HOST_CONFIG)"


# --- skull service install / uninstall ---------------------------------------------------------

def _verify(unit: Path, user: bool, tmp_path: Path) -> str:
    """systemd-analyze verify on the unit file: what it complains about (empty when it accepts it)."""
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700, exist_ok=True)
    r = subprocess.run(["systemd-analyze", *(["--user"] if user else []), "verify", str(unit)],
                       capture_output=True, text=True, timeout=60, env=dict(os.environ, XDG_RUNTIME_DIR=str(runtime)))
    assert r.returncode == 0, r.stderr
    return "\n".join(ln for ln in r.stderr.splitlines() if unit.name in ln or "Unknown" in ln or "Failed" in ln)


needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


@needs_analyze
def test_install_and_uninstall_a_user_unit(places, tmp_path):
    user, _ = places
    config = user / "skull.toml"
    config.write_text("[link]\nname = 'bones'\n")
    env = dict(os.environ)
    r = _skull("service", "install", "skull", "--user", "--no-start", "--config", str(config), env=env)
    assert r.returncode == 0, r.stderr
    unit = tmp_path / "xdg" / "systemd" / "user" / "skull.service"
    assert f"wrote {unit}" in r.stdout
    assert "systemctl --user enable --now skull.service" in r.stdout
    assert "sudo loginctl enable-linger" in r.stdout
    text = unit.read_text()
    assert f"ExecStart={sys.executable} -m skull run --config {config}\n" in text
    for line in ("Type=notify", "NotifyAccess=main", "Restart=always", "RestartSec=2", "WatchdogSec=30",
                 "Wants=network-online.target",
                 "After=network-online.target sound.target pipewire-pulse.service pulseaudio.service",
                 "WantedBy=default.target", f"WorkingDirectory={user}"):
        assert line + "\n" in text, line
    assert _verify(unit, True, tmp_path) == ""
    r = _skull("service", "uninstall", "skull", "--user", env=env)
    assert not unit.exists()
    assert f"removed {unit}" in r.stdout
    # no systemd here: it says so and prints what to run, and says it was not all done
    if subprocess.run(["systemctl", "--user", "is-system-running"], capture_output=True).returncode not in (0, 1):
        assert r.returncode == 1
        assert "systemctl --user disable --now skull.service" in r.stdout and "daemon-reload" in r.stdout
    r = _skull("service", "uninstall", "skull", "--user", env=env)
    assert r.returncode == 2 and f"no skull.service is installed: {unit} does not exist" in r.stderr


@needs_analyze
def test_print_shows_a_system_unit_that_systemd_accepts(places, tmp_path):
    host_toml = tmp_path / "host.toml"
    host_toml.write_text("")
    r = _skull("service", "install", "host", "--print", "--config", str(host_toml))
    assert r.returncode == 0, r.stderr
    assert f"ExecStart={sys.executable} -m skull host --config {host_toml}\n" in r.stdout
    assert "WantedBy=multi-user.target" in r.stdout and "RuntimeDirectory=skull" in r.stdout
    assert "sound.target" not in r.stdout  # only the skull waits for the sound server
    assert not Path("/etc/systemd/system/skull-host.service").exists() or "written by" not in \
        Path("/etc/systemd/system/skull-host.service").read_text()
    unit = tmp_path / "skull-host.service"
    unit.write_text(r.stdout)
    assert _verify(unit, False, tmp_path) == ""


def test_verify_would_catch_a_broken_unit(tmp_path):
    """The check above can fail: a unit systemd cannot read is reported."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    unit = tmp_path / "broken.service"
    unit.write_text("[Service]\nType=notify\nRestart=alwayz\nExecStart=/bin/true\n")
    assert "restart specifier" in _verify(unit, False, tmp_path)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv not installed")
def test_a_system_install_without_root_says_to_use_sudo_or_user():
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([*nobody, sys.executable, "-m", "skull", "service", "install", "skull", "--no-start"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2
    assert "needs root: run it with sudo" in r.stderr and "or add --user" in r.stderr
    assert not Path("/etc/systemd/system/skull.service").exists()


# --- the sd_notify watchdog --------------------------------------------------------------------

class NotifySocket:
    """A real unix datagram socket in place of systemd's: what arrives, with monotonic times."""

    def __init__(self, address: str):
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.got: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            self.got.append((time.monotonic(), data.decode()))

    def wait_for(self, text: str, timeout_s: float = 60.0) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for t, msg in list(self.got):
                if text in msg.split("\n"):
                    return t
            time.sleep(0.02)
        raise AssertionError(f"no {text} within {timeout_s} s; got {self.got}")

    def times(self, text: str) -> list[float]:
        return [t for t, msg in self.got if text in msg.split("\n")]

    def close(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()


def _watch(cmd: list[str], address: str, tmp_path: Path, extra_env=None):
    sock = NotifySocket(address)
    env = dict(os.environ, NOTIFY_SOCKET=address, WATCHDOG_USEC="400000", XDG_RUNTIME_DIR=str(tmp_path),
               **(extra_env or {}))
    proc = subprocess.Popen([sys.executable, "-m", "skull", *cmd], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        ready = sock.wait_for("READY=1")
        time.sleep(2.0)
        pings = [t for t in sock.times("WATCHDOG=1") if t >= ready]
        assert len(pings) >= 7, sock.got
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        assert 0.15 < sum(gaps) / len(gaps) < 0.25, gaps  # every WATCHDOG_USEC/2
        assert max(gaps) < 0.4, gaps
        assert any(msg.startswith("READY=1") and "STATUS=" in msg for _, msg in sock.got)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, proc.stderr.read().decode()
        sock.wait_for("STOPPING=1", timeout_s=1)
        return sock.got
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()


def test_skull_run_tells_systemd_ready_feeds_the_watchdog_and_says_stopping(tmp_path):
    got = _watch(["run", "--sim", "--no-audio", "--mic-file", str(QUESTION), "--url", "ws://127.0.0.1:1"],
                 str(tmp_path / "notify.sock"), tmp_path)
    assert any("STATUS=offline: trying ws://127.0.0.1:1" in msg for _, msg in got)
    assert not (tmp_path / "skull" / "mr-bones.json").exists()  # the status file goes with the process


def test_skull_host_tells_systemd_through_an_abstract_socket(tmp_path):
    got = _watch(["host", "--port", "0"], f"@skull-test-{os.getpid()}", tmp_path)
    assert any("STATUS=serving ws://127.0.0.1:" in msg and "0 skulls connected" in msg for _, msg in got)


def test_a_stuck_loop_or_a_dead_part_stops_the_pings(tmp_path):
    sock = NotifySocket(str(tmp_path / "n.sock"))
    notifier = sdnotify.Notifier(sock.address, watchdog_usec=100_000)
    problem = [None]

    async def go():
        task = asyncio.create_task(sdnotify.keep_watchdog(notifier, lambda: problem[0]))
        await asyncio.sleep(0.5)
        time.sleep(0.6)  # the event loop is stuck: no pings
        await asyncio.sleep(0.5)
        problem[0] = "the jaw loop's thread is not running"
        stuck_at = time.monotonic()
        await asyncio.sleep(0.6)
        task.cancel()
        return stuck_at

    try:
        stuck_at = asyncio.run(go())
        time.sleep(0.1)
        pings = sock.times("WATCHDOG=1")
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        assert max(gaps) > 0.55  # the stuck loop
        assert sorted(gaps)[len(gaps) // 2] < 0.1
        assert not [t for t in pings if t > stuck_at + 0.01]  # a dead part: not one ping more
    finally:
        sock.close()


def test_nothing_is_sent_without_notify_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    n = sdnotify.Notifier.from_env()
    assert not n.enabled and n.watchdog_interval_s is None
    n.ready("idle")  # no socket, no error
    asyncio.run(asyncio.wait_for(sdnotify.keep_watchdog(n), 1))  # returns at once


def test_calibrate_saves_beside_the_config_found_and_run_finds_it_there(places, tmp_path):
    user, _ = places
    (user / "skull.toml").write_text("[board]\ndriver = 'sim'\n")
    r = _skull("calibrate", "--name", "show", "--closed-us", "1200", "--open-us", "1750", "--lead-ms", "40",
               env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[0] == f"config: {user / 'skull.toml'} (user config)"
    saved = user / "calibration" / "show.toml"
    assert saved.is_file() and not (Path.cwd() / "calibration" / "show.toml").exists()
    cfg = load_skull_config(find_config("skull.toml").path, calibration="show")
    assert (cfg.calibration.closed_us, cfg.calibration.open_us, cfg.calibration.lead_ms) == (1200.0, 1750.0, 40.0)
