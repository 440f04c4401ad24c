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


def _namespace() -> tuple[list[str], str]:
    """The command prefix that runs a program in a network namespace with only loopback up (and
    ''), or [] and why this machine allows no namespace."""
    ip = shutil.which("ip") or "/usr/sbin/ip"
    if not shutil.which("unshare") or not os.path.exists(ip):
        return [], "unshare or ip is missing"
    probe = subprocess.run(["unshare", "-rn", ip, "link", "set", "lo", "up"], capture_output=True, text=True)
    if probe.returncode != 0:
        return [], probe.stderr.strip() or f"unshare exited {probe.returncode}"
    return ["unshare", "-rn", "sh", "-c", f'{ip} link set lo up && exec "$@"', "demo"], ""


def test_the_embedded_turn_answers_with_the_network_cut(tmp_path):
    prefix, why = _namespace()
    out, attempts = _demo(tmp_path, prefix)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "costume" in out.stdout.lower() and "first_audio" in out.stdout
    assert attempts == "", f"the embedded turn tried to reach the network: {attempts}"
    if why:  # the guard alone cut the network; say so in the test report
        print(f"no network namespace here ({why}): the connection guard alone cut the network")
