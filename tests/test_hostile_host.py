"""The skull against a hostile or broken host: a plain websockets server in the test plays the
host and sends what a real one never should. A host that never says ``done`` cannot keep the
skull waiting past [link] done_timeout_s; a host's ``error`` text cannot recolour the operator's
terminal or forge a log line; and thousands of malformed, oversized and out-of-order frames
and welcomes leave a real ``skull run --sim`` running, reconnecting, answering pings, with its
jaw inside its calibrated range and no traceback."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.server import serve

from conftest import sim_body, skull_config, wait_for
from skull.agent import Agent, shown
from skull.config import LinkConfig
from skull.core import protocol as p
from skull.core.data import bundled
from skull.core.errors import ConfigError
from skull.core.validate import build
from skull.machine import (AckListen, ButtonDown, ButtonUp, Connected, Drained, JawClose, Led, LedPattern,
                           ReplyTimeout, SegmentArrived, State, TalkMachine, TurnEnd)
from skull.segment import ReplySegment

RATE = 16000


def welcome(session: str = "s1") -> str:
    return p.encode(p.Welcome(p.PROTOCOL_VERSION, "hostile", session, 15.0))[0]


def speech(turn: int, seq: int, seconds: float = 0.3, opening: float = 0.8) -> list:
    """A valid spoken segment: a tone of ``seconds`` and a jaw track that opens to ``opening``."""
    n = int(RATE * seconds)
    pcm = (np.sin(np.arange(n) * 2 * np.pi * 220 / RATE) * 12000).astype("<i2").tobytes()
    jaw = [opening] * int(seconds * 100)
    return p.encode(p.Speech(turn, seq, f"sentence {seq}", RATE, 2, 1, len(pcm), 100, jaw), pcm)


# --- a host that never says done -------------------------------------------------------------

def _speaking_machine() -> TalkMachine:
    mc = TalkMachine()
    for event in (Connected(), ButtonDown(), AckListen(1), ButtonUp()):
        mc.handle(event)
    mc.handle(SegmentArrived(1, _segment(0)))
    assert mc.state is State.SPEAKING
    return mc


def _segment(seq: int) -> ReplySegment:
    return ReplySegment(1, seq, "hi", np.zeros(160, np.float32), RATE, np.zeros(1, np.float32), 100)


def test_the_machine_ends_a_turn_the_host_never_finishes():
    mc = _speaking_machine()
    assert mc.handle(Drained()) == [] and mc.waiting_for_done
    assert mc.handle(ReplyTimeout(1, after_segments=1)) == [JawClose(), Led(LedPattern.OFF), TurnEnd(1, "no done")]
    assert mc.state is State.IDLE


def test_the_done_wait_starts_again_with_each_segment_and_the_reply_timeout_does_not_cut_a_reply():
    mc = _speaking_machine()
    mc.handle(Drained())
    mc.handle(SegmentArrived(1, _segment(1)))  # the host was slow, not gone
    assert mc.handle(ReplyTimeout(1, after_segments=1)) == [] and mc.state is State.SPEAKING
    assert mc.handle(ReplyTimeout(1)) == []  # the whole-reply timeout while the reply still plays
    mc.handle(Drained())
    assert mc.handle(ReplyTimeout(1, after_segments=2))[-1] == TurnEnd(1, "no done")


def test_done_timeout_s_is_validated():
    with pytest.raises(ConfigError, match="done_timeout_s"):
        build(LinkConfig, {"done_timeout_s": 0.1}, "skull.toml", "link")


async def _scripted_host(on_stop, sent: list, errors: tuple = ()):
    """A host that welcomes, acknowledges ``listen`` and ``stop``, and after ``stop`` sends
    whatever ``on_stop(turn)`` returns (lists of frames), noting each send time in ``sent``.
    ``errors``: ``error`` messages sent right after the welcome."""
    async def handler(ws):
        await ws.recv()  # hello
        await ws.send(welcome())
        for code, message in errors:
            await ws.send(json.dumps({"type": "error", "code": code, "message": message}))
        async for frame in ws:
            if isinstance(frame, bytes):
                continue
            msg = json.loads(frame)
            if msg["type"] in ("listen", "stop"):
                await ws.send(p.encode(p.Ack(msg["turn"], msg["type"]))[0])
            if msg["type"] == "stop":
                for frames in on_stop(msg["turn"]):
                    for f in frames:
                        await ws.send(f)
                    sent.append(time.monotonic())
    return await serve(handler, "127.0.0.1", 0, max_size=p.TRANSPORT_MAX_BYTES)


def test_a_host_that_never_sends_done_cannot_keep_the_skull_waiting(caplog):
    """Two sentences, then nothing: the turn ends done_timeout_s after the last of them played,
    jaw shut, LED off, idle, with a warning that names the reason and the key; the next turn
    is taken."""
    async def go():
        sent: list = []
        server = await _scripted_host(lambda turn: [speech(turn, 0, 0.5), speech(turn, 1, 0.5)], sent)
        cfg = skull_config(server.sockets[0].getsockname()[1], done_timeout_s=1.0)
        body = sim_body(cfg, speed=1.0)
        agent = Agent(cfg, body)
        task = asyncio.create_task(agent.run())
        try:
            await wait_for(lambda: agent.state is State.IDLE, timeout=10)
            pin = body.panel.button.pin
            agent.turn_ended.clear()
            pin.drive_low()
            await asyncio.sleep(0.5)
            pin.drive_high()
            await asyncio.wait_for(agent.turn_ended.wait(), 20)
            ended = time.monotonic()
            await asyncio.sleep(0.1)
            state, jaw, led = agent.state, body.jaw.opening, agent.led
            agent.turn_ended.clear()
            pin.drive_low()  # the skull takes the next turn
            await wait_for(lambda: agent.state is State.LISTENING, timeout=5)
            return agent.finished[-1], ended - sent[-1], state, jaw, led
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            server.close()
            await server.wait_closed()
    with caplog.at_level(logging.WARNING, logger="skull"):
        rec, waited, state, jaw, led = asyncio.run(go())
    assert rec.outcome == "no done" and len(rec.segments) == 2
    # both sentences (0.5 s each, sent together) played, the skull waited 1.0 s for more, then gave up
    assert 1.8 <= waited <= 2.8, waited
    assert state is State.IDLE and jaw == 0.0 and led is LedPattern.OFF
    said = [r.getMessage() for r in caplog.records]
    assert any("no more speech and no done within 1 s" in m and "[link] done_timeout_s" in m for m in said), said


# --- `skull run` as a show runs it -------------------------------------------------------------

@contextlib.asynccontextmanager
async def skull_run(url: str, folder: Path, config: str = "", record: bool = False):
    """A real `skull run --sim` process against ``url``; yields (process, stderr lines so far)."""
    args = [sys.executable, "-m", "skull", "-v", "run", "--sim", "--no-audio", "--url", url,
            "--mic-file", str(bundled("question.wav")), "--image", str(bundled("snapshot.jpg"))]
    if config:
        (folder / "skull.toml").write_text(config)
        args += ["--config", str(folder / "skull.toml")]
    if record:
        args += ["--record", str(folder / "turns")]
    proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, cwd=folder,
                                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []

    async def read():
        async for line in proc.stdout:
            lines.append(line.decode("utf-8", errors="backslashreplace"))
    reader = asyncio.create_task(read())
    try:
        yield proc, lines
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        await asyncio.wait_for(reader, 5)


FORGED = "2001-01-01 00:00:00,000 INFO skull.agent: turn 7 answered"
ANSI = "\x1b[2J\x1b[31mthe host owns your terminal\x1b[0m"


def test_a_hosts_error_text_is_escaped_on_the_console_and_in_the_log(tmp_path):
    """ANSI escapes, CR and LF in a host's ``error`` reach the operator as visible escapes: the
    terminal is not cleared or recoloured and no forged log line appears."""
    async def go():
        server = await _scripted_host(lambda turn: [], [], errors=[("bad\x1b[5m", f"{ANSI}\r\n{FORGED}\u202e")])
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            async with skull_run(url, tmp_path) as (proc, lines):
                await wait_for(lambda: any("host: " in ln for ln in lines), timeout=30)
                await asyncio.sleep(0.3)
                return "".join(lines)
        finally:
            server.close()
            await server.wait_closed()
    out = asyncio.run(go())
    assert "\x1b" not in out and "\r" not in out and "\u202e" not in out
    assert not any(line.startswith(FORGED) for line in out.splitlines())
    line = next(ln for ln in out.splitlines() if "host: " in ln)
    assert "host: bad\\x1b[5m: \\x1b[2J\\x1b[31mthe host owns your terminal\\x1b[0m\\r\\n" + FORGED + "\\u202e" in line


def test_shown_cuts_long_text_and_says_so():
    assert shown("a" * 1000) == "a" * 300 + "... (700 more characters)"
    assert shown("fine, plain text") == "fine, plain text"
