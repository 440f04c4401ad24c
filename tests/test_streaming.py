"""Whole turns through the host against fake model servers over loopback: the reply streams into
the voice sentence by sentence, failures end in a spoken fallback, and words children should
not hear are replaced."""
from __future__ import annotations

import asyncio

import pytest

from conftest import ask, sim_body, skull_config, start_host, wait_for
from host.build import build_backends
from host.config import FilterConfig, HostConfig, ServerConfig, StageConfig
from host.fakes import Knobs, LlamaCppFake, OpenAIAudioFake, WhisperCppFake
from skull.agent import Agent
from skull.machine import State

REPLY = "Ooh, spooky! That costume is a scream, and I should know. Come back when you have some guts!"


@pytest.fixture
def servers():
    started = {}

    def start(**kinds):
        for name, srv in kinds.items():
            started[name] = srv.start()
        return started
    yield start
    for srv in started.values():
        srv.stop()


def config_for(s: dict, **top) -> HostConfig:
    return HostConfig(server=ServerConfig(port=0, ping_interval_s=1.0, ping_timeout_s=2.0),
                      stt=StageConfig.of("stt", "whisper.cpp", timeout_s=5.0, url=s["stt"].url),
                      vision=StageConfig.of("vision", "reply"),
                      reply=StageConfig.of("reply", "openai-chat", timeout_s=5.0, url=s["llm"].url),
                      tts=StageConfig.of("tts", "openai", timeout_s=5.0, url=s["tts"].url, voice="bm_george"), **top)


def run_turns(config: HostConfig, n: int = 1, tmp_path=None):
    async def go():
        host = await start_host(config, build_backends(config))
        cfg = skull_config(host.port)
        agent = Agent(cfg, sim_body(cfg), record_dir=tmp_path)
        task = asyncio.create_task(agent.run())
        try:
            await wait_for(lambda: agent.state is State.IDLE)
            recs = [await ask(agent) for _ in range(n)]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await host.stop()
        return recs
    return asyncio.run(go())


def test_reply_streams_sentence_by_sentence_into_the_voice(servers):
    s = servers(stt=WhisperCppFake(transcript="do you like my costume"),
                llm=LlamaCppFake(Knobs(delay_s=0.2, per_unit_s=0.04), reply=REPLY),
                tts=OpenAIAudioFake(Knobs(delay_s=0.05), flavor="kokoro"))
    [rec] = run_turns(config_for(s))
    assert rec.outcome == "answered" and rec.transcript == "do you like my costume"
    assert [seg.text for seg in rec.in_order()] == [
        "Ooh, spooky!", "That costume is a scream, and I should know.", "Come back when you have some guts!"]
    assert all(seg.rate == 22050 for seg in rec.segments)  # the voice's 24 kHz arrives at the speaker's rate
    t = rec.timings_ms
    # the first sentence was spoken long before the last token was written
    assert t["llm_first_token"] < t["llm_first_sentence"] < t["tts_first_segment"] < t["stt"] + t["reply"] - 400
    assert t["first_audio"] < t["stt"] + t["reply"]
    llm_body = s["llm"].requests[-1][3].decode()
    assert "data:image/jpeg;base64," in llm_body  # the reply model looked at the snapshot itself
    assert "do you like my costume" in llm_body


def test_sequential_mode_speaks_the_whole_reply_at_once(servers):
    s = servers(stt=WhisperCppFake(), llm=LlamaCppFake(reply=REPLY), tts=OpenAIAudioFake(flavor="kokoro"))
    [rec] = run_turns(config_for(s, streaming=False))
    assert [seg.text for seg in rec.segments] == [REPLY]
    assert '"stream": false' in s["llm"].requests[-1][3].decode()


def test_dead_voice_still_speaks_the_fallback_line(servers):
    s = servers(stt=WhisperCppFake(), llm=LlamaCppFake(reply=REPLY), tts=OpenAIAudioFake(flavor="kokoro"))
    s["tts"].stop()
    cfg = config_for(s)
    [rec] = run_turns(cfg)
    assert rec.outcome == "answered"
    assert [seg.text for seg in rec.segments] == [cfg.fallback.tts]  # in the espeak-ng voice
    assert any("tts" in e and "not reachable" in e for e in rec.errors)


def test_failing_language_model_gives_the_reply_fallback(servers):
    s = servers(stt=WhisperCppFake(), llm=LlamaCppFake(Knobs(failure_rate=1.0, seed=2), reply=REPLY),
                tts=OpenAIAudioFake(flavor="kokoro"))
    cfg = config_for(s)
    recs = run_turns(cfg, n=2)
    for rec in recs:
        spoken = [seg.text for seg in rec.in_order()]
        # either nothing came and the fallback was said, or the answer stops at its last whole sentence
        assert spoken == [cfg.fallback.reply] or (spoken and all(x in REPLY for x in spoken))
        assert any("reply" in e for e in rec.errors)


def test_a_crash_is_retried_once(servers):
    s = servers(stt=WhisperCppFake(transcript="boo"), llm=LlamaCppFake(reply="Boo to you!"),
                tts=OpenAIAudioFake(flavor="kokoro"))
    outcomes = iter(["crash", "ok"])
    s["stt"].roll = lambda: next(outcomes)
    [rec] = run_turns(config_for(s))
    assert rec.transcript == "boo" and [seg.text for seg in rec.segments] == ["Boo to you!"]
    assert not rec.errors


def test_words_children_should_not_hear_are_replaced(servers):
    s = servers(stt=WhisperCppFake(), llm=LlamaCppFake(reply="Holy crap, what a costume! Damn, I mean it. Boo!"),
                tts=OpenAIAudioFake(flavor="kokoro"))
    cfg = config_for(s, filter=FilterConfig(words=("costume",), allow=("damn*",), replacement="bones"))
    [rec] = run_turns(cfg)
    said = " ".join(seg.text for seg in rec.in_order())
    assert said == "Holy bones, what a bones! Damn, I mean it. Boo!"
    assert rec.reply == said
    tts_inputs = [r[3].decode() for r in s["tts"].requests]
    assert not any("crap" in x or "costume" in x for x in tts_inputs)


def test_a_model_that_cannot_see_still_answers(servers):
    s = servers(stt=WhisperCppFake(), llm=LlamaCppFake(mmproj=False, reply="Hello, {heard}!"),
                tts=OpenAIAudioFake(flavor="kokoro"))
    [rec] = run_turns(config_for(s))
    assert [seg.text for seg in rec.segments] == ["Hello, what do you think of my costume!"]
    assert not rec.errors  # reported in the host log, not a failed turn
