"""Human faults and resources at a show: a chattering button, a button held past the recording
limit, a stuck button, a press while the skull thinks, and a full disk under the recordings.

The button's guard is tested as a pure core with literal edges and times; the rest with the real
agent, a simulated board (gpiozero's MockFactory: ``pin.drive_low()`` presses the button) and a
real host on loopback whose backends are the standard fake servers.
"""
import asyncio
import contextlib
import dataclasses
import logging
import tempfile
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from conftest import sim_body, skull_config, start_host, wait_for
from host.build import build_backends
from host.config import load_host_config
from host.events import TurnStarted
from host.fakes.workload import Workload
from skull.agent import Agent
from skull.button import ButtonGuard, Press, Release
from skull.config import ButtonConfig, load_skull_config
from skull.core.errors import ConfigError
from skull.core.wav import write_wav
from skull.events import ButtonFreed, ButtonStuck, RecordingPaused, RecordingResumed, StateChanged
from skull.machine import State

SPEED = 8.0


# --- the guard alone: literal edges in, literal decisions out --------------------------------

def test_a_chattering_press_and_release_count_once_each():
    g = ButtonGuard(debounce_s=0.03, stuck_s=120.0)
    # the contacts bounce for 8 ms on the way down and 12 ms on the way up
    assert g.edge(True, 1.000) == [Press()]
    assert g.edge(False, 1.002) == []
    assert g.edge(True, 1.005) == []
    assert g.edge(False, 1.007) == []
    assert g.edge(True, 1.008) == []
    assert g.due() == pytest.approx(121.0)  # resting down, as counted: only the stuck time is due
    assert g.poll(1.5) == []
    assert g.edge(False, 2.000) == [Release()]
    assert g.edge(True, 2.004) == []
    assert g.edge(False, 2.012) == []
    assert g.poll(2.1) == []
    assert not g.down and not g.holding


def test_a_bounce_that_ends_in_the_other_position_counts_when_the_window_closes():
    g = ButtonGuard(debounce_s=0.03, stuck_s=120.0)
    assert g.edge(True, 1.000) == [Press()]
    assert g.edge(False, 1.010) == []  # a tap shorter than the debounce: up for good
    assert g.due() == pytest.approx(1.030)
    assert g.poll(1.029) == []
    assert g.poll(1.030) == [Release()]


def test_a_stuck_button_is_reported_once_releases_its_turn_and_is_ignored_until_it_comes_up():
    g = ButtonGuard(debounce_s=0.03, stuck_s=120.0)
    assert g.edge(True, 10.0) == [Press()]
    assert g.due() == pytest.approx(130.0)
    assert g.poll(129.9) == []
    assert g.poll(130.0) == [ButtonStuck(120.0), Release()]
    assert g.poll(500.0) == [] and g.due() is None  # reported once
    assert g.edge(False, 600.0) == [ButtonFreed(590.0)]
    assert g.edge(True, 601.0) == [Press()]  # a working button again


def test_a_button_down_at_start_starts_no_turn_until_released():
    g = ButtonGuard(debounce_s=0.03, stuck_s=120.0, down_at_start=True, now=0.0)
    assert g.edge(False, 5.0) == []  # no turn was held: nothing to release
    assert g.edge(True, 6.0) == [Press()]


def test_button_settings_are_checked(tmp_path):
    for text, words in (("[button]\ndebounce_ms = 900\n", "debounce_ms = 900"),
                        ("[button]\nstuck_s = 1\n", "stuck_s = 1"),
                        ("[record]\nmin_free_mb = -1\n", "min_free_mb = -1"),
                        ("[log]\nbackups = 0\n", "backups = 0")):
        path = tmp_path / "skull.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=words):
            load_skull_config(path)
    path.write_text("[button]\ndebounce_ms = 10\nstuck_s = 60\n[record]\nmin_free_mb = 50\n[log]\nturns = 't.jsonl'\n")
    cfg = load_skull_config(path)
    assert (cfg.button.debounce_ms, cfg.button.stuck_s, cfg.record.min_free_mb, cfg.log.turns) == (10, 60, 50, "t.jsonl")


# --- the real agent, a simulated board and a real host --------------------------------------

@contextlib.contextmanager
def fake_servers_host(folder, scale: float = 0.5):
    """A host config whose backends are the standard fake servers, their delays times ``scale``
    (running while inside)."""
    servers = Workload().scaled(scale).start()
    try:
        path = folder / "host.toml"
        path.write_text(Workload.host_toml(servers, streaming=True, timeout_s=5.0))
        cfg = load_host_config(path)
        yield dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, port=0, ping_interval_s=1.0,
                                                                  ping_timeout_s=2.0))
    finally:
        for s in servers.values():
            s.stop()


@pytest.fixture(scope="module")
def workload_host(tmp_path_factory):
    with fake_servers_host(tmp_path_factory.mktemp("host")) as cfg:
        yield cfg


class Skull:
    """A host on loopback and a simulated skull connected to it, as ``async with``."""

    def __init__(self, host_config, *, record_dir=None, disk_usage=None, turn_log=None, **sections):
        self.host_config, self.record_dir, self.sections = host_config, record_dir, sections
        self.kw = {k: v for k, v in (("disk_usage", disk_usage), ("turn_log", turn_log)) if v is not None}
        self.events = []

    async def __aenter__(self):
        self.host = await start_host(self.host_config, build_backends(self.host_config))
        self.listens = []
        self.host.events.subscribe(lambda e: self.listens.append(e.turn), TurnStarted)
        cfg = skull_config(self.host.port)
        cfg = dataclasses.replace(cfg, **self.sections)
        self.agent = Agent(cfg, sim_body(cfg, question=short_question(), speed=SPEED), record_dir=self.record_dir,
                           **self.kw)
        self.agent.events.subscribe(self.events.append)
        self.pin = self.agent.body.panel.button.pin
        self.task = asyncio.create_task(self.agent.run())
        await wait_for(lambda: self.agent.state is State.IDLE)
        return self

    async def __aexit__(self, *exc):
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.host.stop()

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]

    def states(self):
        return [(e.state, e.turn) for e in self.of(StateChanged)]

    async def ask(self, timeout: float = 30.0):
        """Press, let the question play, release, wait for the turn's end."""
        agent, loop = self.agent, asyncio.get_running_loop()
        spoken = asyncio.Event()
        agent.body.mic.on_finished = lambda: loop.call_soon_threadsafe(spoken.set)
        agent.turn_ended.clear()
        self.pin.drive_low()
        await asyncio.wait_for(spoken.wait(), timeout)
        self.pin.drive_high()
        await asyncio.wait_for(agent.turn_ended.wait(), timeout)
        return agent.finished[-1]


def short_question() -> Path:
    """Half a second of a tone as the question (the fake speech to text hears the same words
    whatever it is given): turns take a second, not five."""
    path = Path(tempfile.gettempdir()) / "skull-test-short-question.wav"
    if not path.exists():
        write_wav(path, 0.3 * np.sin(np.arange(8000) * 2 * np.pi * 220 / 16000).astype(np.float32), 16000)
    return path


def chatter(pin, down: bool, bounces: int = 4, gap_s: float = 0.002) -> None:
    """The contacts bounce ``bounces`` times before resting ``down`` (or up)."""
    for _ in range(bounces):
        (pin.drive_low if down else pin.drive_high)()
        time.sleep(gap_s)
        (pin.drive_high if down else pin.drive_low)()
        time.sleep(gap_s)
    (pin.drive_low if down else pin.drive_high)()


def test_a_chattering_button_starts_one_turn_and_ends_it_once(workload_host):
    # real contacts bounce for a few milliseconds whatever the machine does; this chatter is
    # timed by sleeps, which a loaded machine can stretch past the default 30 ms window (a bounce
    # past the window is a real press: it failed once in a parallel run), so the window is wider
    button = ButtonConfig(debounce_ms=200.0)

    async def run():
        async with Skull(workload_host, button=button) as s:
            spoken = asyncio.Event()
            loop = asyncio.get_running_loop()
            s.agent.body.mic.on_finished = lambda: loop.call_soon_threadsafe(spoken.set)
            chatter(s.pin, True)
            await asyncio.wait_for(spoken.wait(), 30)
            chatter(s.pin, False)
            await asyncio.wait_for(s.agent.turn_ended.wait(), 30)
            await wait_for(lambda: s.agent.state is State.IDLE, 30)
            await asyncio.sleep(0.2)
            return s.states(), list(s.listens), s.agent.finished[-1]

    states, listens, rec = asyncio.run(run())
    assert listens == [1], "the host was asked to listen once"
    assert [st for st in states if st[0] is State.LISTENING] == [(State.LISTENING, 1)]
    assert rec.outcome == "answered" and rec.segments


def test_a_button_held_past_max_record_s_ends_the_turn_and_needs_a_release(workload_host):
    audio = dataclasses.replace(skull_config(0).audio, max_record_s=1.0)

    async def run():
        async with Skull(workload_host, audio=audio) as s:
            s.pin.drive_low()  # and held
            await wait_for(lambda: s.agent.state is State.THINKING, 10)
            await asyncio.wait_for(s.agent.turn_ended.wait(), 30)
            first = s.agent.finished[-1]
            await asyncio.sleep(1.0)  # still held, the skull idle
            held = (s.agent.state, s.agent.machine.turn, list(s.listens))
            s.pin.drive_high()
            await asyncio.sleep(0.2)
            released = (s.agent.state, s.agent.machine.turn)
            s.pin.drive_low()  # a new press
            await wait_for(lambda: s.agent.state is State.LISTENING, 10)
            s.pin.drive_high()
            return first, held, released, s.agent.machine.turn

    first, held, released, turn = asyncio.run(run())
    assert first.outcome == "answered" and first.segments, "the held turn is answered"
    assert first.released_at is not None
    assert held == (State.IDLE, 1, [1]), "no new turn while the button is still held"
    assert released == (State.IDLE, 1), "the release after the limit starts nothing"
    assert turn == 2, "after a release, the next press starts a turn"


def test_a_stuck_button_is_reported_once_and_ignored_until_released(workload_host, caplog):
    audio = dataclasses.replace(skull_config(0).audio, max_record_s=15.0)
    button = ButtonConfig(debounce_ms=30.0, stuck_s=1.0)  # 1 s: under the config's floor, to keep the test short

    async def run():
        async with Skull(workload_host, audio=audio, button=button) as s:
            s.pin.drive_low()  # and never let go
            await wait_for(lambda: s.agent.state is State.THINKING, 10)  # stuck: its turn is released
            await asyncio.wait_for(s.agent.turn_ended.wait(), 30)
            await asyncio.sleep(1.5)  # stuck on: no second report, no new turn
            stuck = (s.of(ButtonStuck), s.of(ButtonFreed), s.agent.state, s.agent.machine.turn)
            s.pin.drive_high()
            await asyncio.sleep(0.1)
            freed = s.of(ButtonFreed)
            rec = await s.ask()
            return stuck, freed, rec, s.agent.finished[-2]

    with caplog.at_level(logging.INFO, logger="skull.agent"):
        (stuck_events, freed_before, state, turn), freed, rec, stuck_turn = asyncio.run(run())
    assert len(stuck_events) == 1 and stuck_events[0].held_s >= 1.0
    assert freed_before == [] and (state, turn) == (State.IDLE, 1)
    assert stuck_turn.outcome == "answered", "the stuck press's turn ends and is answered"
    assert len(freed) == 1 and freed[0].held_s >= 2.5
    assert rec.turn == 2 and rec.outcome == "answered", "once freed, the button works again"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "stuck" in r.getMessage()]
    infos = [r for r in caplog.records if r.levelno == logging.INFO and "came up" in r.getMessage()]
    assert len(warnings) == 1 and len(infos) == 1


def test_a_press_while_the_skull_thinks_interrupts_and_starts_a_new_turn(workload_host):
    async def run():
        async with Skull(workload_host) as s:
            spoken = asyncio.Event()
            loop = asyncio.get_running_loop()
            s.agent.body.mic.on_finished = lambda: loop.call_soon_threadsafe(spoken.set)
            s.pin.drive_low()
            await asyncio.wait_for(spoken.wait(), 30)
            s.pin.drive_high()
            await wait_for(lambda: s.agent.state is State.THINKING, 10)
            s.agent.turn_ended.clear()
            spoken.clear()  # before the press: the new turn's half-second question plays in ~60 ms
            s.pin.drive_low()  # the visitor presses again before the answer
            await wait_for(lambda: s.agent.machine.turn == 2, 10)
            s.agent.turn_ended.clear()
            await asyncio.wait_for(spoken.wait(), 30)  # the mic file plays again for the new turn
            s.pin.drive_high()
            await asyncio.wait_for(s.agent.turn_ended.wait(), 30)
            second = s.agent.finished[-1]
            return s.states(), s.agent.finished[-2], second, list(s.listens)

    states, first, second, listens = asyncio.run(run())
    one = [st for st, turn in states if turn == 1]
    assert one[-1] is State.THINKING and State.SPEAKING not in one, "pressed while thinking: it never spoke"
    assert (State.LISTENING, 2) in states
    assert first.outcome == "interrupted"
    assert second.turn == 2 and second.outcome == "answered" and second.segments
    assert listens == [1, 2]


DiskUsage = namedtuple("DiskUsage", "total used free")


def test_a_full_disk_pauses_recording_and_resumes_without_deleting_or_muting(workload_host, tmp_path, caplog):
    free = {"mb": 10_000}
    record = tmp_path / "sessions"

    def disk_usage(path):
        return DiskUsage(100_000 * 10**6, 0, free["mb"] * 10**6)

    async def run():
        async with Skull(workload_host, record_dir=record, disk_usage=disk_usage) as s:
            recs = [await s.ask()]
            free["mb"] = 100  # under the default 500 MB
            recs += [await s.ask(), await s.ask()]
            kept = sorted(p.name for p in record.iterdir())
            free["mb"] = 2000
            recs.append(await s.ask())
            return recs, kept, s.of(RecordingPaused), s.of(RecordingResumed), s.agent.recording_paused

    with caplog.at_level(logging.INFO, logger="skull.agent"):
        recs, kept, paused, resumed, still_paused = asyncio.run(run())
    assert [r.outcome for r in recs] == ["answered"] * 4 and all(r.segments for r in recs), "every turn answered"
    assert kept == ["turn-001"], "nothing recorded while the disk was low, and nothing deleted"
    assert sorted(p.name for p in record.iterdir()) == ["turn-001", "turn-002"]
    assert (record / "turn-001" / "reply.wav").stat().st_size > 1000
    assert len(paused) == 1 and paused[0].free_mb == 100 and paused[0].min_free_mb == 500
    assert len(resumed) == 1 and not still_paused
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "recording paused" in r.getMessage()]
    assert len(warnings) == 1
