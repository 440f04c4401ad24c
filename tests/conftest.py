"""Shared pieces: the embedded backends (loaded once), a host on a free loopback port, and a
simulated skull built from gpiozero's MockFactory."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from host.config import HostConfig, ServerConfig
from host.build import build_backends
from host.server import Host
from skull.audio.player import ClockPlayer
from skull.core.wav import read_wav, to_mono, write_wav
from skull.config import SkullConfig
from skull.core.data import bundled
from skull.demo import press_and_speak  # noqa: F401 (the tests import it from here)
from skull.runtime import build_body

DATA = Path(__file__).parent / "data"


def _xdg_folder(tmp_path_factory, variable: str):
    """Point ``variable`` (an XDG base directory) at a fresh temporary folder for the session;
    child processes inherit it. Yields the folder, then puts the variable back."""
    folder = tmp_path_factory.mktemp(variable.lower().replace("_", "-"))
    before = os.environ.get(variable)
    os.environ[variable] = str(folder)
    yield folder
    if before is None:
        os.environ.pop(variable, None)
    else:
        os.environ[variable] = before


@pytest.fixture(scope="session", autouse=True)
def state_home(tmp_path_factory):
    """Every skull of the session keeps its state (cached lines) in a temporary folder, never in
    the user's ~/.local/state."""
    yield from _xdg_folder(tmp_path_factory, "XDG_STATE_HOME")


@pytest.fixture(scope="session", autouse=True)
def config_home(tmp_path_factory):
    """The user's config folder (~/.config/skull: skull.toml, calibration profiles) is a
    temporary one: no test reads the developer's own config or writes a profile there."""
    yield from _xdg_folder(tmp_path_factory, "XDG_CONFIG_HOME")


@pytest.fixture(autouse=True)
def logging_left_as_found():
    """A test that runs the CLI in this process (skull.cli.main sets up the console's logging)
    leaves no handler behind: it would write to the test's captured output, closed once the test
    ends, when a later test's thread logs (a 'Logging error' in the run's output)."""
    root = logging.getLogger()
    before = {None: (list(root.handlers), root.level)}
    for name, lg in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(lg, logging.Logger):
            before[name] = (list(lg.handlers), lg.level)
    yield
    for name, (handlers, level) in before.items():
        lg = root if name is None else logging.getLogger(name)
        if lg.handlers != handlers:
            lg.handlers[:] = handlers
        if lg.level != level:
            lg.setLevel(level)


@pytest.fixture(scope="session")
def backends():
    return build_backends(HostConfig())


@pytest.fixture
def host_config():
    return HostConfig(server=ServerConfig(port=0, ping_interval_s=1.0, ping_timeout_s=2.0))


def start_host(config, backends, port: int = 0):
    cfg = dataclasses.replace(config, server=dataclasses.replace(config.server, port=port))
    return Host(cfg, backends).start()


def skull_config(port: int, token: str = "", **link) -> SkullConfig:
    cfg = SkullConfig()
    return dataclasses.replace(cfg, link=dataclasses.replace(cfg.link, url=f"ws://127.0.0.1:{port}", token=token,
                                                             reconnect_min_s=0.1, reconnect_max_s=1.0,
                                                             ping_interval_s=1.0, ping_timeout_s=2.0, **link))


def sim_body(cfg: SkullConfig, question=None, image=None, speed: float = 3.0):
    """A simulated skull: MockFactory button/LED/servo, the question WAV as its microphone and
    a speaker that plays ``speed`` times faster than real time."""
    body = build_body(cfg, sim=True, mic_file=question or bundled("question.wav"),
                      image=image or bundled("snapshot.jpg"), audio=False, mic_speed=speed)
    body.player = ClockPlayer(speed=speed)
    return body



async def ask(agent, timeout: float = 60.0):
    """Press the skull's button, let the mic file play, release, wait for the turn to end."""
    agent.turn_ended.clear()
    await press_and_speak(agent, timeout)
    await asyncio.wait_for(agent.turn_ended.wait(), timeout)
    return agent.finished[-1]


async def wait_for(predicate, timeout: float = 10.0, step: float = 0.02):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


def one_turn(config, backends, *, question=None, speed: float = 3.0, record_dir=None, events=None, turn_log=None):
    """A host with ``config`` and ``backends``, and a simulated skull asking ``question`` once;
    both stopped after. Returns (agent, turn record); the host's turn events go to ``events``,
    the skull's turn log to ``turn_log`` (a JsonLines)."""
    from skull.agent import Agent
    from skull.machine import State

    async def go():
        host = await start_host(config, backends)
        if events is not None:
            host.events.subscribe(events.append)
        cfg = skull_config(host.port)
        agent = Agent(cfg, sim_body(cfg, question=question, speed=speed), record_dir=record_dir, turn_log=turn_log)
        task = asyncio.create_task(agent.run())
        try:
            await wait_for(lambda: agent.state is State.IDLE)
            rec = await ask(agent)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await host.stop()
        return agent, rec
    return asyncio.run(go())


@pytest.fixture(scope="session")
def stereo_question(tmp_path_factory) -> Path:
    """The bundled question resampled to 22.05 kHz stereo (right channel quieter than left)."""
    from skull.core.wav import resample
    path = tmp_path_factory.mktemp("q") / "question-22k-stereo.wav"
    x = resample(to_mono(read_wav(bundled("question.wav"))), 16000, 22050)
    write_wav(path, np.stack([x, x * 0.8], axis=1), 22050)
    return path


class Watched:
    """A subprocess (``self.p``) whose output lines are collected as they come, a thread per
    stream; :meth:`wait_for` waits for a pattern in them. Subclasses start the process and call
    :meth:`_watch`."""
    WAIT_S = 60.0

    def stop(self) -> None:
        """SIGTERM (a service manager's stop), then SIGKILL if it is still there after 15 s."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()

    def _watch(self, name: str, *streams) -> None:
        self.name, self.lines, self._new = name, [], queue.Queue()
        for stream in streams:
            threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)
        self._new.put("")

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float | None = None) -> re.Match:
        deadline = time.monotonic() + (self.WAIT_S if timeout is None else timeout)
        while True:
            found = re.search(pattern, self.text)
            if found:
                return found
            left = deadline - time.monotonic()
            if left <= 0 or self.p.poll() is not None and self._new.empty():
                raise AssertionError(f"no {pattern!r} in the output of {self.name}:\n{self.text}")
            try:
                self._new.get(timeout=min(left, 0.5))
            except queue.Empty:
                pass
