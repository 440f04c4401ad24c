"""The skull's own voice when the host is gone: the host sends its line set once, the skull keeps
it on disk, and a skull rebooted with no host says a cached line with a moving jaw; espeak-ng is
the last resort; a damaged or half-written cache is ignored with one warning."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from host.config import HostConfig, LinesConfig, ServerConfig, load_host_config
from host.lines import LineBook
from skull import events as ev
from skull.agent import Agent
from skull.core import protocol as p
from skull.core.envelope import JawShape
from skull.core.errors import ConfigError
from skull.lines import LineCache, LineCollector, Picker, Received, default_cache_dir
from skull.machine import State

from conftest import sim_body, skull_config, start_host, wait_for


def _config(port: int, cache, **offline):
    cfg = skull_config(port)
    return dataclasses.replace(cfg, offline=dataclasses.replace(cfg.offline, cache_dir=str(cache), **offline))


def _received(set_id: str = "set1", kinds=("offline", "attract", "attract"), seconds: float = 0.4,
              rate: int = 16000) -> list[Received]:
    """A line set as the skull gets it: tones with jaw tracks that open and shut."""
    out = []
    for i, kind in enumerate(kinds):
        n = int(rate * seconds)
        pcm = (np.sin(np.arange(n) * 2 * np.pi * 200 / rate) * 9000).astype("<i2").tobytes()
        jaw = [0.0] + [0.8] * (int(seconds * 100) - 2) + [0.0]
        out.append(Received(p.Line(set_id, i, len(kinds), kind, f"{kind} {i}", rate, 2, 1, len(pcm), 100, jaw), pcm))
    return out


async def _run(agent):
    got = []
    agent.events.subscribe(got.append)
    return asyncio.create_task(agent.run()), got


async def _stop(task):
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _press(agent) -> None:
    pin = agent.body.panel.button.pin
    pin.drive_low()
    await asyncio.sleep(0.05)
    pin.drive_high()


def _said(events):
    return [e for e in events if isinstance(e, ev.LineSaid)]


# --- the wire -------------------------------------------------------------------------------

def test_a_line_frame_is_read_like_speech_and_its_limits_hold():
    reader = p.FrameReader(p.HOST_MESSAGES)
    msg = reader.read_text('{"type":"line","set":"ab12","index":0,"count":2,"kind":"offline","text":"Boo.",'
                           '"rate":16000,"width":2,"channels":1,"bytes":4,"jaw_fps":100,"jaw":[0.5]}')
    assert isinstance(msg, p.Line) and msg.has_payload
    assert reader.read_binary(b"\1\0\2\0") == (msg, b"\1\0\2\0")
    for bad, code in (('"count":33', p.E_BAD_FIELD), ('"index":2', p.E_BAD_FIELD), ('"kind":"dance"', p.E_BAD_FIELD),
                      ('"set":"a b"', p.E_BAD_FIELD), (f'"bytes":{p.MAX_LINE_BYTES + 2}', p.E_TOO_LARGE)):
        key = bad.split(":")[0]
        good = {'"count"': '"count":2', '"index"': '"index":0', '"kind"': '"kind":"offline"', '"set"': '"set":"ab12"',
                '"bytes"': '"bytes":4'}[key]
        text = ('{"type":"line","set":"ab12","index":0,"count":2,"kind":"offline","text":"Boo.","rate":16000,'
                '"width":2,"channels":1,"bytes":4,"jaw_fps":100,"jaw":[0.5]}').replace(good, bad)
        with pytest.raises(p.ProtocolError) as caught:
            p.decode_text(text, p.HOST_MESSAGES)
        assert caught.value.code == code, bad


def test_hello_carries_the_cached_set_id_and_old_skulls_send_none():
    hello = p.decode_text('{"type":"hello","protocol":1,"skull":"mr-bones","lines":"ab12"}', p.CLIENT_MESSAGES)
    assert hello.lines == "ab12"
    assert p.decode_text('{"type":"hello","protocol":1,"skull":"mr-bones"}', p.CLIENT_MESSAGES).lines is None
    with pytest.raises(p.ProtocolError, match="'lines'"):
        p.decode_text('{"type":"hello","protocol":1,"skull":"mr-bones","lines":"../../etc"}', p.CLIENT_MESSAGES)


# --- the host ---------------------------------------------------------------------------------

def test_the_host_sends_its_set_on_connection_and_not_again_when_the_id_matches(tmp_path, backends):
    async def go():
        host = await start_host(HostConfig(server=ServerConfig(port=0)), backends)
        try:
            cfg = _config(host.port, tmp_path / "lines")
            agent = Agent(cfg, sim_body(cfg))
            task, got = await _run(agent)
            await wait_for(lambda: any(isinstance(e, ev.LinesCached) for e in got), 60)
            await _stop(task)
            cached = [e for e in got if isinstance(e, ev.LinesCached)][0]
            again = Agent(cfg, sim_body(cfg))  # the same skull, started again: its set is on disk
            task, got2 = await _run(again)
            await wait_for(lambda: again.state is State.IDLE)
            await asyncio.sleep(0.5)
            await _stop(task)
            return host.lines.sent, cached, got2, again
        finally:
            await host.stop()
    sent, cached, got2, again = asyncio.run(go())
    assert sent == 1, "the set was sent again although the skull had it"
    assert cached.source == "host" and cached.kinds == {"offline": 2, "closer": 1, "wait": 1, "attract": 4,
                                                        "greeting": 1}
    assert [e.source for e in got2 if isinstance(e, ev.LinesCached)] == ["disk"]
    assert again.voice.set_id == cached.set_id
    assert (tmp_path / "lines" / "CURRENT").is_file()


def test_a_cache_folder_that_cannot_be_written_is_named_in_one_line_and_the_skull_goes_on(tmp_path, backends,
                                                                                          caplog):
    (tmp_path / "a-file").write_text("not a folder")
    folder = tmp_path / "a-file" / "lines"  # [offline] cache_dir under a file: refused even to root

    async def go():
        host = await start_host(HostConfig(server=ServerConfig(port=0)), backends)
        try:
            cfg = _config(host.port, folder)
            agent = Agent(cfg, sim_body(cfg))
            task, _ = await _run(agent)
            await wait_for(lambda: agent.last_error != "", 60)
            await wait_for(lambda: agent.state is State.IDLE)
            await _stop(task)
            return agent
        finally:
            await host.stop()
    with caplog.at_level(logging.ERROR, "skull"):
        agent = asyncio.run(go())
    said = [r for r in caplog.records if "line set" in r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is None, [r.getMessage() for r in caplog.records]
    assert str(folder) in agent.last_error and "cache_dir" in agent.last_error and "Not a directory" in agent.last_error
    assert "Traceback" not in caplog.text


def test_the_set_id_changes_with_what_the_skull_would_hear(backends):
    book = LineBook(HostConfig(), backends)
    other = LineBook(dataclasses.replace(HostConfig(), lines=LinesConfig(greeting=("Boo!",))), backends)
    base = book.set_id(JawShape(), 0)
    assert base == LineBook(HostConfig(), backends).set_id(JawShape(), 0)
    assert len({base, other.set_id(JawShape(), 0), book.set_id(JawShape(max_open=0.5), 0),
                book.set_id(JawShape(), 48000)}) == 4


def test_a_voice_that_fails_sends_nothing_and_the_skull_keeps_its_set(tmp_path, backends, caplog):
    class Hoarse:
        name = "hoarse"

        def synthesize(self, text):
            raise RuntimeError("the crypt is out of breath")
    broken = dataclasses.replace(backends, tts=Hoarse())
    cache = LineCache(tmp_path / "lines")
    cache.save(_received("old"))

    async def go():
        host = await start_host(HostConfig(server=ServerConfig(port=0)), broken)
        try:
            cfg = _config(host.port, tmp_path / "lines")
            agent = Agent(cfg, sim_body(cfg))
            task, got = await _run(agent)
            await wait_for(lambda: agent.state is State.IDLE)
            await asyncio.sleep(0.5)
            await _stop(task)
            return agent
        finally:
            await host.stop()
    with caplog.at_level(logging.ERROR, "host.lines"):
        agent = asyncio.run(go())
    assert "could not be synthesised" in caplog.text and "out of breath" in caplog.text
    assert agent.voice.set_id == "old" and cache.id() == "old"


def test_a_flaky_voice_is_asked_again_and_a_failed_set_comes_later(tmp_path, backends, monkeypatch):
    """A voice that fails now and then (a model server's 500) still gets the whole set out: each
    line is asked again; and a voice down at the connection is tried again while the skull stays,
    so a skull connected all night still gets its lines once the voice is back."""
    import host.lines
    from skull.core.errors import BackendError
    monkeypatch.setattr(host.lines, "RETRY_SET_S", (0.3, 0.6))
    real = backends.tts

    class Flaky:
        name = "flaky"
        calls = 0
        down = True

        def synthesize(self, text):
            Flaky.calls += 1
            if Flaky.down or Flaky.calls % 2:
                raise BackendError("tts", "HTTP 500: the model is out of breath", retryable=True)
            return real.synthesize(text)
    flaky = dataclasses.replace(backends, tts=Flaky())

    async def go():
        host = await start_host(HostConfig(server=ServerConfig(port=0)), flaky)
        try:
            cfg = _config(host.port, tmp_path / "lines")
            agent = Agent(cfg, sim_body(cfg))
            task, got = await _run(agent)
            await wait_for(lambda: agent.state is State.IDLE)
            await asyncio.sleep(0.5)
            early = [e for e in got if isinstance(e, ev.LinesCached)]
            Flaky.down = False  # the voice is back; every other call still fails
            await wait_for(lambda: any(isinstance(e, ev.LinesCached) for e in got), 30)
            await _stop(task)
            return early, [e for e in got if isinstance(e, ev.LinesCached)]
        finally:
            await host.stop()
    early, cached = asyncio.run(go())
    assert early == []
    assert len(cached) == 1 and cached[0].source == "host" and sum(cached[0].kinds.values()) == 9


def test_lines_config_is_checked(tmp_path):
    path = tmp_path / "host.toml"
    path.write_text('[lines]\nattract = ["Come here", ""]\n')
    with pytest.raises(ConfigError, match=r"\[lines\]: attract = .* each 1..300 characters"):
        load_host_config(path)
    path.write_text('[lines]\noffline = []\n')
    with pytest.raises(ConfigError, match="offline = .* at least one line"):
        load_host_config(path)
    path.write_text('[lines]\nattract = ["a"]\ngreeting = ["Back!"]\n')
    cfg = load_host_config(path)
    assert cfg.lines.attract == ("a",) and ("greeting", "Back!") in cfg.lines.texts()


# --- the skull --------------------------------------------------------------------------------

def test_rebooted_with_the_host_stopped_a_press_says_a_cached_line_with_a_moving_jaw(tmp_path, backends):
    async def go():
        host = await start_host(HostConfig(server=ServerConfig(port=0)), backends)
        port = host.port
        cfg = _config(port, tmp_path / "lines")
        first = Agent(cfg, sim_body(cfg))
        task, got = await _run(first)
        try:
            await wait_for(lambda: any(isinstance(e, ev.LinesCached) for e in got), 60)
        finally:
            await _stop(task)
            await host.stop()
        # the host is gone; the skull reboots: a new agent with the same cache folder
        skull = Agent(cfg, sim_body(cfg))
        task, got = await _run(skull)
        try:
            await asyncio.sleep(0.3)
            assert skull.state is State.OFFLINE
            await _press(skull)
            await _press(skull)  # a second press while the line plays: no second line
            await wait_for(lambda: _said(got), 10)
            await wait_for(lambda: not skull.machine.saying, 30)
        finally:
            await _stop(task)
        return skull, got
    skull, got = asyncio.run(go())
    said = _said(got)
    assert len(said) == 1 and said[0].kind == "offline" and said[0].source == "cache"
    assert said[0].text in LinesConfig().offline
    openings = [e.opening for e in skull.body.jaw.log if e.pulse_us is not None]
    assert max(openings) > 0.3, "the jaw never opened with the line"
    first_open = next(i for i, o in enumerate(openings) if o > 0.3)
    assert any(o < 0.1 for o in openings[first_open:]), "the jaw never closed again after opening"
    assert skull.body.jaw.log[-1].opening == 0.0  # shut at the end


def test_a_host_lost_while_the_visitor_speaks_is_answered_by_a_line_of_the_skulls_own(tmp_path, backends):
    """The link goes with the question half spoken: the turn ends, and rather than silence the
    visitor hears a cached offline line, with the jaw shut first."""
    async def go():
        host = await start_host(HostConfig(server=ServerConfig(port=0)), backends)
        cfg = _config(host.port, tmp_path / "lines")
        skull = Agent(cfg, sim_body(cfg, speed=0.5))  # a question that takes a while to say
        task, got = await _run(skull)
        try:
            await wait_for(lambda: any(isinstance(e, ev.LinesCached) for e in got), 60)
            pin = skull.body.panel.button.pin
            pin.drive_low()
            await wait_for(lambda: skull.state is State.LISTENING, 5)
            await asyncio.sleep(0.3)
            await host.stop()
            await wait_for(lambda: _said(got), 10)
            pin.drive_high()
            await wait_for(lambda: not skull.machine.saying, 30)
        finally:
            await _stop(task)
        return got
    got = asyncio.run(go())
    ended = [e.record.outcome for e in got if isinstance(e, ev.TurnEnded)]
    assert ended == ["disconnected"], ended
    said = _said(got)
    assert len(said) == 1 and said[0].kind == "offline" and said[0].source == "cache", said
    assert got.index(said[0]) > next(i for i, e in enumerate(got) if isinstance(e, ev.TurnEnded))


def test_with_no_cache_the_skull_apologises_with_espeak_and_a_live_jaw(tmp_path):
    async def go():
        cfg = _config(1, tmp_path / "empty")  # port 1: no host there
        skull = Agent(cfg, sim_body(cfg))
        task, got = await _run(skull)
        try:
            await asyncio.sleep(0.2)
            await _press(skull)
            await wait_for(lambda: _said(got), 20)
            await wait_for(lambda: not skull.machine.saying, 30)
        finally:
            await _stop(task)
        return skull, got
    skull, got = asyncio.run(go())
    said = _said(got)
    assert [(e.kind, e.source, e.text) for e in said] == [("offline", "espeak", skull.config.offline.apology)]
    assert max(e.opening for e in skull.body.jaw.log) > 0.2, "the live level never opened the jaw"


def test_a_damaged_cache_is_ignored_with_one_warning(tmp_path, caplog):
    cache = LineCache(tmp_path)
    cache.save(_received("good"))
    assert cache.id() == "good"
    folder = tmp_path / (tmp_path / "CURRENT").read_text().strip()
    pcm = folder / "01.pcm"
    data = bytearray(pcm.read_bytes())
    data[100] ^= 0xFF
    pcm.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, "skull.lines"):
        assert cache.load() is None
    assert len(caplog.records) == 1 and "damaged or half written" in caplog.text and "checksum" in caplog.text
    # a manifest cut short, and a pointer to nothing: ignored the same way
    (folder / "lines.json").write_text(json.dumps({"format": 1, "set": "good"})[:20])
    assert cache.load() is None
    (tmp_path / "CURRENT").write_text("set-gone\n")
    assert cache.load() is None


def test_a_half_written_set_never_replaces_a_good_one(tmp_path, monkeypatch):
    import skull.lines as lines
    cache = LineCache(tmp_path)
    cache.save(_received("good"))
    real = lines._write_synced

    def power_cut(path, data):
        if path.name == "lines.json":
            raise OSError(28, "No space left on device")
        real(path, data)
    monkeypatch.setattr(lines, "_write_synced", power_cut)
    with pytest.raises(OSError):
        cache.save(_received("new", kinds=("offline",)))
    monkeypatch.setattr(lines, "_write_synced", real)
    kept = cache.load()
    assert kept.id == "good" and len(kept.lines) == 3
    assert [c.name for c in tmp_path.iterdir() if c.name.startswith(".new-")] == []
    cache.save(_received("new", kinds=("offline",)))
    assert cache.load().id == "new"
    assert len([c for c in tmp_path.iterdir() if c.name.startswith("set-")]) == 1  # the old set is removed


def test_two_skull_processes_of_one_name_keep_their_sets_without_breaking_each_other(tmp_path):
    # `skull demo` beside `skull run` on one machine: both keep lines in the same folder. Each
    # process saves 30 sets as fast as it can, at the same time as the other (before the saves
    # took turns, 19-29 of 40 failed in each: one's sweep removed the folder the other wrote)
    root = Path(__file__).resolve().parent.parent
    code = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(root)!r}, {str(root / "tests")!r}]
        from test_lines import _received
        from skull.lines import LineCache
        cache, failed = LineCache({str(tmp_path)!r}), []
        for i in range(30):
            try:
                cache.save(_received(sys.argv[1] + str(i)))
            except OSError as exc:
                failed.append(repr(exc))
        print(len(failed), failed[:1])
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for name in ("demo", "run")]
    outs = [proc.communicate(timeout=120) for proc in procs]
    assert [out.split()[0] for out, _ in outs] == ["0", "0"], outs
    kept = LineCache(tmp_path).load()
    assert kept is not None and kept.id in ("demo29", "run29") and len(kept.lines) == 3  # the last save, whole
    sets = [c.name for c in tmp_path.iterdir() if c.name.startswith((".new-", "set-"))]
    assert sets == [(tmp_path / "CURRENT").read_text().strip()]  # nothing half written or left over


def test_a_set_is_kept_only_once_whole_and_within_its_cap():
    lines = _received("s1", kinds=("offline", "attract", "greeting"))
    c = LineCollector(max_bytes=10 ** 6)
    assert c.add(*lines[0]) is None and c.add(*lines[1]) is None
    assert c.add(*_received("s2", kinds=("offline",))[0]) is not None  # another set starts afresh, and is whole
    assert c.add(*lines[2]) is None  # s1's last line alone is not a set
    # a connection lost half way, and the host sends the set whole again: it is kept
    again = LineCollector()
    assert again.add(*lines[0]) is None and again.add(*lines[1]) is None
    assert [again.add(*r) for r in lines][-1] is not None
    twice = LineCollector()
    assert [twice.add(*r) for r in (lines[0], lines[1], lines[1], lines[2])] == [None] * 4  # an index twice
    small = LineCollector(max_bytes=20000)
    assert [small.add(*r) for r in lines] == [None, None, None]  # 3 x 12800 bytes is over the cap


def test_attract_lines_are_random_and_none_repeats_until_all_were_said():
    import random

    from skull.lines import decode
    lines = decode(_received(kinds=("attract",) * 4), "s").of("attract")
    picker = Picker(random.Random(3))
    said = [picker.pick(lines).text for _ in range(12)]
    for k in range(0, 12, 4):
        assert sorted(said[k:k + 4]) == sorted(line.text for line in lines)
    assert all(a != b for a, b in zip(said, said[1:]))


def test_the_cache_lives_under_xdg_state_home(state_home):
    assert default_cache_dir("mr-bones") == state_home / "skull" / "mr-bones" / "lines"


def test_with_no_host_speech_says_a_line_hands_free_and_its_echo_starts_no_other(tmp_path):
    """A voice trigger with no host: the visitor's speech starts a line. The line ends with a
    pause and a short "boo!" whose echo comes back late through the room, after the line ended:
    the skull is deaf to it, as to its replies' echo (without that, the echo said a second line)."""
    from skull.config import ListenConfig
    from skull.core.vad import speech_segments
    from skull.core.wav import to_pcm16, write_wav
    from test_triggers import RATE, SPEED, Room, espeak, in_noise
    def voiced(text):  # without espeak-ng's silence after the words: the line ends with its "boo"
        x = espeak(text)
        return x[:int(np.nonzero(np.abs(x) > 0.01)[0][-1]) + 1]
    said = np.concatenate([voiced("my voice from beyond is lost"), np.zeros(int(1.2 * RATE), np.float32),
                           voiced("boo")])
    voice = to_pcm16(said)
    line = p.Line("spoken", 0, 1, "offline", "my voice from beyond is lost... boo", RATE, 2, 1, len(voice), 100,
                  [0.7] * (len(said) * 100 // RATE))
    LineCache(tmp_path / "lines").save([Received(line, voice)])
    quiet = tmp_path / "quiet.wav"
    write_wav(quiet, np.zeros(int(0.2 * RATE), np.float32), RATE)

    async def go():
        cfg = dataclasses.replace(_config(1, tmp_path / "lines"), listen=ListenConfig(trigger="voice"))
        body = sim_body(cfg, question=quiet, speed=SPEED)
        room = body.mic.room = Room(body.player, gain=0.6, delay_s=0.3)  # the skull hears its own line, late
        skull = Agent(cfg, body)
        task, got = await _run(skull)
        try:
            await asyncio.sleep(0.3)
            body.mic.say(in_noise(espeak("hello skull"), 0.5, 0.3, 20.0, np.random.default_rng(5)))
            await wait_for(lambda: _said(got), 20)
            await wait_for(lambda: not skull.machine.saying, 30)
            await asyncio.sleep(4.0 / SPEED)  # the echo and the room's tail
        finally:
            await _stop(task)
        return skull, got, np.concatenate(room.heard)
    skull, got, echo = asyncio.run(go())
    assert [(e.kind, e.source) for e in _said(got)] == [("offline", "cache")]
    assert len(speech_segments(echo, RATE)) >= 2, "the line's echo was not speech: this test could not fail"
    assert skull.state is State.OFFLINE and skull.machine.turn == 0
