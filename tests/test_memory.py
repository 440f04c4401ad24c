"""Nothing the skull keeps grows with the number of turns: the jaw's command log, the simulated
pins' state histories, the finished turns (only the newest keeps its audio) and the recorded
folders stay under their caps however many turns go by. (bench/memory.py measures the RSS.)"""
import asyncio

import numpy as np
import pytest

from conftest import sim_body, skull_config, start_host, wait_for
from host.build import build_backends
from skull.agent import KEEP_FINISHED, Agent
from skull.audio.player import ClockPlayer
from skull.config import Calibration, PinsConfig
from skull.core.wav import write_wav
from skull.devices import PIN_STATES_MAX, GpioPanel, pin_factory
from skull.jaw.base import LOG_MAX
from skull.jaw.gpio import GpioJaw
from skull.machine import LedPattern, State
from test_faults import fake_servers_host

SPEED = 40.0


def test_the_jaw_log_and_the_simulated_pins_keep_only_their_newest_entries():
    factory = pin_factory(sim=True)
    jaw = GpioJaw(18, Calibration(), pin_factory=factory)
    panel = GpioPanel(PinsConfig(), factory)
    try:
        for i in range(3 * LOG_MAX):
            jaw.move((i % 10) / 10)
        button = panel.button.pin
        for i in range(PIN_STATES_MAX + 500):
            panel.set_led(LedPattern.ON if i % 2 else LedPattern.OFF)
            (button.drive_low if i % 2 else button.drive_high)()
        servo = jaw._servo.pwm_device.pin
        assert len(jaw.log) == LOG_MAX and jaw.log[-1].opening == pytest.approx(((3 * LOG_MAX - 1) % 10) / 10)
        assert len(servo.states) == PIN_STATES_MAX
        assert len(button.states) == PIN_STATES_MAX and len(panel.led.pin.states) == PIN_STATES_MAX
        assert panel.button.is_pressed == (not button.state)
    finally:
        jaw.close(settle_s=0)
        panel.close()
    assert jaw.log[-1].pulse_us is None  # still closed and detached at the end


@pytest.fixture(scope="module")
def quick_host(tmp_path_factory):
    with fake_servers_host(tmp_path_factory.mktemp("host"), scale=0.02) as cfg:
        yield cfg


def test_finished_turns_keep_their_audio_only_while_newest(quick_host, tmp_path):
    question = tmp_path / "question.wav"
    write_wav(question, 0.3 * np.sin(np.arange(8000) * 2 * np.pi * 220 / 16000).astype(np.float32), 16000)
    turns = KEEP_FINISHED + 2

    async def run():
        host = await start_host(quick_host, build_backends(quick_host))
        cfg = skull_config(host.port)
        body = sim_body(cfg, question=question, speed=SPEED)
        body.player = ClockPlayer(speed=SPEED)
        agent = Agent(cfg, body, record_dir=tmp_path / "sessions")
        task = asyncio.create_task(agent.run())
        pin, loop = body.panel.button.pin, asyncio.get_running_loop()
        try:
            await wait_for(lambda: agent.state is State.IDLE)
            for _ in range(turns):
                spoken = asyncio.Event()
                body.mic.on_finished = lambda: loop.call_soon_threadsafe(spoken.set)
                agent.turn_ended.clear()
                pin.drive_low()
                await asyncio.wait_for(spoken.wait(), 20)
                pin.drive_high()
                await asyncio.wait_for(agent.turn_ended.wait(), 20)
                await wait_for(lambda: agent.state is State.IDLE, 20)
            return agent
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await host.stop()

    agent = asyncio.run(run())
    finished = agent.finished
    assert len(finished) == KEEP_FINISHED and finished[-1].turn == turns
    assert all(r.outcome == "answered" and r.transcript and r.reply for r in finished), "the words are all kept"
    newest, older = finished[-1], finished[:-1]
    assert len(newest.question) > 0 and sum(len(s.samples) for s in newest.segments) > 0 and newest.snapshot
    for r in older:
        assert not r.question and r.snapshot is None and not r.commands
        assert r.segments and all(len(s.samples) == 0 and len(s.jaw) == 0 for s in r.segments)
    assert len(agent.recorded) == KEEP_FINISHED and agent.recorded[-1].name == f"turn-{turns:03d}"
    assert len(list((tmp_path / "sessions").iterdir())) == turns, "every turn was recorded all the same"
    assert agent.follower.commands == [] and not agent.records
    assert len(agent.body.jaw.log) <= LOG_MAX
