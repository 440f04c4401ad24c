"""The skull against a hostile or broken host: a plain websockets server in the test plays the
host and sends what a real one never should. A host that never says ``done`` cannot keep the
skull waiting past [link] done_timeout_s; a host's ``error`` text cannot recolour the operator's
terminal or forge a log line; and thousands of malformed, oversized and out-of-order frames
and welcomes leave a real ``skull run --sim`` running, reconnecting, answering pings, with its
jaw inside its calibrated range and no traceback."""
from __future__ import annotations

import asyncio
import json
import logging
import time

import numpy as np
import pytest
from websockets.asyncio.server import serve

from bench.fuzz import ANSI, RATE, FuzzHost, jaw_openings, skull_run, speech, storm_skull, welcome
from conftest import sim_body, skull_config, wait_for
from skull.agent import Agent, shown
from skull.config import LinkConfig
from skull.core import protocol as p
from skull.core.errors import ConfigError
from skull.core.validate import build
from skull.machine import (AckListen, ButtonDown, ButtonUp, Connected, Drained, JawClose, Led, LedPattern,
                           ReplyTimeout, SegmentArrived, State, TalkMachine, TurnEnd)
from skull.segment import ReplySegment


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
    assert 1.8 <= waited <= 3.5, waited  # not before the wait, and nowhere near the 90 s reply timeout
    assert state is State.IDLE and jaw == 0.0 and led is LedPattern.OFF
    said = [r.getMessage() for r in caplog.records]
    assert any("no more speech and no done within 1 s" in m and "[link] done_timeout_s" in m for m in said), said


def test_a_done_in_place_of_a_speech_payload_still_ends_the_turn():
    """The host announces a sentence, then sends ``done`` where its audio belonged: the sentence
    is lost (and logged), the ``done`` is not, so the turn ends at once with the sentence before
    it played, instead of waiting out [link] done_timeout_s."""
    def reply(turn):
        announced = speech(turn, 1)[0]  # the text frame alone; its binary frame never comes
        done = p.encode(p.Done(turn, 2, "sentence 0 sentence 1"))[0]
        return [speech(turn, 0), [announced, done]]

    async def go():
        sent: list = []
        server = await _scripted_host(reply, sent)
        cfg = skull_config(server.sockets[0].getsockname()[1], done_timeout_s=10.0)
        body = sim_body(cfg, speed=1.0)
        agent = Agent(cfg, body)
        task = asyncio.create_task(agent.run())
        try:
            await wait_for(lambda: agent.state is State.IDLE, timeout=10)
            agent.turn_ended.clear()
            body.panel.button.pin.drive_low()
            await asyncio.sleep(0.3)
            body.panel.button.pin.drive_high()
            await asyncio.wait_for(agent.turn_ended.wait(), 20)
            return agent.finished[-1], time.monotonic() - sent[-1]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            server.close()
            await server.wait_closed()
    rec, waited = asyncio.run(go())
    assert rec.outcome == "answered" and [s.seq for s in rec.segments] == [0]
    assert waited < 3, f"the turn ended {waited:.1f} s after done: the done was lost"


def test_a_host_that_never_stops_talking_is_cut_at_the_reply_limit(caplog):
    """250 s of speech for one turn: the skull takes REPLY_MAX_S of it, says so once, and
    drops the rest instead of queueing it all (a host could otherwise fill its memory)."""
    from skull.agent import REPLY_MAX_S

    async def go():
        sent: list = []
        server = await _scripted_host(lambda turn: [speech(turn, k, 10.0) for k in range(25)], sent)
        cfg = skull_config(server.sockets[0].getsockname()[1])
        body = sim_body(cfg, speed=1.0)
        agent = Agent(cfg, body)
        task = asyncio.create_task(agent.run())
        try:
            await wait_for(lambda: agent.state is State.IDLE, timeout=10)
            pin = body.panel.button.pin
            pin.drive_low()
            await asyncio.sleep(0.3)
            pin.drive_high()
            await wait_for(lambda: len(sent) == 25, timeout=20)
            await asyncio.sleep(0.5)
            agent.turn_ended.clear()
            pin.drive_low()  # the visitor interrupts
            await asyncio.wait_for(agent.turn_ended.wait(), 10)
            pin.drive_high()
            # now: once a newer turn ends (the one this press started), only its words are kept
            return sum(len(s.samples) / s.rate for s in agent.finished[-1].segments)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            server.close()
            await server.wait_closed()
    with caplog.at_level(logging.WARNING, logger="skull"):
        taken = asyncio.run(go())
    assert 170 <= taken <= REPLY_MAX_S, taken
    said = [r.getMessage() for r in caplog.records if "the rest of the reply is dropped" in r.getMessage()]
    assert len(said) == 1 and f"more than {REPLY_MAX_S:g} s" in said[0]


# --- `skull run` as a show runs it -------------------------------------------------------------

FORGED = "2001-01-01 00:00:00,000 INFO skull.agent: turn 7 answered"


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


# --- a fuzzing host against `skull run` --------------------------------------------------------

FUZZ_FRAMES = 3000


def test_skull_run_survives_a_fuzzing_host(tmp_path):
    """3,000 hostile frames and welcomes (bench/fuzz.py's FuzzHost) against a real `skull run
    --sim` whose button is pressed and released all along: it never exits, never prints a
    traceback, keeps reconnecting and answering pings, logs malformed frames a few per
    connection (not one line per frame), escapes what the host says, and its jaw stays inside
    the calibrated range."""
    fuzz = FuzzHost(seed=13, frames=FUZZ_FRAMES)
    alive, out, took, _ = asyncio.run(storm_skull(fuzz, tmp_path, max_s=80))
    tail = out[-3000:]
    assert fuzz.budget <= 0, f"only {FUZZ_FRAMES - fuzz.budget} frames sent in {took:.0f} s"
    assert alive, tail
    assert "Traceback" not in out, out[out.find("Traceback") - 500:][:4000]
    assert fuzz.missed_pongs == 0 and fuzz.pongs >= fuzz.welcomed - 1
    # it kept reconnecting after every close and bad welcome, and came back to the calm host at the end
    # (how many connections the storm takes depends on the seeded bursts and the machine's pace)
    assert fuzz.connections >= 3 and fuzz.calm_pongs >= 1, (fuzz.connections, fuzz.calm_pongs)
    logged = out.count("malformed frame from host ignored")
    assert logged <= 3 * fuzz.welcomed and logged < fuzz.malformed / 5, (logged, fuzz.malformed)
    assert "\x1b" not in out and "\r" not in out
    # a flood of the host's error messages is not a flood of log lines
    assert out.count("host: stage_failed") <= 5 * (took / 10 + 1), out.count("host: stage_failed")
    openings = jaw_openings(tmp_path)
    assert openings and max(openings) > 0.02, "the jaw never moved: no speech reached it"
    assert all(0.0 <= o <= 1.0 for o in openings)
    assert took < 100  # 10 s alone on this machine; the limit leaves room for a busy one
