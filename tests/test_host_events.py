"""The host's turn event bus and its supervision, with a real host on loopback (embedded
backends) and a tiny protocol-v1 client: every stage is published in order, the timings and
the log line are subscribers, and no single failure (a backend, a subscriber, a frame handler,
a fault inside a turn, a hostile frame) stops the host."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import start_host
from host import events as ev
from host.filter import FamilyFilter
from host.server import Host, SkullSession
from skull.core import protocol as p
from skull.core.bus import Bus
from skull.core.data import bundled
from skull.core.wav import read_wav, to_mono_rate, to_pcm16

QUESTION = to_pcm16(to_mono_rate(read_wav(bundled("question.wav")), 16000))
SNAPSHOT = bundled("snapshot.jpg").read_bytes()


@dataclasses.dataclass
class Answer:
    """What the host sent back for one turn."""
    acks: list = dataclasses.field(default_factory=list)
    heard: p.Heard | None = None
    speech: list = dataclasses.field(default_factory=list)
    """(Speech message, PCM bytes)"""
    errors: list = dataclasses.field(default_factory=list)
    done: p.Done | None = None

    @property
    def spoken(self) -> list[str]:
        return [msg.text for msg, _ in self.speech]


class Client:
    """Just enough of a skull to ask questions: hello, listen, image, audio_start + PCM, stop."""

    def __init__(self, ws):
        self.ws = ws
        self.reader = p.FrameReader(p.HOST_MESSAGES)

    @classmethod
    async def connect(cls, port: int, name: str = "s") -> "Client":
        ws = await connect(f"ws://127.0.0.1:{port}", max_size=p.TRANSPORT_MAX_BYTES)
        await ws.send(json.dumps({"type": "hello", "protocol": 1, "skull": name}))
        client = cls(ws)
        welcome, _ = await client.recv()
        assert isinstance(welcome, p.Welcome)
        return client

    async def recv(self, timeout_s: float = 30.0) -> tuple[p.Message, bytes | None]:
        msg = self.reader.read_text(await asyncio.wait_for(self.ws.recv(), timeout_s))
        if msg.has_payload:
            msg, payload = self.reader.read_binary(await asyncio.wait_for(self.ws.recv(), timeout_s))
            return msg, payload
        return msg, None

    async def send(self, msg: p.Message, payload: bytes | None = None) -> None:
        for frame in p.encode(msg, payload):
            await self.ws.send(frame)

    async def ask(self, turn: int, played_ms: float | None = None) -> Answer:
        """One push-to-talk turn with the bundled question and snapshot; ``played_ms``: report
        first_audio back to the host, as a skull does once it starts playing."""
        answer = Answer()
        await self.put_question(turn)
        while answer.done is None:
            msg, payload = await self.recv()
            if isinstance(msg, p.Ack):
                answer.acks.append(msg.of)
            elif isinstance(msg, p.Heard):
                answer.heard = msg
            elif isinstance(msg, p.Speech):
                answer.speech.append((msg, payload))
            elif isinstance(msg, p.Error):
                answer.errors.append(msg)
            elif isinstance(msg, p.Done):
                assert msg.turn == turn
                answer.done = msg
        if played_ms is not None:
            await self.send(p.Played(turn, played_ms))
        return answer

    async def put_question(self, turn: int) -> None:
        """listen, the bundled snapshot, the bundled question's audio, stop."""
        await self.send(p.Listen(turn))
        await self.send(p.Image(turn, "jpeg", len(SNAPSHOT)), SNAPSHOT)
        await self.send(p.AudioStart(turn, 16000, 2, 1))
        for i in range(0, len(QUESTION), 3200):
            await self.ws.send(QUESTION[i:i + 3200])
        await self.send(p.Stop(turn))

    async def barrier(self) -> None:
        """Returns once the host has handled every frame sent before (frames are handled in order)."""
        await self.ws.send('{"type":"stop","turn":99999}')
        while True:
            msg, _ = await self.recv()
            if isinstance(msg, p.Error) and "99999" in msg.message:
                return


def answered(answer: Answer) -> bool:
    """The skull heard something and the turn ended: speech with audio, then done."""
    return (answer.done is not None and answer.done.segments == len(answer.speech) > 0
            and all(len(pcm) > 0 for _, pcm in answer.speech))


async def _host(host_config, backends):
    return await start_host(host_config, backends)


# --- the bus ---------------------------------------------------------------------------------

def test_a_subscriber_sees_every_stage_of_a_turn_in_order(host_config, backends):
    async def go():
        host = await _host(host_config, backends)
        seen: list[ev.TurnEvent] = []
        host.events.subscribe(seen.append, *ev.TURN_EVENTS)  # this turn's, not the skull coming and going
        try:
            client = await Client.connect(host.port)
            answer = await client.ask(1, played_ms=321.0)
            await client.barrier()
            collected = host.timings.of("s", 1)
            await client.ws.close()
        finally:
            await host.stop()
        return seen, answer, collected

    seen, answer, collected = asyncio.run(go())
    assert answered(answer) and not answer.errors
    assert all(e.skull == "s" and e.turn == 1 for e in seen)

    def at(kind, stage=None, nth=0):
        hits = [i for i, e in enumerate(seen) if isinstance(e, kind) and (stage is None or e.stage == stage)]
        assert len(hits) > nth, f"no {kind.__name__} {stage or ''} in {[type(e).__name__ for e in seen]}"
        return hits[nth]

    assert isinstance(seen[0], ev.TurnStarted)
    # vision runs from the snapshot on, while the visitor is still talking
    assert 0 < at(ev.StageStarted, "vision") < at(ev.StageFinished, "vision")
    assert at(ev.StageStarted, "vision") < at(ev.Stopped) < at(ev.StageStarted, "stt") < at(ev.StageFinished, "stt")
    assert at(ev.StageFinished, "stt") < at(ev.Transcript) < at(ev.Caption) < at(ev.StageStarted, "reply")
    assert at(ev.StageStarted, "reply") < at(ev.FirstPiece) < at(ev.Sentence) < at(ev.StageStarted, "tts")
    assert at(ev.StageStarted, "tts") < at(ev.SegmentSent) < at(ev.Done) < at(ev.Played) == len(seen) - 1
    assert at(ev.StageFinished, "reply") < at(ev.Done)
    assert not any(isinstance(e, (ev.TurnError, ev.Fallback)) for e in seen)

    finished = {e.stage: e for e in seen if isinstance(e, ev.StageFinished)}
    assert all(e.ok and e.ms >= 0 for e in finished.values())
    assert seen[at(ev.Stopped)].audio_s == pytest.approx(len(QUESTION) / 32000, abs=0.01)
    assert "costume" in seen[at(ev.Transcript)].text == answer.heard.transcript
    assert "two faces" in seen[at(ev.Caption)].text == answer.heard.caption

    sentences = [e for e in seen if isinstance(e, ev.Sentence)]
    segments = [e for e in seen if isinstance(e, ev.SegmentSent)]
    assert [s.index for s in sentences] == list(range(len(sentences))) and len(sentences) >= 2
    assert [(s.seq, s.text) for s in segments] == [(m.seq, m.text) for m, _ in answer.speech]
    for s, (msg, pcm) in zip(segments, answer.speech):
        assert s.audio_s == pytest.approx(len(pcm) / 2 / msg.rate, abs=0.01)

    done = seen[at(ev.Done)]
    assert (done.reply, done.segments, done.timings_ms) == (answer.done.reply, answer.done.segments,
                                                            answer.done.timings_ms)
    # done.timings_ms is what the timings subscriber built from the events above
    t = answer.done.timings_ms
    assert t == collected
    assert set(t) == {"stt", "stt_tail_audio", "vision", "reply", "llm_first_token", "llm_first_sentence",
                      "tts_first_segment", "tts", "total"}
    tts = [e.ms for e in seen if isinstance(e, ev.StageFinished) and e.stage == "tts"]
    assert t["tts"] == pytest.approx(sum(tts), abs=0.5)  # the turn's total synthesis time
    hearing = seen[at(ev.Hearing)]
    assert at(ev.StageStarted, "stt") < at(ev.Hearing) < at(ev.StageFinished, "stt")
    assert hearing.segments >= 1 and t["stt_tail_audio"] == hearing.tail_audio_s * 1000 <= hearing.audio_s * 1000
    assert (t["stt"], t["vision"], t["reply"]) == (finished["stt"].ms, finished["vision"].ms, finished["reply"].ms)
    assert t["llm_first_token"] == seen[at(ev.FirstPiece)].at_ms
    assert t["llm_first_sentence"] == sentences[0].at_ms
    assert t["tts_first_segment"] == segments[0].at_ms
    assert t["llm_first_token"] <= t["llm_first_sentence"] <= t["tts_first_segment"] <= t["total"]
    assert seen[-1] == ev.Played("s", 1, 321.0)


def test_the_turn_log_line_is_a_subscriber(host_config, backends, caplog):
    caplog.set_level(logging.INFO, logger="host.turns")

    def lines():
        return [r.getMessage() for r in caplog.records if r.name == "host.turns"]

    async def go():
        host = await _host(host_config, backends)
        try:
            client = await Client.connect(host.port)
            await client.ask(1, played_ms=250.0)
            await client.barrier()  # played handled: the line is written at once, no waiting
            first = lines()
            host.turn_log.detach()
            await client.ask(2, played_ms=260.0)
            await client.barrier()
            await client.ws.close()
        finally:
            await host.stop()
        return first

    first = asyncio.run(go())
    assert len(first) == 1
    line = first[0]
    assert line.startswith("s: turn 1 ") and "stt=" in line and "vision=" in line and "total=" in line
    assert "first_audio=250" in line and "heard='" in line and "costume" in line and "caption='" in line
    assert lines() == first  # detached: turn 2 logged nothing, not even when the host stopped


def _turn_events(skull, turn, played_ms=None):
    """A turn's events as the log subscriber sees them; ``played_ms``: the skull's played before done."""
    played = [] if played_ms is None else [ev.Played(skull, turn, played_ms)]
    return [ev.TurnStarted(skull, turn), ev.Transcript(skull, turn, "hello"), ev.Caption(skull, turn, "a hat"),
            *played, ev.Done(skull, turn, "Boo.", 1, {"total": 900.0})]


def test_the_turn_log_waits_a_bounded_time_for_played_and_no_longer_than_the_next_turn(caplog):
    caplog.set_level(logging.INFO, logger="host.turns")

    def lines():
        return [r.getMessage() for r in caplog.records if r.name == "host.turns"]

    async def go():
        bus = Bus("test")
        ev.TurnLog(played_wait_s=0.2).attach(bus)
        for e in _turn_events("a", 1, played_ms=80.0):  # played before done (the usual order): logged at done
            bus.emit(e)
        assert lines() == ["a: turn 1 total=900 first_audio=80 heard='hello' caption='a hat' reply='Boo.'"]
        for e in _turn_events("a", 2):  # no played: logged after the wait
            bus.emit(e)
        assert len(lines()) == 1
        await asyncio.sleep(0.4)
        assert lines()[-1] == "a: turn 2 total=900 heard='hello' caption='a hat' reply='Boo.'"
        for e in _turn_events("b", 7) + [ev.TurnStarted("b", 8)]:  # the next turn starts first
            bus.emit(e)
        assert lines()[-1].startswith("b: turn 7 total=900 heard=")
        bus.emit(ev.Played("b", 7, 50.0))  # too late for its line, and never a second line
        await asyncio.sleep(0.4)
        assert len(lines()) == 3
    asyncio.run(go())


# --- supervision -------------------------------------------------------------------------------

class ReplyFailingOnce:
    """The embedded reply writer, except that its first reply raises a plain RuntimeError."""

    def __init__(self, inner):
        self.inner, self.name, self.sees_images = inner, inner.name, inner.sees_images
        self.calls, self.threads = 0, []

    def reply(self, context):
        return self.inner.reply(context)

    def stream(self, context, cancel=None):
        self.calls += 1
        self.threads.append(threading.current_thread().name)
        if self.calls == 1:
            raise RuntimeError("the joke book caught fire")
        return self.inner.stream(context, cancel)


def test_a_backend_raising_a_plain_exception_gives_the_fallback_line(host_config, backends):
    writer = ReplyFailingOnce(backends.reply)

    async def go():
        host = await start_host(host_config, dataclasses.replace(backends, reply=writer))
        loop = asyncio.get_running_loop()
        pool = host.executor
        try:
            client = await Client.connect(host.port)
            first = await client.ask(1)
            second = await client.ask(2)
            # the loop's own default executor is left alone for whatever else shares the loop
            default_thread = await loop.run_in_executor(None, lambda: threading.current_thread().name)
            await client.ws.close()
        finally:
            await host.stop()
        return first, second, default_thread, pool

    first, second, default_thread, pool = asyncio.run(go())
    assert answered(first) and first.spoken == [host_config.fallback.reply]
    assert [(e.code, e.turn) for e in first.errors] == [(p.E_STAGE_FAILED, 1)]
    assert "RuntimeError: the joke book caught fire" in first.errors[0].message
    assert answered(second) and not second.errors and "costume" in second.done.reply.lower()
    assert writer.threads and all(name.startswith("host-backend") for name in writer.threads)
    assert not default_thread.startswith("host-backend")
    with pytest.raises(RuntimeError):  # stop closed the host's pool
        pool.submit(print)


class FaultyVoice:
    """A voice that fails outright, or one that takes ``delay_s`` before speaking."""

    def __init__(self, inner, name: str, fails: bool = False, delay_s: float = 0.0):
        self.inner, self.name, self.fails, self.delay_s = inner, name, fails, delay_s

    def synthesize(self, text):
        if self.fails:
            raise RuntimeError("the voice box is cracked")
        time.sleep(self.delay_s)
        return self.inner.synthesize(text)


def test_the_fallback_voice_gets_the_configured_time(host_config, backends):
    broken = FaultyVoice(backends.tts, "cracked", fails=True)
    slow = FaultyVoice(backends.fallback_voice, "slow-espeak", delay_s=1.5)
    config = dataclasses.replace(host_config, fallback=dataclasses.replace(host_config.fallback, timeout_s=0.5))

    async def go():
        host = await start_host(config, dataclasses.replace(backends, tts=broken, fallback_voice=slow))
        try:
            client = await Client.connect(host.port)
            t0 = time.monotonic()
            answer = await client.ask(1)
            took_s = time.monotonic() - t0
            await client.ws.close()
        finally:
            await host.stop()
        return answer, took_s

    answer, took_s = asyncio.run(go())
    assert answer.done is not None and answer.done.segments == 0
    assert "fallback voice gave no answer within 0.5 s" in answer.errors[-1].message
    assert took_s < 1.5 + answer.done.timings_ms["stt"] / 1000  # it did not wait for the slow voice


def test_a_subscriber_that_raises_never_reaches_the_turn(host_config, backends, caplog):
    def broken(event):
        raise ValueError(f"dashboard fell over on {type(event).__name__}")

    async def go():
        host = await _host(host_config, backends)
        host.events.subscribe(broken)
        try:
            client = await Client.connect(host.port)
            answers = [await client.ask(1), await client.ask(2)]
            await client.ws.close()
        finally:
            await host.stop()
        return answers

    for answer in asyncio.run(go()):
        assert answered(answer) and not answer.errors
    failures = [r for r in caplog.records if r.name == "skull.bus" and "dashboard fell over" in r.getMessage()]
    assert failures and failures[0].exc_info and not any(r.exc_info for r in failures[1:])


def test_a_frame_handler_fault_is_answered_and_the_connection_stays_open(host_config, backends, caplog,
                                                                         monkeypatch):
    real = SkullSession._handle
    faults = iter([RuntimeError("handler tripped"), RuntimeError("handler tripped")])

    async def tripping(self, frame):
        fault = next(faults, None)
        if fault is not None:
            raise fault
        return await real(self, frame)
    monkeypatch.setattr(SkullSession, "_handle", tripping)

    async def go():
        host = await _host(host_config, backends)
        try:
            client = await Client.connect(host.port)
            errors = []
            for turn in (1, 2):  # both listens are lost to the fault, and each is answered
                await client.send(p.Listen(turn))
                errors.append((await client.recv())[0])
            answer = await client.ask(3)  # the same connection goes on
            await client.ws.close()
        finally:
            await host.stop()
        return errors, answer

    errors, answer = asyncio.run(go())
    assert [e.code for e in errors] == [p.E_INTERNAL, p.E_INTERNAL]
    assert "'listen' message" in errors[0].message and "press again" in errors[0].message
    assert answered(answer) and not answer.errors
    logged = [r for r in caplog.records if r.name == "host.server" and "handler tripped" in r.getMessage()]
    assert len(logged) == 2 and "s: handling a 'listen' message" in logged[0].getMessage()
    assert logged[0].exc_info and not logged[1].exc_info  # the traceback once, then one line


def test_a_connection_fault_is_closed_by_the_host_and_the_next_connection_is_served(host_config, backends,
                                                                                     monkeypatch, caplog):
    real = Host._handshake
    faults = iter([RuntimeError("handshake tripped")])

    async def tripping(self, ws):
        hello = await real(self, ws)
        fault = next(faults, None)
        if fault is not None:  # after reading hello, before welcome
            raise fault
        return hello
    monkeypatch.setattr(Host, "_handshake", tripping)

    async def go():
        host = await _host(host_config, backends)
        try:
            async with connect(f"ws://127.0.0.1:{host.port}") as ws:
                await ws.send(json.dumps({"type": "hello", "protocol": 1, "skull": "s"}))
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 5)
            client = await Client.connect(host.port)
            answer = await client.ask(1)
            await client.ws.close()
        finally:
            await host.stop()
        return closed.value.rcvd, answer

    close, answer = asyncio.run(go())
    assert close.code == 1011 and "reconnect" in close.reason
    assert answered(answer)
    logged = [r for r in caplog.records if r.name == "host.server" and "handshake tripped" in r.getMessage()]
    assert len(logged) == 1 and logged[0].getMessage().startswith("connection from ")
    assert not [r for r in caplog.records if r.name.startswith("host.websockets") and r.levelno >= logging.ERROR]


def test_a_fault_inside_a_turn_still_ends_it_with_speech_and_done(host_config, backends, monkeypatch):
    real = FamilyFilter.clean
    calls = []

    def clean_failing_once(self, text):
        calls.append(text)
        if len(calls) == 1:
            raise KeyError("filter table missing")
        return real(self, text)
    monkeypatch.setattr(FamilyFilter, "clean", clean_failing_once)

    async def go():
        host = await _host(host_config, backends)
        seen = []
        host.events.subscribe(seen.append, ev.TurnError, ev.Fallback)
        try:
            client = await Client.connect(host.port)
            answers = [await client.ask(1), await client.ask(2)]
            await client.ws.close()
        finally:
            await host.stop()
        return answers, seen

    (first, second), seen = asyncio.run(go())
    assert answered(first) and first.spoken == [host_config.fallback.reply]
    assert [(e.code, e.turn) for e in first.errors] == [(p.E_INTERNAL, 1)]
    assert "KeyError" in first.errors[0].message
    assert [type(e) for e in seen] == [ev.TurnError, ev.Fallback] and seen[1].stage == "turn"
    assert answered(second) and not second.errors and "costume" in second.done.reply.lower()


@pytest.mark.parametrize("frame", [
    "[" * 100000,
    '{"type":"listen","turn":' + "7" * 5000 + "}",
    '{"type":"stop","turn":1,"reason":"\\ud800"}',
], ids=["deep-nesting", "5000-digit-int", "lone-surrogate"])
def test_hostile_frames_are_answered_and_the_next_turn_goes_on(host_config, backends, frame):
    async def go():
        host = await _host(host_config, backends)
        try:
            client = await Client.connect(host.port)
            await client.ws.send(frame)
            error, _ = await client.recv()
            answer = await client.ask(1)
            await client.ws.close()
        finally:
            await host.stop()
        return error, answer

    error, answer = asyncio.run(go())
    assert isinstance(error, p.Error) and error.code in (p.E_BAD_JSON, p.E_BAD_FIELD) and error.message
    assert answered(answer) and not answer.errors


# --- a skull that goes away mid-reply ---------------------------------------------------------

def test_a_skull_that_goes_away_mid_reply_ends_its_turn_quietly(host_config, backends, caplog):
    """The skull closes its connection as the first sentence arrives: the host ends that turn
    with one info line (no error, no traceback, no task left with an unread exception) and
    the next skull is answered. (The race that once left a voice task's exception unread is
    reproduced by the tests below, not here.)"""
    import gc

    def ended_quietly(r):
        return r.levelno == logging.INFO and r.getMessage() in ("leaver: connection closed during turn 1",
                                                                "leaver: turn 1 abandoned")

    async def go():
        host = await _host(host_config, backends)
        try:
            client = await Client.connect(host.port, name="leaver")
            await client.put_question(1)
            first = None
            while not isinstance(first, p.Speech):
                first, _ = await client.recv()
            await client.ws.close()
            # gone at once, the rest of the reply still to come: the turn ends on its next send
            for _ in range(200):
                if any(ended_quietly(r) for r in caplog.records):
                    break
                await asyncio.sleep(0.05)
            gc.collect()  # a task that ended with an unread exception is reported when collected
            await asyncio.sleep(0)
            other = await Client.connect(host.port, name="stayer")
            answer = await other.ask(1)
            await other.ws.close()
        finally:
            await host.stop()
        return answer

    with caplog.at_level(logging.INFO):
        answer = asyncio.run(go())
    assert answered(answer)
    assert any(ended_quietly(r) for r in caplog.records)
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not loud, [r.getMessage() for r in loud]


def test_a_voice_leaves_nothing_unread_and_logs_each_fault_nobody_raised_once(caplog):
    """The turn gives up on its voice while a sentence is being sent, and the send path answers
    the cancel with ConnectionClosed instead (a close racing the cancel): that ending is taken,
    not left for asyncio to report as 'never retrieved' with a traceback, and it is no fault. A
    fault the voice meets after the turn gave up, or one the turn never drained, is logged once.
    A voice whose skull went away tells the turn through drain()."""
    import gc
    from websockets.exceptions import ConnectionClosedOK
    from websockets.frames import Close

    from host.turn import Voice

    def closed():
        return ConnectionClosedOK(Close(1000, "bye"), Close(1000, "bye"), True)

    class Speaker:
        skull, turn = "s", 1

        def __init__(self, *, at_once=None, on_cancel=None):
            self.sending, self.at_once, self.on_cancel = asyncio.Event(), at_once, on_cancel

        async def speak(self, sentence):
            self.sending.set()
            if self.at_once is not None:
                raise self.at_once
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                raise self.on_cancel from None

    async def given_up(on_cancel):
        speaker = Speaker(on_cancel=on_cancel)
        voice = Voice(speaker)
        voice.say("Hello there.")
        await speaker.sending.wait()
        voice.cancel()
        await asyncio.sleep(0.05)

    async def go():
        reported = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context))
        await given_up(closed())  # the skull is gone: nothing to report
        await given_up(RuntimeError("cracked while giving up"))  # a fault: logged once
        speaker = Speaker(at_once=RuntimeError("cracked unheard"))  # a fault the turn never drained
        voice = Voice(speaker)
        voice.say("Hello there.")
        await asyncio.sleep(0.05)
        voice.cancel()
        voice.cancel()
        speaker = Speaker(at_once=closed())
        voice = Voice(speaker)
        voice.say("Hello there.")
        with pytest.raises(ConnectionClosed):
            await voice.drain()
        voice.cancel()
        del voice, speaker
        gc.collect()
        await asyncio.sleep(0)
        return reported

    with caplog.at_level(logging.INFO):
        reported = asyncio.run(go())
    assert not [c.get("message") for c in reported]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2, errors
    assert "cracked while giving up" in errors[0] and "cracked unheard" in errors[1]


def test_a_backend_call_that_finishes_as_its_turn_is_cancelled_is_cancelled():
    """The turn is cancelled in the same moment its backend call finishes: the cancel wins, so
    an abandoned turn goes no further (asyncio.wait_for on Python 3.11 returned the result
    instead and the turn went on speaking)."""
    import concurrent.futures
    import types

    from host.turn import Turn

    class Held(concurrent.futures.Executor):
        def __init__(self):
            self.future = concurrent.futures.Future()

        def submit(self, fn, *args, **kwargs):
            return self.future

    async def go():
        held = Held()
        owner = types.SimpleNamespace(executor=held)
        went_on = []

        async def turn():
            went_on.append(await Turn._blocking(owner, "tts", 5.0, print))

        task = asyncio.create_task(turn())
        await asyncio.sleep(0.01)  # the call is under way
        loop = asyncio.get_running_loop()
        held.future.set_result("speech")  # its result reaches the loop on the next pass...
        loop.call_soon(task.cancel)  # ...and the cancel right after it, before the turn wakes
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return task.cancelled(), went_on

    cancelled, went_on = asyncio.run(go())
    assert cancelled and went_on == []
