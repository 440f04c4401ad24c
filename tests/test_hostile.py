"""The host against hostile and broken peers, over a real websocket on loopback: frames the
decoder cannot take, a text frame where a binary one was announced, a recording that never
stops, unbounded names, log injection, name takeover, too many turns at once."""
import asyncio
import dataclasses
import gc
import json
import logging
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from host import events as ev
from host.config import SkullEntry
from host.server import Host
from skull.core import protocol as p
from skull.core.data import bundled
from skull.core.wav import read_wav, to_mono_rate, to_pcm16

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = bundled("snapshot.jpg").read_bytes()
QUESTION = to_pcm16(to_mono_rate(read_wav(bundled("question.wav")), 16000))


def _config(host_config, **server):
    return dataclasses.replace(host_config, server=dataclasses.replace(host_config.server, **server))


async def _hello(port: int, name: str = "s", token: str = ""):
    ws = await connect(f"ws://127.0.0.1:{port}", max_size=p.TRANSPORT_MAX_BYTES)
    await ws.send(json.dumps({"type": "hello", "protocol": 1, "skull": name, "token": token}))
    return ws


async def _welcomed(port: int, name: str = "s", token: str = ""):
    ws = await _hello(port, name, token)
    msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert msg["type"] == "welcome", msg
    return ws


async def _closed(ws) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as e:
        while True:
            await asyncio.wait_for(ws.recv(), 5)
    return e.value.rcvd.code, e.value.rcvd.reason


async def _until_done(ws, timeout_s: float = 60.0) -> list[dict]:
    """Every text message up to and including ``done`` (binary payloads skipped)."""
    got = []
    while True:
        frame = await asyncio.wait_for(ws.recv(), timeout_s)
        if isinstance(frame, bytes):
            continue
        got.append(json.loads(frame))
        if got[-1]["type"] == "done":
            return got


async def _ask(ws, turn: int, audio: bytes = QUESTION, stop: bool = True) -> None:
    await ws.send(json.dumps({"type": "listen", "turn": turn}))
    await ws.send(json.dumps({"type": "audio_start", "turn": turn, "rate": 16000, "width": 2, "channels": 1}))
    for i in range(0, len(audio), 3200):
        await ws.send(audio[i:i + 3200])
    if stop:
        await ws.send(json.dumps({"type": "stop", "turn": turn}))


HOSTILE_JSON = ["[" * 100_000 + "]" * 100_000,
                '{"type":"listen","turn":' + "9" * 5000 + "}",
                '{"type":"listen","turn":"\\ud800"}',
                '{"type":"hello","protocol":1,"skull":"\\ud800"}',
                '{"type":"\\udfff"}']


@pytest.mark.parametrize("frame", HOSTILE_JSON, ids=["deep", "huge-int", "surrogate-field", "surrogate-name",
                                                     "surrogate-type"])
def test_json_the_decoder_cannot_take_is_refused_by_name(host_config, backends, frame):
    async def go():
        host = await Host(_config(host_config), backends).start()
        try:
            ws = await connect(f"ws://127.0.0.1:{host.port}", max_size=p.TRANSPORT_MAX_BYTES)
            await ws.send(frame)  # before the hello: refused with 4400
            code, reason = await _closed(ws)
            assert code == p.CLOSE_BAD_HELLO and reason.startswith("bad hello:")
            ws = await _welcomed(host.port)
            await ws.send(frame)  # after it: an error, and the connection goes on
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert msg["type"] == "error" and msg["code"] in (p.E_BAD_JSON, p.E_BAD_FIELD, p.E_UNKNOWN_TYPE), msg
            await ws.send('{"type":"listen","turn":1}')
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "ack"
            await ws.close()
        finally:
            await host.stop()
    asyncio.run(go())


def test_text_frame_instead_of_announced_binary_is_handled_and_the_turn_answered(host_config, backends):
    async def go():
        host = await Host(_config(host_config), backends).start()
        try:
            ws = await _welcomed(host.port)
            await _ask(ws, 1, stop=False)
            await ws.send(json.dumps({"type": "image", "turn": 1, "format": "jpeg", "bytes": len(SNAPSHOT)}))
            await ws.send(json.dumps({"type": "stop", "turn": 1}))  # where the JPEG belonged
            got = await _until_done(ws)
        finally:
            await host.stop()
        return got
    got = asyncio.run(go())
    errors = [m for m in got if m["type"] == "error"]
    assert errors[0]["code"] == p.E_BAD_STATE and "image announced" in errors[0]["message"]
    assert {"type": "ack", "turn": 1, "of": "stop"} in got  # the stop was not lost with the image
    assert got[-1]["type"] == "done" and got[-1]["segments"] >= 1


def test_host_ends_a_recording_at_max_record_s_and_answers(host_config, backends):
    async def go():
        host = await Host(_config(host_config, max_record_s=1.0), backends).start()
        try:
            ws = await _welcomed(host.port)
            t0 = time.monotonic()
            await _ask(ws, 1, audio=QUESTION * 2, stop=False)  # a stuck button: no stop ever comes
            got = await _until_done(ws, 30)
            took_s = time.monotonic() - t0
            await ws.send(json.dumps({"type": "stop", "turn": 1, "reason": "max_length"}))  # late: accepted
            await ws.send('{"type":"listen","turn":2}')
            after = json.loads(await asyncio.wait_for(ws.recv(), 5))
        finally:
            await host.stop()
        return got, after, took_s
    got, after, took_s = asyncio.run(go())
    too_large = [m for m in got if m["type"] == "error" and m["code"] == p.E_TOO_LARGE]
    assert len(too_large) == 1 and "max_record_s" in too_large[0]["message"]
    assert {"type": "ack", "turn": 1, "of": "stop"} in got and got[-1]["segments"] >= 1
    assert after == {"type": "ack", "turn": 2, "of": "listen"}  # no bad_state for the late stop
    assert took_s < 30


@pytest.mark.parametrize("name, says", [("x" * 200_000, "200000 characters long; at most 64"),
                                        ("mr-bones\n2024 host.server: forged", "may hold only letters"),
                                        ("", "is empty")])
def test_bad_names_are_refused_and_logged_escaped(host_config, backends, caplog, name, says):
    async def go():
        host = await Host(_config(host_config), backends).start()
        try:
            ws = await _hello(host.port, name)
            return await _closed(ws)
        finally:
            await host.stop()
    with caplog.at_level(logging.INFO):
        code, reason = asyncio.run(go())
    assert code == p.CLOSE_BAD_HELLO and "skull" in reason and says[:20] in reason
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "\n2024 host.server: forged" not in text and len(text) < 5000


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_two_thousand_names_leave_memory_and_log_bounded(host_config, backends):
    """2,000 connections, each with a distinct name (half at the 64-character limit, half 200 KB
    names that are refused): the host keeps at most max_skulls conversations, RSS returns to
    within 20 MB, and the log stays under 100 lines per peer-minute's budget."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())
    keep = Keep(logging.INFO)
    logging.getLogger("host").addHandler(keep)
    logging.getLogger("host").setLevel(logging.INFO)

    async def go():
        host = await Host(_config(host_config, max_skulls=50), backends).start()
        try:
            async def one(i: int):
                if i % 2:
                    ws = await _hello(host.port, f"{i:05d}-" + "b" * 200_000)
                    await _closed(ws)
                else:
                    ws = await _welcomed(host.port, f"{i:05d}-" + "n" * 58)
                    await ws.close()
            for i in range(0, 100, 10):  # warm up: the first connections build caches
                await asyncio.gather(*(one(i + k) for k in range(10)))
            gc.collect()
            before = _rss_mb()
            for i in range(100, 2100, 20):
                await asyncio.gather(*(one(i + k) for k in range(20)))
            await asyncio.sleep(0.2)
            gc.collect()
            return before, _rss_mb(), len(host.conversations), len(host.timings._turns)
        finally:
            await host.stop()
    try:
        before, after, kept, timings = asyncio.run(go())
    finally:
        logging.getLogger("host").removeHandler(keep)
    assert kept <= 50 and timings <= 50
    assert after - before < 20, f"RSS grew from {before:.0f} MB to {after:.0f} MB"
    log_bytes = sum(len(line) + 1 for line in lines)
    print(f"# RSS {before:.0f} -> {after:.0f} MB, log {log_bytes} bytes in {len(lines)} lines")  # for notes (-s)
    assert log_bytes < 400_000, f"{log_bytes} bytes of log for 2,000 connections"
    assert max(len(line) for line in lines) < 400


class RecallingWriter:
    """A reply model that mentions the last visitor when it is told about one."""
    name, sees_images = "recalling", False

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s

    def reply(self, ctx) -> str:
        time.sleep(self.delay_s)
        if ctx.history:
            return "I remember you and your fine hat."
        return "Welcome, stranger, to my crypt."

    def stream(self, ctx, cancel: threading.Event | None = None):
        yield self.reply(ctx)


def test_a_conversation_is_forgotten_after_the_idle_time(host_config, backends):
    async def go():
        cfg = _config(host_config, conversation_idle_s=0.8)
        host = await Host(cfg, dataclasses.replace(backends, reply=RecallingWriter())).start()
        try:
            ws = await _welcomed(host.port, "mr-bones")
            replies = []
            await _ask(ws, 1)
            replies.append((await _until_done(ws))[-1]["reply"])
            await _ask(ws, 2)  # at once: the same visitor
            replies.append((await _until_done(ws))[-1]["reply"])
            await asyncio.sleep(1.2)  # idle: the next visitor is someone else
            await _ask(ws, 3)
            replies.append((await _until_done(ws))[-1]["reply"])
            await ws.close()
            await asyncio.sleep(1.2)
            host.forget_idle()
            return replies, dict(host.conversations)
        finally:
            await host.stop()
    replies, kept = asyncio.run(go())
    assert "Welcome" in replies[0] and "remember" in replies[1] and "Welcome" in replies[2]
    assert kept == {}  # not connected and idle: its memory is gone


def test_a_token_holder_cannot_take_over_a_name_with_its_own_token(host_config, backends):
    cfg = dataclasses.replace(_config(host_config, token="shared-T0ken"),
                              skulls={"mr-bones": SkullEntry("bones-own-token")})

    async def go():
        host = await Host(cfg, backends).start()
        try:
            bones = await _welcomed(host.port, "mr-bones", "bones-own-token")
            thief = await _hello(host.port, "mr-bones", "shared-T0ken")
            code, reason = await _closed(thief)
            await asyncio.wait_for(await bones.ping(), 5)  # the real skull is still connected
            await bones.send('{"type":"listen","turn":1}')
            assert json.loads(await asyncio.wait_for(bones.recv(), 5))["type"] == "ack"
            other = await _welcomed(host.port, "lady-bones", "shared-T0ken")  # the shared token still works
            await other.close()
            await bones.close()
            return code, reason
        finally:
            await host.stop()
    code, reason = asyncio.run(go())
    assert code == p.CLOSE_UNAUTHORIZED and "own token" in reason and "[skulls.mr-bones]" in reason


def test_two_skulls_under_one_name_are_told_so(host_config, backends, caplog):
    async def go():
        host = await Host(_config(host_config), backends).start()
        try:
            first = await _welcomed(host.port, "mr-bones")
            reasons = []
            for _ in range(4):  # the pair flaps: each new connection knocks the other off
                second = await _welcomed(host.port, "mr-bones")
                reasons.append(await _closed(first))
                first = second
            await first.close()
            return reasons
        finally:
            await host.stop()
    with caplog.at_level(logging.WARNING, logger="host.server"):
        reasons = asyncio.run(go())
    assert all(code == p.CLOSE_REPLACED and reason.startswith("another skull is using the name mr-bones")
               for code, reason in reasons)
    assert any("another skull is using the name mr-bones" in r.getMessage() for r in caplog.records)


def test_turns_past_max_turns_wait_in_line_and_hear_one_moment(host_config, backends):
    cfg = _config(host_config, max_turns=1, queue_notice_s=0.3)

    async def go():
        host = await Host(cfg, dataclasses.replace(backends, reply=RecallingWriter(delay_s=2.0))).start()
        try:
            a, b = await _welcomed(host.port, "a"), await _welcomed(host.port, "b")
            seen = {}

            async def turn(ws, name):
                speech = []
                await _ask(ws, 1)
                while True:
                    frame = await asyncio.wait_for(ws.recv(), 60)
                    if isinstance(frame, bytes):
                        continue
                    msg = json.loads(frame)
                    if msg["type"] == "speech":
                        speech.append(msg["text"])
                    if msg["type"] == "done":
                        seen[name] = (speech, msg)
                        return
            await asyncio.gather(turn(a, "a"), turn(b, "b"))
            return seen
        finally:
            await host.stop()
    seen = asyncio.run(go())
    waited = [name for name, (speech, _) in seen.items() if speech[0].startswith("One moment")]
    assert len(waited) == 1, seen  # exactly one waited; it heard the line first, then its answer
    speech, done = seen[waited[0]]
    assert len(speech) >= 2 and "Welcome" in done["reply"] and "One moment" not in done["reply"]
    assert done["segments"] == len(speech)
    other = seen["b" if waited[0] == "a" else "a"][1]
    assert done["timings_ms"]["queued"] >= 1000 and "queued" not in other["timings_ms"]  # the wait is named
    assert done["timings_ms"]["total"] >= done["timings_ms"]["queued"]


def test_done_carries_tts_total_and_the_doc_names_everything_the_code_sends(host_config, backends):
    async def go():
        host = await Host(_config(host_config), backends).start()
        try:
            ws = await _welcomed(host.port)
            await _ask(ws, 1)
            got = await _until_done(ws)
            await ws.close()
            return got[-1]["timings_ms"]
        finally:
            await host.stop()
    timings = asyncio.run(go())
    assert timings["tts"] > 0 and timings["tts"] >= timings.get("tts_first_segment", 0) * 0  # total synthesis
    doc = (ROOT / "docs" / "protocol.md").read_text()
    named = set(re.findall(r"`([a-z_0-9]+)`", doc))
    emitted = set(p.CLIENT_MESSAGES) | set(p.HOST_MESSAGES)
    emitted |= {getattr(p, n) for n in dir(p) if n.startswith("E_")}
    # every key TurnTimings can put in timings_ms, read from its source
    import inspect
    source = inspect.getsource(ev.TurnTimings)
    emitted |= set(re.findall(r't\["([a-z_]+)"\]', source)) | set(re.findall(r'setdefault\("([a-z_]+)"', source))
    emitted |= set(ev.TurnTimings.STAGES) | set(timings)
    assert emitted - named == set(), f"not in docs/protocol.md: {sorted(emitted - named)}"
    codes = {getattr(p, n) for n in dir(p) if n.startswith("CLOSE_")}
    assert {c for c in codes if f"| {c} |" not in doc} == set()



def test_a_refused_peer_that_kept_sending_is_closed_at_once(host_config, backends):
    """A peer that sent more frames than the incoming queue holds before its hello was refused:
    its close reply sits behind them. The host reads them away, so the connection ends at once
    instead of lingering (and pinging unanswered) for the whole close timeout."""
    async def go():
        host = await Host(_config(host_config), backends).start()
        try:
            ws = await connect(f"ws://127.0.0.1:{host.port}", max_size=None, ping_interval=None)
            await ws.send(json.dumps({"type": "hello", "protocol": 1, "skull": "x" * 70_000, "token": ""}))
            for _ in range(40):
                await ws.send(json.dumps({"type": "listen", "turn": 1}))
            t0 = time.monotonic()
            code, _ = await _closed(ws)
            await ws.wait_closed()
            return code, time.monotonic() - t0
        finally:
            await host.stop()
    code, took_s = asyncio.run(go())
    assert code == p.CLOSE_BAD_HELLO
    assert took_s < 3, f"the refused connection lingered {took_s:.1f} s"


def test_fuzzed_frames_leave_the_host_process_answering():
    """bench/fuzz.py, shortened: a host in its own process takes a few thousand seeded hostile
    frames over many connections (bad hellos, undecodable JSON, unannounced binary, turns cut
    short); no traceback, the process lives, every connection answers pings, and a calm skull
    afterwards still hears an answer."""
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "fuzz.py"), "--target", "host", "--frames", "4000",
                          "--seed", "7"], capture_output=True, text=True, timeout=120)
    line = run.stdout.strip().splitlines()[-1]
    figures = dict(item.split("=") for item in line.split())
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert figures["target"] == "host" and int(figures["frames"]) >= 4000
    assert figures["tracebacks"] == "0" and figures["exits"] == "0" and figures["answered"] == "1"
    assert figures["missed_pongs"] == "0"


def test_a_skull_held_past_the_hosts_limit_hears_the_answer(host_config, backends):
    """The host's max_record_s (1 s) is shorter than the skull's own (15 s) and the button stays
    down: the recording ends at the host's limit and the skull speaks the answer, button held.
    The simulated mic runs 3 times faster than real time, so the host's limit comes before the
    skull's own timer and its ack of the stop is what ends the skull's recording."""
    from conftest import sim_body, skull_config, start_host, wait_for
    from skull.agent import Agent
    from skull.machine import State

    async def go():
        host = await start_host(_config(host_config, max_record_s=1.0), backends)
        cfg = skull_config(host.port)
        agent = Agent(cfg, sim_body(cfg, speed=3.0))
        task = asyncio.create_task(agent.run())
        try:
            await wait_for(lambda: agent.state is State.IDLE)
            agent.turn_ended.clear()
            t0 = time.monotonic()
            agent.body.panel.button.pin.drive_low()  # and never released
            await asyncio.wait_for(agent.turn_ended.wait(), 30)
            took_s = time.monotonic() - t0
            agent.body.panel.button.pin.drive_high()
            return agent.finished[-1], took_s
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await host.stop()
    rec, took_s = asyncio.run(go())
    assert rec.outcome == "answered" and rec.segments, rec.outcome
    assert len(rec.question) / 2 / rec.question_rate < 1.6  # the recording ended at about the host's limit
    assert took_s < 20
