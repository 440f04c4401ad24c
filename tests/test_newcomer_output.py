"""What a newcomer sees: `skull host` and `skull run --sim` as separate processes, set up as the
README's PC + Pi section says (the host on one address with --bind and a token, the skull
pointed at it with --url), each saying what it does on its own terminal (here: a pipe, so plain
lines). Real processes, a real websocket between two loopback addresses, the real embedded
engines and espeak-ng."""
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Watched

ROOT = Path(__file__).resolve().parents[1]
QUESTION = ROOT / "skull" / "data" / "question.wav"  # "Do you like my costume?", 2.7 s
HOST_ADDR = "127.0.0.2"  # the "PC"; the skull connects from 127.0.0.1, the "Pi"
TOKEN = "a-secret-for-the-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST_ADDR, 0))
        return s.getsockname()[1]


class Proc(Watched):
    """A `skull ...` subprocess whose stdout and stderr lines are collected as they come."""

    def __init__(self, args: list[str], env: dict, cwd: Path, stdin: bool = False):
        self.p = subprocess.Popen([sys.executable, "-m", "skull", *args], cwd=cwd, env=env, text=True,
                                  stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._watch(str(args), self.p.stdout, self.p.stderr)

    def press(self, hold_s: float) -> None:
        """Enter presses the simulated button, Enter again releases it."""
        self.p.stdin.write("\n")
        self.p.stdin.flush()
        time.sleep(hold_s)
        self.p.stdin.write("\n")
        self.p.stdin.flush()

    def stop(self) -> None:
        super().stop()
        time.sleep(0.2)  # the readers take the last lines


@pytest.fixture
def setup(tmp_path):
    """Start processes in a fresh folder with no config of the user's: ``setup(args)``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_CONFIG_HOME=str(tmp_path / "config"),
               XDG_STATE_HOME=str(tmp_path / "state"), XDG_RUNTIME_DIR=str(tmp_path / "run"))
    for key in ("SKULL_CONFIG", "SKULL_HOST_CONFIG", "SKULL_TOKEN"):
        env.pop(key, None)
    (tmp_path / "run").mkdir(mode=0o700)
    started: list[Proc] = []

    def start(args: list[str], stdin: bool = False) -> Proc:
        proc = Proc(args, env, tmp_path, stdin)
        started.append(proc)
        return proc

    start.env = env
    yield start
    for proc in reversed(started):
        proc.stop()


def _host(start, port: int, *flags: str) -> Proc:
    host = start(["host", "--bind", HOST_ADDR, "--port", str(port), "--token", TOKEN, *flags])
    host.wait_for(rf"listening on ws://{re.escape(HOST_ADDR)}:{port}")
    return host


def _skull(start, port: int, *flags: str, before: tuple = ()) -> Proc:
    return start([*before, "run", "--sim", "--no-audio", "--mic-file", str(QUESTION),
                  "--url", f"ws://{HOST_ADDR}:{port}", "--token", TOKEN, *flags], stdin=True)


def test_pc_and_pi_say_what_they_do(setup):
    port = _free_port()
    host = _host(setup, port)
    skull = _skull(setup, port)
    skull.wait_for(rf"connected to ws://{re.escape(HOST_ADDR)}:{port} as mr-bones")
    host.wait_for(r"skull mr-bones connected from 127\.0\.0\.1:\d+")
    skull.press(3.0)
    said = skull.wait_for(r'turn 1: said: "(.+)" \(first audio (\d+) ms after the release\)')
    assert said.group(1).strip() and 0 < int(said.group(2)) < 10000
    for step in ("turn 1: listening", "turn 1: thinking", 'turn 1: heard: "Do you like my costume?"',
                 "turn 1: speaking"):
        assert step in skull.text
    # the host's line for the turn: the skull's name, the timings up to the first audio, both texts
    turn = host.wait_for(r"mr-bones: turn 1 .*stt=\d+.*tts_first_segment=\d+.*first_audio=(\d+) "
                         r"heard='Do you like my costume\?' .*reply=")
    assert turn.group(1) == said.group(2)
    skull.stop()
    host.wait_for("skull mr-bones disconnected")
    host.stop()
    for proc in (skull, host):
        assert "Traceback" not in proc.text, proc.text


def test_quiet_shows_no_status(setup, tmp_path):
    port = _free_port()
    host = _host(setup, port, "-q")
    turns = tmp_path / "turns.jsonl"
    skull = _skull(setup, port, "--turn-log", str(turns), before=("-q",))
    _until_connected(setup.env)  # nothing to wait for on screen: `skull status` says it
    skull.press(3.0)
    deadline = time.monotonic() + 60
    while not (turns.exists() and turns.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.2)
    record = json.loads(turns.read_text().splitlines()[0])  # the turn did happen
    assert record["transcript"] == "Do you like my costume?" and record["reply"]
    time.sleep(2.5)  # the host writes its turn line up to 2 s after done
    skull.stop()
    host.stop()
    for word in ("connect", "listening", "thinking", "heard", "said", "first audio"):
        assert word not in skull.text, skull.text
    for word in ("connected from", "turn 1", "Do you like"):
        assert word not in host.text, host.text


def _until_connected(env: dict, timeout: float = 60.0) -> None:
    """Wait until `skull status` says the running skull is connected (exit 0)."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run([sys.executable, "-m", "skull", "status"], capture_output=True, text=True, env=env,
                             timeout=30)
        if out.returncode == 0:
            return
        assert time.monotonic() < deadline, out.stdout + out.stderr
        time.sleep(0.5)


def test_two_skulls_with_one_name_are_told_and_back_off(setup):
    port = _free_port()
    host = _host(setup, port)
    first = _skull(setup, port)
    first.wait_for("connected to ")
    second = _skull(setup, port)
    second.wait_for("connected to ")
    first.wait_for(r"another skull uses the name 'mr-bones' on the host at .*give each skull its own \[link\] name "
                   r".*retrying in 30 s")
    host.wait_for(r"took the place of its connection from 127\.0\.0\.1: two skulls with one name\? Give each its "
                  r"own \[link\] name")
    time.sleep(6)  # long enough for dozens of knock-offs at the 0.2 s backoff
    assert host.text.count("connected from") == 2, host.text
    assert "lost the host" not in first.text  # the name, not the network: said once, in those words


def test_a_press_with_no_host_is_said_and_the_likely_causes_named_once(setup):
    port = _free_port()  # nobody listens there
    skull = _skull(setup, port)
    skull.wait_for(r"is skull host running there\? .*skull host --bind 0\.0\.0\.0 --token")
    skull.press(0.3)
    said = skull.wait_for(r'WARNING: pressed with no host at ws://\S+: said an offline line \((cached|espeak-ng)\): '
                          r'"(.+)"', timeout=30)
    assert said.group(2).strip()
    time.sleep(3)  # several more attempts (0.2 s doubling to 2 s): none names the causes again
    assert skull.text.count("is skull host running there?") == 1, skull.text
    assert "connected to" not in skull.text and "Traceback" not in skull.text


def test_the_host_turn_line_names_a_failed_stage():
    from host import events as hev
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("test.turns")
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    turn_log = hev.TurnLog(logger)
    for e in (hev.TurnStarted("mr-bones", 4), hev.Transcript("mr-bones", 4, "boo"),
              hev.TurnError("mr-bones", 4, "reply", "llama.cpp at http://pc:8080 is down; start it"),
              hev.Played("mr-bones", 4, 812.0), hev.Done("mr-bones", 4, "Oops.", 1, {"total": 900.0})):
        turn_log(e)
    assert records == ["mr-bones: turn 4 total=900 first_audio=812 heard='boo' caption='' reply='Oops.' "
                       "errors=['reply: llama.cpp at http://pc:8080 is down; start it']"]


def test_plain_lines_off_a_terminal():
    """Under systemd (stderr not a terminal): status lines as they are, the rest with level and
    logger, no escape codes, no time (the journal adds it)."""
    import io

    from skull.core.console import setup as console
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in ("skull.console", "host.status", "host.turns")}
    try:
        console(0, stream=stream)
        logging.getLogger("skull.console").info("turn 1: listening")
        logging.getLogger("skull.console").warning("pressed with no host")
        logging.getLogger("skull.link").info("connected to ws://x (protocol 1)")  # detail: -v only
        logging.getLogger("skull.link").warning("host ws://x unreachable")
        console(0, quiet=True, stream=stream)
        logging.getLogger("skull.console").info("turn 2: listening")
    finally:  # pytest's own handlers back
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, was in levels.items():
            logging.getLogger(name).setLevel(was)
    assert stream.getvalue().splitlines() == ["turn 1: listening", "WARNING: pressed with no host",
                                              "WARNING skull.link: host ws://x unreachable"]
