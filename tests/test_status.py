"""`skull status` and `skull host --check` against a real `skull run --sim` connected to a real
`skull host`, both as the processes a show runs; each writes its status file."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skull.core.statusfile import write_status

ROOT = Path(__file__).resolve().parent.parent
QUESTION = ROOT / "skull" / "data" / "question.wav"
IMAGE = ROOT / "skull" / "data" / "snapshot.jpg"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def env(tmp_path):
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    e = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), XDG_CONFIG_HOME=str(tmp_path / "config"))
    e.pop("SKULL_CONFIG", None)
    e.pop("SKULL_HOST_CONFIG", None)
    return e


def skull(env, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "skull", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def until(env, args, ok, timeout_s=40.0):
    """Run ``skull ARGS`` until ``ok(result)``; the last result."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = skull(env, *args)
        if ok(r) or time.monotonic() > deadline:
            return r
        time.sleep(0.3)


def start_host(env, port):
    proc = subprocess.Popen([sys.executable, "-m", "skull", "host", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert "listening" in proc.stdout.readline()
    return proc


def test_status_of_a_running_skull_then_offline_then_not_running(env, tmp_path):
    port = _free_port()
    host = start_host(env, port)
    record = tmp_path / "turns"
    bones = subprocess.Popen([sys.executable, "-m", "skull", "run", "--sim", "--no-audio", "--mic-file", str(QUESTION),
                              "--image", str(IMAGE), "--url", f"ws://127.0.0.1:{port}", "--record", str(record)],
                             env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        r = until(env, ["status"], lambda r: r.returncode == 0)
        assert r.returncode == 0, r.stdout + r.stderr
        assert re.search(r"^state\s+idle$", r.stdout, re.M), r.stdout
        assert re.search(rf"^link\s+ws://127.0.0.1:{port}: connected since \d+ s ago$", r.stdout, re.M)
        assert "turn     none yet" in r.stdout and r.stdout.rstrip().endswith("ok")
        assert re.search(rf"^record\s+{record}: [\d.]+ MB free$", r.stdout, re.M)

        # one turn: Enter presses the simulated button, Enter again releases it
        bones.stdin.write("\n")
        bones.stdin.flush()
        time.sleep(1.5)
        bones.stdin.write("\n")
        bones.stdin.flush()
        r = until(env, ["status", "--json"], lambda r: json.loads(r.stdout)["status"]["last_turn"] is not None)
        shown = json.loads(r.stdout)
        assert shown["ok"] is True and r.returncode == 0
        last = shown["status"]["last_turn"]
        assert last["turn"] == 1 and last["outcome"] == "answered" and last["first_audio_ms"] > 0
        r = skull(env, "status")
        assert re.search(r"^turn\s+1 answered \d+ s ago, first sound \d+ ms after the release$", r.stdout, re.M)

        # the host's check lists the connected skull
        r = skull(env, "host", "--port", str(port), "--check")
        assert r.returncode == 0, r.stdout
        assert f"host     ws://127.0.0.1:{port}: running (pid {host.pid}), 1 skull connected" in r.stdout
        assert re.search(r"^skull\s+mr-bones from 127.0.0.1: idle, connected \d+ s, last turn 1 answered \d+ s ago, "
                         r"first sound \d+ ms$", r.stdout, re.M), r.stdout

        # a disk that is low by the operator's measure is a problem
        r = skull(env, "status", "--min-free-mb", "1e12")
        assert r.returncode == 1 and "problem: disk low:" in r.stdout

        host.send_signal(signal.SIGTERM)
        host.wait(timeout=20)
        r = until(env, ["status"], lambda r: r.returncode != 0)
        assert r.returncode == 1, r.stdout
        assert re.search(r"^state\s+offline$", r.stdout, re.M)
        assert r.stdout.rstrip().endswith(f"problem: offline: not connected to the host at ws://127.0.0.1:{port}")
        r = skull(env, "host", "--port", str(port), "--check")  # no host there: not a problem
        assert r.returncode == 0 and f"port {port}: no host running here" in r.stdout

        bones.kill()  # no chance to tidy up: the file stays, its writer is gone
        bones.wait(timeout=10)
        r = skull(env, "status")
        assert r.returncode == 3
        assert re.match(rf"not running: the skull: process {bones.pid} that wrote .*mr-bones.json has ended",
                        r.stdout), r.stdout
    finally:
        for proc in (bones, host):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_status_with_no_skull_and_of_a_named_one(env):
    r = skull(env, "status")
    assert r.returncode == 3
    assert r.stdout.startswith(f"not running: no skull status file in {env['XDG_RUNTIME_DIR']}/skull")
    r = skull(env, "status", "--name", "yorick", "--json")
    assert r.returncode == 3
    assert json.loads(r.stdout)["problem"].startswith("not running: skull yorick: no status file ")


def test_a_stale_status_is_not_running_and_a_stale_host_fails_the_check(env):
    runtime = Path(env["XDG_RUNTIME_DIR"]) / "skull"
    # a status written by a live process (this one) that stopped rewriting it: hung
    write_status(runtime / "mr-bones.json", {"name": "mr-bones", "pid": os.getpid(), "state": "idle"})
    old = json.loads((runtime / "mr-bones.json").read_text())
    old["written"] -= 60
    (runtime / "mr-bones.json").write_text(json.dumps(old))
    r = skull(env, "status")
    assert r.returncode == 3 and "is stale: process" in r.stdout and "has not rewritten it for 60 s" in r.stdout

    port = _free_port()
    (runtime / f"host-{port}.json").write_text(json.dumps({"pid": os.getpid(), "port": port, "skulls": [],
                                                           "written": time.time() - 60}))
    r = skull(env, "host", "--port", str(port), "--check")
    assert r.returncode == 1
    assert f"host     port {port}: STALE: status file" in r.stdout
    assert r.stdout.rstrip().endswith("not ready: the running host (stale status)")


def test_a_running_host_with_no_skull_is_not_a_problem(env):
    port = _free_port()
    host = start_host(env, port)
    try:
        r = until(env, ["host", "--port", str(port), "--check"], lambda r: "running (pid" in r.stdout, 20)
        assert r.returncode == 0, r.stdout
        assert "0 skulls connected; none connected is not a problem" in r.stdout
    finally:
        host.terminate()
        host.wait(timeout=20)
    assert not (Path(env["XDG_RUNTIME_DIR"]) / "skull" / f"host-{port}.json").exists()
