"""The skull survives any single failure: a message handler, a device or the microphone raising
mid-turn, a session loop that breaks, and a hostile host (a malformed welcome, JSON nested past
the decoder's depth, a 5000-digit integer, a lone surrogate). Each time the jaw is shut within
one servo frame, the turn ends "failed", the agent keeps running and the next turn is answered.
Real host, real websocket on loopback, MockFactory skull."""
from __future__ import annotations

import asyncio
import logging
import time

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from conftest import ask, press_and_speak, sim_body, skull_config, start_host, wait_for
from skull.agent import Agent
from skull.core import protocol as p
from skull.machine import State

SERVO_FRAME_S = 0.020


class Boom(RuntimeError):
    """An unexpected failure, raised on purpose."""


def jaw_shut_after(jaw, t_fail: float, window_s: float = 0.4) -> bool:
    """The jaw was commanded shut within one servo frame of ``t_fail`` and stayed shut (or
    detached) for ``window_s`` after that frame."""
    cmds = [e for e in jaw.log if t_fail <= e.t <= t_fail + SERVO_FRAME_S + window_s]
    first_frame = [e for e in cmds if e.t <= t_fail + SERVO_FRAME_S + 0.005]
    later = [e for e in cmds if e.t > t_fail + SERVO_FRAME_S + 0.005]
    shut_in_time = any(e.opening == 0.0 for e in first_frame) or (not first_frame and jaw.opening == 0.0)
    return shut_in_time and all(e.opening == 0.0 for e in later)


async def press_until_the_turn_ends(agent, timeout: float = 10.0):
    """Hold the button until the turn ends by itself (it failed), then let go."""
    pin = agent.body.panel.button.pin
    agent.turn_ended.clear()
    pin.drive_low()
    await asyncio.wait_for(agent.turn_ended.wait(), timeout)
    pin.drive_high()
    await asyncio.sleep(0.1)
    return agent.finished[-1]


def run_with_agent(host_config, backends, scenario, speed: float = 3.0):
    async def go():
        host = await start_host(host_config, backends)
        cfg = skull_config(host.port)
        body = sim_body(cfg, speed=speed)
        agent = Agent(cfg, body)
        task = asyncio.create_task(agent.run())
        try:
            await wait_for(lambda: agent.state is State.IDLE)
            return await scenario(agent, body, task)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await host.stop()
    return asyncio.run(go())


def test_message_handler_failing_mid_answer_is_survived(host_config, backends, caplog):
    """The handler of ``done`` raises while the jaw is open mid-sentence."""
    async def scenario(agent, body, task):
        real = agent.link.on_message
        failed = []

        async def handler(msg, payload):
            if isinstance(msg, p.Done) and not failed:
                await wait_for(lambda: body.jaw.opening > 0.2, timeout=10, step=0.002)
                failed.append(time.monotonic())
                raise Boom("the done handler broke")
            await real(msg, payload)
        agent.link.on_message = handler
        broken = await ask(agent)
        await asyncio.sleep(0.5)
        alive = not task.done() and agent.state is State.IDLE
        again = await ask(agent)
        return broken, again, body.jaw, failed[0], alive
    with caplog.at_level(logging.ERROR, logger="skull.link"):
        broken, again, jaw, t_fail, alive = run_with_agent(host_config, backends, scenario, speed=1.5)
    assert broken.outcome == "failed" and alive
    assert jaw_shut_after(jaw, t_fail), [e for e in jaw.log if e.t >= t_fail - 0.05][:12]
    assert again.outcome == "answered" and again.segments
    assert any("handling done from the host failed" in r.getMessage() and "Boom" in r.getMessage()
               for r in caplog.records)


def test_a_device_failing_mid_turn_is_survived(host_config, backends):
    """The LED breaks when the host says yes: the turn ends safely; the next press works."""
    async def scenario(agent, body, task):
        panel = body.panel
        real = panel.set_led
        broke = []

        def set_led(pattern):
            if pattern.value == "on" and not broke:
                broke.append(time.monotonic())
                raise Boom("LED driver fault")
            real(pattern)
        panel.set_led = set_led
        broken = await press_until_the_turn_ends(agent)
        again = await ask(agent)
        return broken, again, body.jaw, broke[0], not task.done()
    broken, again, jaw, t_fail, alive = run_with_agent(host_config, backends, scenario)
    assert broken.outcome == "failed" and alive
    assert jaw_shut_after(jaw, t_fail)
    assert again.outcome == "answered" and again.segments


def test_the_microphone_failing_mid_recording_is_survived(host_config, backends):
    async def scenario(agent, body, task):
        mic = body.mic
        real = mic._play
        broke = []

        def play(on_chunk):
            if not broke:
                on_chunk(mic.pcm[:3200])
                broke.append(time.monotonic())
                raise Boom("microphone unplugged")
            real(on_chunk)
        mic._play = play
        broken = await press_until_the_turn_ends(agent)  # the visitor talks; the mic dies under them
        again = await ask(agent)
        return broken, again, body.jaw, broke[0], not task.done()
    broken, again, jaw, t_fail, alive = run_with_agent(host_config, backends, scenario)
    assert broken.outcome == "failed" and alive
    assert jaw_shut_after(jaw, t_fail)
    assert again.outcome == "answered" and "costume" in again.transcript


def test_a_microphone_that_will_not_start_is_survived(host_config, backends):
    async def scenario(agent, body, task):
        mic = body.mic
        real = mic.start
        calls = []

        def start(on_chunk):
            calls.append(1)
            if len(calls) == 1:
                raise Boom("no such device")
            real(on_chunk)
        mic.start = start
        broken = await press_until_the_turn_ends(agent)
        return broken, await ask(agent), not task.done()
    broken, again, alive = run_with_agent(host_config, backends, scenario)
    assert broken.outcome == "failed" and alive
    assert again.outcome == "answered"


def test_a_broken_session_loop_restarts_and_the_skull_goes_on(host_config, backends, caplog):
    """Whatever escapes the session loop (here: the state machine itself raising once) is logged,
    leaves the hardware safe, and the session starts again with backoff."""
    async def scenario(agent, body, task):
        real = agent.machine.handle
        broke = []

        def handle(event):
            if type(event).__name__ == "Drained" and not broke:  # posted by the speaker thread
                broke.append(time.monotonic())
                raise Boom("state machine bug")
            return real(event)
        agent.machine.handle = handle
        await ask(agent)
        await wait_for(lambda: agent.state is State.IDLE, timeout=10)
        return await ask(agent), agent.supervisor.restarts, body.jaw, broke[0], not task.done()
    with caplog.at_level(logging.ERROR, logger="skull.agent"):
        again, restarts, jaw, t_fail, alive = run_with_agent(host_config, backends, scenario)
    assert alive and restarts == 1
    assert jaw_shut_after(jaw, t_fail)
    assert again.outcome == "answered"
    assert any("the skull's session failed" in r.getMessage() for r in caplog.records)


def test_a_view_that_raises_costs_the_skull_nothing(host_config, backends):
    async def scenario(agent, body, task):
        def broken_view(event):
            raise Boom("display crashed")
        agent.events.subscribe(broken_view)
        return await ask(agent), not task.done()
    rec, alive = run_with_agent(host_config, backends, scenario)
    assert rec.outcome == "answered" and alive


# --- a hostile host ------------------------------------------------------------------------------

NESTED = "[" * 100_000
HUGE_INT = '{"type":"heard","turn":' + "9" * 5000 + ',"transcript":"x","caption":"y"}'
SURROGATE = '{"type":"error","code":"bad_state","message":"\\ud800"}'
BAD_WELCOME = '{"type":"welcome","protocol":1}'


async def hostile_proxy(upstream: str, log: list):
    """A websocket server in front of the real host. First connection: answers hello with a
    malformed welcome. Later ones: pass hello and welcome through, then send the skull a
    deeply nested JSON frame, a 5000-digit integer and a lone surrogate, then relay both ways."""
    async def handler(ws):
        log.append("connection")
        hello = await ws.recv()
        if len(log) == 1:
            await ws.send(BAD_WELCOME)
            try:
                await ws.wait_closed()
            finally:
                return
        async with connect(upstream, max_size=p.TRANSPORT_MAX_BYTES) as up:
            await up.send(hello)
            await ws.send(await up.recv())  # the welcome
            for frame in (NESTED, HUGE_INT, SURROGATE):
                await ws.send(frame)
                log.append("sent hostile frame")

            async def pump(a, b):
                async for frame in a:
                    await b.send(frame)
            tasks = [asyncio.create_task(pump(ws, up)), asyncio.create_task(pump(up, ws))]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in tasks:
                t.cancel()
    return await serve(handler, "127.0.0.1", 0, max_size=p.TRANSPORT_MAX_BYTES)


def test_a_hostile_host_cannot_end_the_skull(host_config, backends, caplog):
    async def go():
        host = await start_host(host_config, backends)
        seen: list = []
        proxy = await hostile_proxy(f"ws://127.0.0.1:{host.port}", seen)
        cfg = skull_config(proxy.sockets[0].getsockname()[1])
        body = sim_body(cfg)
        agent = Agent(cfg, body)
        task = asyncio.create_task(agent.run())
        try:
            await wait_for(lambda: agent.state is State.IDLE, timeout=15)
            await wait_for(lambda: seen.count("sent hostile frame") == 3)
            await asyncio.sleep(0.2)
            rec = await ask(agent)
            return rec, seen, not task.done(), agent.link.connects
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            proxy.close()
            await proxy.wait_closed()
            await host.stop()
    with caplog.at_level(logging.WARNING):
        rec, seen, alive, connects = asyncio.run(go())
    assert alive
    assert seen.count("connection") == 2 and connects == 1  # the bad welcome was refused, then retried
    assert rec.outcome == "answered" and rec.segments
    said = [r.getMessage() for r in caplog.records]
    assert any("did not answer hello with a valid welcome" in m for m in said)
    assert any("nests arrays or objects too deeply" in m for m in said)
    assert any("cannot be read as JSON" in m and "4300" in m for m in said)
    assert any("lone UTF-16 surrogate" in m for m in said)
    assert not any(r.exc_info for r in caplog.records if r.name.startswith("skull"))  # no tracebacks


@pytest.mark.parametrize("frame, code", [(NESTED, p.E_BAD_JSON), (HUGE_INT, p.E_BAD_JSON), (SURROGATE, p.E_BAD_FIELD)])
def test_hostile_frames_are_protocol_errors(frame, code):
    with pytest.raises(p.ProtocolError) as e:
        p.decode_text(frame, p.HOST_MESSAGES)
    assert e.value.code == code


def test_a_state_machine_that_keeps_failing_still_leaves_the_jaw_shut(host_config, backends):
    """Even when the machine cannot handle the fault either, the jaw shuts and the LED goes off."""
    async def scenario(agent, body, task):
        real = agent.link.on_message
        broke = []

        async def handler(msg, payload):
            if isinstance(msg, p.Done) and not broke:
                await wait_for(lambda: body.jaw.opening > 0.2, timeout=10, step=0.002)
                agent.machine.handle = lambda event: (_ for _ in ()).throw(Boom("machine broken for good"))
                broke.append(time.monotonic())
                raise Boom("handler broke")
            await real(msg, payload)
        agent.link.on_message = handler
        await press_and_speak(agent, 20)
        await wait_for(lambda: bool(broke), timeout=20)
        await asyncio.sleep(0.5)
        return body.jaw, broke[0], agent.led, not task.done()
    jaw, t_fail, led, alive = run_with_agent(host_config, backends, scenario, speed=1.5)
    assert alive and jaw_shut_after(jaw, t_fail)
    assert led.value == "off"


def test_skull_run_keeps_running_against_a_hostile_host(host_config, backends, tmp_path):
    """The `skull run` program itself, as a show runs it: a bad welcome, then unreadable frames;
    it stays up, answers a press (Enter toggles the simulated button), and prints no traceback."""
    import os
    import sys

    from skull.core.data import bundled

    async def go():
        host = await start_host(host_config, backends)
        seen: list = []
        proxy = await hostile_proxy(f"ws://127.0.0.1:{host.port}", seen)
        port = proxy.sockets[0].getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "skull", "-v", "run", "--sim", "--no-audio", "--url", f"ws://127.0.0.1:{port}",
            "--mic-file", str(bundled("question.wav")), "--image", str(bundled("snapshot.jpg")),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        err_lines: list[str] = []

        async def read_err():
            async for line in proc.stderr:
                err_lines.append(line.decode(errors="replace"))
        reader = asyncio.create_task(read_err())
        try:
            await wait_for(lambda: seen.count("sent hostile frame") == 3, timeout=20)
            await asyncio.sleep(0.5)
            proc.stdin.write(b"\n")  # press
            await proc.stdin.drain()
            await asyncio.sleep(3.0)  # the question is 2.4 s long
            proc.stdin.write(b"\n")  # release
            await proc.stdin.drain()
            await wait_for(lambda: any("turn 1 " in line for line in err_lines), timeout=30)
            running = proc.returncode is None
        finally:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()
            reader.cancel()
            proxy.close()
            await proxy.wait_closed()
            await host.stop()
        return running, "".join(err_lines)
    running, err = asyncio.run(go())
    assert running
    assert "turn 1 answered" in err, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
