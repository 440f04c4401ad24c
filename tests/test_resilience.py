"""The skull survives its host going away, and leaves the hardware safe however it stops."""
import asyncio
import signal
import subprocess
import sys
import time


from conftest import ask, press_and_speak, sim_body, skull_config, start_host, wait_for
from skull.agent import Agent
from skull.supervisor import backoff_delays
from skull.machine import LedPattern, State


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_host_restart_mid_conversation(host_config, backends):
    """Host stopped while the skull speaks: jaw closes, LED blinks; host back: reconnect < 5 s, next turn works."""
    async def go():
        port = _free_port()
        host = await start_host(host_config, backends, port)
        cfg = skull_config(port)
        body = sim_body(cfg)
        agent = Agent(cfg, body)
        task = asyncio.create_task(agent.run())
        try:
            await wait_for(lambda: agent.state is State.IDLE)
            await press_and_speak(agent, 20)
            await wait_for(lambda: agent.state is State.SPEAKING, timeout=30)
            await wait_for(lambda: body.jaw.opening > 0.2, timeout=10)
            await host.stop()  # the host goes away mid-answer
            await wait_for(lambda: agent.state is State.OFFLINE, timeout=5)
            await wait_for(lambda: body.jaw.opening == 0.0, timeout=1)
            assert body.panel.pattern is LedPattern.OFFLINE
            assert not body.player.timeline.busy  # the rest of the answer was dropped
            assert agent.finished[-1].outcome == "disconnected"
            await asyncio.sleep(1.5)  # down for a while; the skull keeps trying
            host = await start_host(host_config, backends, port)
            back = time.monotonic()
            await wait_for(lambda: agent.state is State.IDLE, timeout=5)
            reconnect_s = time.monotonic() - back
            rec = await ask(agent)
            return reconnect_s, rec, agent.link.connects
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await host.stop()

    reconnect_s, rec, connects = asyncio.run(go())
    assert reconnect_s < 5.0
    assert connects == 2
    assert rec.outcome == "answered" and rec.turn == 2 and rec.segments


def test_backoff_is_capped_with_jitter():
    import random
    d = backoff_delays(0.2, 2.0, random.Random(1))
    delays = [next(d) for _ in range(10)]
    assert delays[0] < delays[1] < delays[2]
    assert all(0.2 <= x <= 2.0 * 1.25 for x in delays)
    assert len({round(x, 6) for x in delays[5:]}) > 1  # jittered, not lock-step


def _started_turn(host_config, backends, stop_how):
    async def go():
        host = await start_host(host_config, backends)
        cfg = skull_config(host.port)
        body = sim_body(cfg, speed=1.0)
        agent = Agent(cfg, body)
        task = asyncio.create_task(agent.run())
        try:
            await wait_for(lambda: agent.state is State.IDLE)
            rec_task = asyncio.create_task(ask(agent))
            await wait_for(lambda: agent.state is State.SPEAKING and body.jaw.opening > 0.2, timeout=40)
            await stop_how(agent, task)
            rec_task.cancel()
            await asyncio.gather(task, rec_task, return_exceptions=True)
        finally:
            if not task.done():
                task.cancel()
            await host.stop()
        return body, task
    return asyncio.run(go())


def _assert_safe(body):
    assert body.jaw.log[-2][1] == 0.0 and body.jaw.log[-2][2] == body.jaw.calibration.closed_us  # closed...
    assert body.jaw.log[-1][2] is None  # ...then detached
    assert not body.jaw.attached
    assert body.panel.led.closed and body.panel.pattern is LedPattern.OFF


def test_cancelled_mid_answer_leaves_jaw_closed_and_led_off(host_config, backends):
    async def cancel(agent, task):  # what Ctrl-C does to asyncio.run's main task
        task.cancel()
    body, task = _started_turn(host_config, backends, cancel)
    _assert_safe(body)


def test_demo_ctrl_c_exits_cleanly():
    # Ctrl-C as a terminal sends it, also when the tests themselves run as a background job (which
    # starts with SIGINT ignored, and a child inherits that)
    proc = subprocess.Popen([sys.executable, "-m", "skull", "demo", "--no-audio"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(6)  # host up, question being asked
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert "jaw is closed" in out
