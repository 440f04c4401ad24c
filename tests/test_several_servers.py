"""A stage served by several model servers: host.toml lists them, turns are spread over them, one
that dies is taken out without a fallback line and comes back in after its health check, and
``skull host --check`` shows each. The fakes queue past their parallel slots as real servers do."""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import ask, sim_body, skull_config, start_host, wait_for
from host.build import build_backends
from host.check import check_backends, render
from host.config import HostConfig, ServerConfig, StageConfig
from host.events import Fallback
from host.fakes import Knobs, LlamaCppFake, OpenAIAudioFake, WhisperCppFake
from host.http import Http
from skull.agent import Agent
from skull.core.errors import ConfigError
from skull.machine import State

REPLY = "Boo, hello there! Your costume is a real scream."
CHAT = "/v1/chat/completions"
SPEECH = "/v1/audio/speech"


def asked(fake, route: str = CHAT) -> int:
    return sum(1 for method, path, _, _ in fake.requests if method == "POST" and path == route)


def test_a_stage_lists_its_servers_as_url_or_urls():
    one = StageConfig.of("reply", "openai-chat", url=["http://127.0.0.1:8080", "http://127.0.0.1:8081/"])
    assert one.settings.addresses == ("http://127.0.0.1:8080", "http://127.0.0.1:8081/")
    other = StageConfig.of("tts", "openai", urls=["http://a:8880", "http://b:8880"], voice="af_bella")
    assert other.settings.addresses == ("http://a:8880", "http://b:8880")
    assert StageConfig.of("stt", "whisper.cpp", url="http://a:8080").settings.addresses == ("http://a:8080",)
    refusals = {
        "not both": dict(url="http://a:1", urls=["http://b:1"]),
        "listed twice": dict(url=["http://a:1", "http://a:1/"]),
        "start with http:// or https://": dict(urls=["http://a:1", "a:2"]),
        "address in quotes": dict(url=["http://a:1", 2]),
        "at least one server": dict(url=[]),
    }
    for rule, settings in refusals.items():
        with pytest.raises(ConfigError) as err:
            StageConfig.of("reply", "openai-chat", source="host.toml", **settings)
        message = str(err.value)
        assert message.startswith("host.toml [reply.openai-chat]: url") and rule in message, message


def test_turns_spread_over_two_servers_and_survive_one_being_killed():
    stt = WhisperCppFake(transcript="boo").start()
    llms = [LlamaCppFake(Knobs(delay_s=0.05, per_unit_s=0.03), reply=REPLY, mmproj=False).start() for _ in range(2)]
    voices = [OpenAIAudioFake(Knobs(delay_s=0.02), flavor="kokoro").start() for _ in range(2)]
    config = HostConfig(server=ServerConfig(port=0, ping_interval_s=1.0, ping_timeout_s=2.0),
                        stt=StageConfig.of("stt", "whisper.cpp", timeout_s=5.0, url=stt.url),
                        vision=StageConfig.of("vision", "none"),
                        reply=StageConfig.of("reply", "openai-chat", timeout_s=5.0, url=[f.url for f in llms]),
                        tts=StageConfig.of("tts", "openai", timeout_s=5.0, urls=[f.url for f in voices],
                                           voice="bm_george"))
    backends = build_backends(config)
    fallbacks = []

    async def go():
        host = await start_host(config, backends)
        host.events.subscribe(lambda e: fallbacks.append(e.turn) if isinstance(e, Fallback) else None)
        cfg = skull_config(host.port)
        agent = Agent(cfg, sim_body(cfg, speed=6.0))
        task = asyncio.create_task(agent.run())
        try:
            await wait_for(lambda: agent.state is State.IDLE)
            recs = [await ask(agent) for _ in range(2)]
            spread = [asked(f) for f in llms]

            async def kill_mid_answer():  # whichever server is writing turn 3's reply dies while it does
                await wait_for(lambda: any(f.busy for f in llms), timeout=20, step=0.005)
                victim = next(f for f in llms if f.busy)
                victim.kill()
                return victim
            killer = asyncio.create_task(kill_mid_answer())
            recs.append(await ask(agent))
            victim = await killer
            survivor = next(f for f in llms if f is not victim)
            before = asked(victim), asked(survivor)
            recs += [await ask(agent) for _ in range(2)]
            after_kill = asked(victim), asked(survivor)

            victim.start()  # back on its port: its health check brings it in again
            http = backends.reply.http
            await wait_for(lambda: all(s.out_since is None for s in http.servers), timeout=5)
            recs += [await ask(agent) for _ in range(2)]
            return recs, spread, before, after_kill, asked(victim)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await host.stop()

    try:
        recs, spread, before, after_kill, victim_end = asyncio.run(go())
        lines = check_backends(config, backends)
    finally:
        for fake in [stt, *llms, *voices]:
            fake.stop()
    assert [r.outcome for r in recs] == ["answered"] * 7
    assert spread == [1, 1]  # two turns, one on each server
    assert all(asked(v, SPEECH) > 0 for v in voices)  # the sentences were spread over both voices too
    assert [t for t in fallbacks if t > 3] == []  # after the one turn cut mid-answer, no fallback line
    assert after_kill[0] == before[0] and after_kill[1] == before[1] + 2  # the dead one is out
    assert victim_end > after_kill[0]  # back in after its health check, it answers turns again
    reply_lines = [ln for ln in lines if ln.stage == "reply"]
    assert [(ln.url, ln.status) for ln in reply_lines] == [(f.url, "up") for f in llms], render(lines)
    assert len([ln for ln in lines if ln.stage == "tts"]) == 2


def test_a_fake_works_on_its_slots_and_queues_the_rest_as_a_real_server_does():
    fake = LlamaCppFake(Knobs(delay_s=0.3, slots=2, backlog=64), reply="Boo!", mmproj=False).start()
    http = Http("reply", "openai-chat", fake.url, timeout_s=5.0)  # one pool of connections for every thread
    try:
        t0 = time.monotonic()

        def ask(_):
            http.json("POST", CHAT, json={"messages": [{"role": "user", "content": "hi"}]})
            return time.monotonic() - t0
        with ThreadPoolExecutor(4) as pool:
            took = sorted(pool.map(ask, range(4)))
    finally:
        fake.stop()
    assert fake.busiest == 2  # never more than its slots at once
    assert took[2] >= 0.6 and took[1] < took[2] - 0.2  # two answered at once, two waited for a free slot
    with pytest.raises(ValueError, match="slots >= 0"):
        LlamaCppFake(Knobs(slots=-1))
