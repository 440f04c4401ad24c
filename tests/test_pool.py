"""The embedded engines in worker processes ([embedded] workers, host.pool): real engines in real
processes, killed and stopped with real signals."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import threading
import time

import numpy as np
import pytest

from host.build import build_backends
from host.config import EmbeddedConfig, HostConfig, ServerConfig, StageConfig, load_host_config
from host.pool import EnginePool
from host.server import Host
from skull.core.data import bundled
from skull.core.errors import BackendError, ConfigError
from skull.core.wav import read_wav, to_mono

from conftest import ask, sim_body, skull_config, wait_for


def _question() -> tuple[np.ndarray, int]:
    audio = read_wav(bundled("question.wav").read_bytes())
    return to_mono(audio), audio.rate


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:  # a zombie not yet reaped is gone too
        return f.read().split(") ", 1)[1].startswith("Z")


@pytest.mark.parametrize("value, words", [('"many"', '"auto" (one per core), 0'), ("-1", "1..64"), ("65", "1..64")])
def test_embedded_workers_must_be_auto_or_a_count(tmp_path, value, words):
    path = tmp_path / "host.toml"
    path.write_text(f"[embedded]\nworkers = {value}\n")
    with pytest.raises(ConfigError) as err:
        load_host_config(path)
    message = str(err.value)
    assert "host.toml [embedded]: workers = " in message and words in message


def test_auto_is_one_worker_per_core():
    assert EmbeddedConfig().count() == len(os.sched_getaffinity(0))
    assert EmbeddedConfig(workers=0).count() == 0


def test_a_dead_or_hung_worker_fails_only_its_call_and_is_replaced():
    """pocketsphinx holds its worker for seconds on a long recording: the worker is killed in the
    middle, the call fails naming the stage, and the next call is answered by its replacement.
    A worker that stops answering is killed at the stage's time budget, never waited on for ever."""
    samples, rate = _question()
    long = np.tile(samples, 8)  # ~20 s of speech: seconds of decoding
    samples = samples[: rate * 3 // 2]  # "Do you like...": enough to be heard
    stt = StageConfig.of("stt", "pocketsphinx", timeout_s=30)
    pool = EnginePool({"stt": (stt, False)}, workers=1)
    try:
        assert pool.start() == {"stt": "pocketsphinx"}
        assert pool.call("stt", "transcribe", (samples, rate), 30) != ""
        (first,) = pool.pids()
        failure = []

        def ask_long():
            try:
                pool.call("stt", "transcribe", (long, rate), 30)
            except BackendError as exc:
                failure.append(exc)
        asker = threading.Thread(target=ask_long)
        asker.start()
        time.sleep(0.5)
        os.kill(first, signal.SIGKILL)
        asker.join(10)
        assert not asker.is_alive()
        assert failure and failure[0].stage == "stt" and "died" in str(failure[0]) and not failure[0].retryable
        assert pool.call("stt", "transcribe", (samples, rate), 30) != ""  # waits for the replacement
        (second,) = pool.pids()
        assert second != first and pool.replaced == 1

        os.kill(second, signal.SIGSTOP)  # alive, but never answers
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="no answer within 1 s"):
            pool.call("stt", "transcribe", (samples, rate), 1.0)
        assert time.monotonic() - t0 < 3
        assert _gone(second)  # killed; its replacement loads in the background (closed below)
    finally:
        pool.close()
    assert pool.pids() == []


def test_the_host_runs_its_engines_in_workers_falls_back_when_one_dies_and_stops_them():
    """A host built from its config hears the question with pocketsphinx in a worker process (the
    engine that holds the GIL); a worker that died
    costs the turn that hit it the fallback line (never silence), the next turn is heard again,
    and stopping the host ends every worker."""
    base = HostConfig()
    config = dataclasses.replace(
        base, server=ServerConfig(port=0, ping_interval_s=1.0, ping_timeout_s=2.0),
        stt=dataclasses.replace(StageConfig.of("stt", "pocketsphinx", retries=0), segmented=False),
        vision=StageConfig.of("vision", "none"), embedded=EmbeddedConfig(workers=1))  # the kill hits the one call

    async def go():
        from skull.agent import Agent
        from skull.machine import State
        host = await Host(config).start()
        pool = host.backends.pool
        pids = pool.pids()
        assert len(pids) == 1 and host.backends.stt.name == "pocketsphinx"
        cfg = skull_config(host.port)
        agent = Agent(cfg, sim_body(cfg))
        task = asyncio.create_task(agent.run())
        try:
            await wait_for(lambda: agent.state is State.IDLE, 20)
            os.kill(pids[0], signal.SIGKILL)
            broken = await ask(agent)
            assert broken.reply == config.fallback.stt and broken.segments
            again = await ask(agent)
            assert "costume" in again.transcript.lower() and pool.replaced == 1
            workers = pool.pids()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await host.stop()
        return workers
    workers = asyncio.run(go())
    assert all(_gone(pid) for pid in workers)


def test_no_workers_keeps_the_engines_in_the_host_process():
    config = dataclasses.replace(HostConfig(), stt=StageConfig.of("stt", "pocketsphinx"),
                                 embedded=EmbeddedConfig(workers=0))
    backends = build_backends(config)
    assert backends.pool is None and type(backends.stt).__name__ == "PocketsphinxSTT"


def test_engines_that_release_the_gil_stay_in_the_host_process():
    """moonshine and OpenCV compute on every core by themselves: the default host starts no workers."""
    backends = build_backends(HostConfig())
    assert backends.pool is None and type(backends.vision).__name__ == "OpenCVCaptioner"
