"""Idle life: attract lines every N minutes with no visitor (random, none repeated until all were
said, none in quiet hours, across midnight too), a greeting when the host comes back, a small
bounded idle jaw, and the LED breathing on every kind of panel. A fake clock runs the night."""
from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from host.config import HostConfig, ServerConfig
from skull import events as ev
from skull.agent import Agent
from skull.boards import BoardPanel
from skull.config import IdleConfig, PinsConfig, SkullConfig
from skull.core.errors import ConfigError
from skull.core.validate import build
from skull.devices import GpioPanel
from skull.idle import GREETING_AFTER_S, IdleLife
from skull.lines import IDLE_JAW_MAX
from skull.machine import LedPattern, State

from conftest import sim_body, skull_config, start_host, wait_for


class Clock:
    """Wall-clock seconds that move only when told."""

    def __init__(self, hh: int = 12, mm: int = 0):
        self.t = at(hh, mm)

    def __call__(self) -> float:
        return self.t


def at(hh: int, mm: int, day: int = 10) -> float:
    """Epoch seconds of ``hh:mm`` local time on a fixed day."""
    return time.mktime((2026, 10, day, hh, mm, 0, 0, 0, -1))


def life(clock, **idle) -> IdleLife:
    return IdleLife(IdleConfig(**idle), clock=clock, period_s=0.02)


# --- the schedule, pure ---------------------------------------------------------------------

def test_an_attract_line_every_n_minutes_with_no_visitor():
    clock = Clock(12, 0)
    idle = life(clock, attract_every_min=10)
    said = []
    for minute in range(61):
        clock.t = at(12, 0) + minute * 60
        said += [minute] if idle.due(State.IDLE, False) == "attract" else []
    assert said == [10, 20, 30, 40, 50, 60]
    idle.visitor()  # someone came at 13:00: the next one is ten minutes after them
    clock.t += 9 * 60
    assert idle.due(State.IDLE, False) is None
    clock.t += 60
    assert idle.due(State.IDLE, False) == "attract"


def test_no_attract_line_during_a_turn_a_line_offline_or_when_off():
    clock = Clock()
    idle = life(clock, attract_every_min=1)
    clock.t += 120
    assert [idle.due(s, False) for s in (State.LISTENING, State.THINKING, State.SPEAKING, State.OFFLINE)] == [None] * 4
    assert idle.due(State.IDLE, True) is None  # a line is playing
    assert idle.due(State.IDLE, False) == "attract"
    off = life(clock)
    clock.t += 10 ** 6
    assert off.due(State.IDLE, False) is None


@pytest.mark.parametrize("hh, mm, quiet", [(21, 59, False), (22, 0, True), (23, 30, True), (0, 0, True),
                                           (3, 0, True), (7, 59, True), (8, 0, False), (12, 0, False)])
def test_quiet_hours_wrap_past_midnight(hh, mm, quiet):
    clock = Clock(hh, mm)
    idle = life(clock, attract_every_min=1, quiet_hours="22:00-08:00")
    assert idle.in_quiet_hours() is quiet
    clock.t += 60
    expect = None if idle.in_quiet_hours() else "attract"
    assert idle.due(State.IDLE, False) == expect


def test_a_night_of_quiet_hours_says_nothing_and_the_morning_does():
    clock = Clock(21, 0)
    idle = life(clock, attract_every_min=30, quiet_hours="22:00-08:00")
    said = []
    for minute in range(0, 13 * 60):
        clock.t = at(21, 0) + minute * 60
        if idle.due(State.IDLE, False) == "attract":
            said.append(time.strftime("%H:%M", time.localtime(clock.t)))
    assert said[0] == "21:30" and "08:00" in said
    assert all(not ("22:00" <= s or s < "08:00") for s in said), said


def test_quiet_hours_are_checked():
    for bad, says in (("22-08", "HH:MM-HH:MM"), ("25:00-08:00", "hours are 0..23"), ("08:00-08:00", "the same")):
        with pytest.raises(ConfigError, match=rf"\[idle\]: quiet_hours = .*{says}"):
            build(SkullConfig, {"idle": {"quiet_hours": bad}}, "skull.toml")
    with pytest.raises(ConfigError, match="attract_every_min"):
        build(SkullConfig, {"idle": {"attract_every_min": -1}}, "skull.toml")


def test_a_greeting_only_when_the_host_comes_back_after_a_real_loss():
    clock = Clock()
    idle = life(clock)
    assert idle.host_changed(True) is False  # the first connection of the night
    assert idle.host_changed(False) is False
    clock.t += 2
    assert idle.host_changed(True) is False  # a blink of the link is no return from the dead
    idle.host_changed(False)
    clock.t += GREETING_AFTER_S
    assert idle.host_changed(False) is False  # still down: the loss counts from the first
    assert idle.host_changed(True) is True
    quiet = life(clock, greeting=False)
    quiet.host_changed(True), quiet.host_changed(False)
    clock.t += 600
    assert quiet.host_changed(True) is False


# --- a skull with a host, on the fake clock ----------------------------------------------------

def _skull(port, tmp_path, clock, **idle):
    cfg = skull_config(port)
    cfg = dataclasses.replace(cfg, offline=dataclasses.replace(cfg.offline, cache_dir=str(tmp_path / "lines")),
                              idle=IdleConfig(**idle))
    agent = Agent(cfg, sim_body(cfg, speed=8.0), idle=life(clock, **idle))
    got = []
    agent.events.subscribe(got.append)
    return agent, got


def test_attract_lines_with_a_fake_clock_none_repeated_until_all_were_said(tmp_path, backends):
    clock = Clock(12, 0)

    async def go():
        host = await start_host(HostConfig(server=ServerConfig(port=0)), backends)
        agent, got = _skull(host.port, tmp_path, clock, attract_every_min=5)
        task = asyncio.create_task(agent.run())
        try:
            await wait_for(lambda: agent.voice.lines is not None and agent.state is State.IDLE, 60)
            for _ in range(8):
                clock.t += 5 * 60
                n = len([e for e in got if isinstance(e, ev.LineSaid)])
                await wait_for(lambda: len([e for e in got if isinstance(e, ev.LineSaid)]) > n, 10)
                await wait_for(lambda: not agent.machine.saying, 20)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await host.stop()
        return [e for e in got if isinstance(e, ev.LineSaid)]
    said = asyncio.run(go())
    assert [e.kind for e in said] == ["attract"] * 8 and {e.source for e in said} == {"cache"}
    texts = [e.text for e in said]
    assert len(set(texts[:4])) == 4 and len(set(texts[4:])) == 4  # each round says every line once
    assert all(a != b for a, b in zip(texts, texts[1:]))


def test_no_attract_line_in_quiet_hours_on_a_running_skull(tmp_path, backends):
    clock = Clock(23, 0)

    async def go():
        host = await start_host(HostConfig(server=ServerConfig(port=0)), backends)
        agent, got = _skull(host.port, tmp_path, clock, attract_every_min=1, quiet_hours="22:00-08:00")
        task = asyncio.create_task(agent.run())
        try:
            await wait_for(lambda: agent.voice.lines is not None and agent.state is State.IDLE, 60)
            for _ in range(5):
                clock.t += 60
                await asyncio.sleep(0.1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await host.stop()
        return [e for e in got if isinstance(e, ev.LineSaid)]
    assert asyncio.run(go()) == []


def test_a_greeting_when_the_host_comes_back(tmp_path, backends):
    clock = Clock()

    async def go():
        host = await start_host(HostConfig(server=ServerConfig(port=0)), backends)
        port = host.port
        agent, got = _skull(port, tmp_path, clock)
        task = asyncio.create_task(agent.run())
        try:
            await wait_for(lambda: agent.voice.lines is not None and agent.state is State.IDLE, 60)
            assert not [e for e in got if isinstance(e, ev.LineSaid)]  # no greeting at the first connection
            await host.stop()
            await wait_for(lambda: agent.state is State.OFFLINE, 10)
            clock.t += GREETING_AFTER_S
            host = await start_host(HostConfig(server=ServerConfig(port=0)), backends, port=port)
            await wait_for(lambda: [e for e in got if isinstance(e, ev.LineSaid)], 20)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await host.stop()
        return [e for e in got if isinstance(e, ev.LineSaid)]
    said = asyncio.run(go())
    assert [(e.kind, e.text) for e in said] == [("greeting", "I'm back from the dead!")]


def test_the_idle_jaw_moves_a_little_and_never_past_its_bound(tmp_path, backends):
    clock = Clock()

    async def go():
        host = await start_host(HostConfig(server=ServerConfig(port=0)), backends)
        agent, got = _skull(host.port, tmp_path, clock, idle_jaw=True)
        task = asyncio.create_task(agent.run())
        try:
            await wait_for(lambda: agent.state is State.IDLE, 60)
            for _ in range(3):
                clock.t += 61
                await wait_for(lambda: agent.machine.saying, 5)
                await wait_for(lambda: not agent.machine.saying, 10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await host.stop()
        return agent, got
    agent, got = asyncio.run(go())
    log = [e for e in agent.body.jaw.log if e.pulse_us is not None]
    openings = [e.opening for e in log]
    assert max(openings) > 0.02, "the idle jaw never moved"
    assert max(openings) <= IDLE_JAW_MAX + 1e-6
    cal = agent.config.calibration
    lo, hi = sorted((cal.closed_us, cal.open_us))
    assert all(lo <= e.pulse_us <= hi for e in log)
    assert not [e for e in got if isinstance(e, ev.LineSaid)]  # a movement, not a line


# --- the LED breathes ------------------------------------------------------------------------

def test_the_led_breathes_by_pwm_where_the_pin_can_dim():
    with GpioPanel(PinsConfig(), MockFactory(pin_class=MockPWMPin), breathe=True) as panel:
        panel.set_led(LedPattern.BREATHE)
        seen = set()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            seen.add(round(panel.led.value, 1))
            time.sleep(0.02)
    assert panel.dims and len(seen - {0.0, 1.0}) >= 3, f"no dimming: {sorted(seen)}"
    assert panel.led.closed


def test_the_led_breathes_as_a_slow_blink_where_it_cannot_dim():
    factory = MockFactory()  # plain pins: no PWM
    with GpioPanel(PinsConfig(), factory, breathe=True) as panel:
        panel.set_led(LedPattern.BREATHE)
        time.sleep(1.3)
        states = [s.state for s in factory.pin(PinsConfig().led).states]
    assert not panel.dims and set(states) <= {0, 1} and states.count(1) >= 1 and states.count(0) >= 2


def test_a_boards_led_breathes_as_a_slow_blink():
    class Board:  # what BoardPanel needs of a board: its LED switch
        def __init__(self):
            self.calls = []

        def led(self, on):
            self.calls.append((time.monotonic(), on))
    board = Board()
    panel = BoardPanel(board)
    panel.set_led(LedPattern.BREATHE)
    time.sleep(1.2)
    panel.close()
    (t_on, first), (t_off, second) = board.calls[:2]
    assert (first, second) == (True, False) and board.calls[-1][1] is False
    assert t_off - t_on >= 0.9  # on for a second: not the offline blink's flash of 0.1 s


def test_an_idle_skull_shows_breathe_when_asked(tmp_path, backends):
    async def go():
        host = await start_host(HostConfig(server=ServerConfig(port=0)), backends)
        cfg = skull_config(host.port)
        cfg = dataclasses.replace(cfg, idle=IdleConfig(led_breathe=True),
                                  offline=dataclasses.replace(cfg.offline, cache_dir=str(tmp_path)))
        agent = Agent(cfg, sim_body(cfg))
        task = asyncio.create_task(agent.run())
        try:
            await wait_for(lambda: agent.state is State.IDLE, 60)
            idle_led = agent.led
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await host.stop()
        return idle_led, agent.body.panel
    idle_led, panel = asyncio.run(go())
    assert idle_led is LedPattern.BREATHE and panel.dims
    assert panel.led.closed  # closed, off, on the way out
