"""The embedded turn needs no network: every model it uses ships inside a package.

The demo (a host in its own process and a simulated skull, on loopback) runs with the network
cut: in a network namespace of its own with only loopback up where this machine allows one,
and always with a guard that refuses and records every connection to anything but loopback
(a model download would be one).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

GUARD = '''
import os, socket
_log = os.environ["SKULL_NET_LOG"]
_real_connect, _real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

def _loopback(host):
    return host in ("localhost", "", None) or str(host).startswith("127.") or host == "::1"

def _refuse(what):
    with open(_log, "a") as f:
        f.write(what + "\\n")
    raise OSError(101, "network cut for the offline test: " + what)

def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
        _refuse("connect %r" % (address,))
    return _real_connect(self, address)

def getaddrinfo(host, *args, **kwargs):
    if not _loopback(host if not isinstance(host, bytes) else host.decode()):
        _refuse("getaddrinfo %r" % (host,))
    return _real_getaddrinfo(host, *args, **kwargs)

socket.socket.connect = connect
socket.getaddrinfo = getaddrinfo
'''


def _demo(tmp_path: Path, prefix: list[str]) -> tuple[subprocess.CompletedProcess, str]:
    guard = tmp_path / "guard"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(GUARD)
    log = tmp_path / "net.log"
    log.write_text("")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(guard), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "SKULL_NET_LOG": str(log)}
    out = subprocess.run(prefix + [sys.executable, "-m", "skull", "demo", "--no-audio"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=180)
    return out, log.read_text()


def test_the_embedded_turn_never_reaches_for_the_network(tmp_path):
    out, attempts = _demo(tmp_path, [])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "costume" in out.stdout.lower() and "first_audio" in out.stdout
    assert attempts == "", f"the embedded turn tried to reach the network: {attempts}"


def test_the_embedded_turn_answers_in_a_network_namespace_with_only_loopback(tmp_path):
    ip = shutil.which("ip") or "/usr/sbin/ip"
    probe = subprocess.run(["unshare", "-rn", ip, "link", "set", "lo", "up"], capture_output=True, text=True) \
        if shutil.which("unshare") and os.path.exists(ip) else None
    if probe is None or probe.returncode != 0:
        pytest.skip(f"no network namespace here ({probe.stderr.strip() if probe else 'unshare or ip missing'}); the "
                    f"guard test above still cuts the network")
    out, attempts = _demo(tmp_path, ["unshare", "-rn", "sh", "-c", f'{ip} link set lo up && exec "$@"', "demo"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "costume" in out.stdout.lower() and "first_audio" in out.stdout
    assert attempts == ""
