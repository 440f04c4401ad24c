"""What the speaker really played: `skull replay` scores the jaw against the sound server's
monitor ("as heard") on a real PulseAudio null sink, `skull doctor` plays a test tone and hears
it come out, and a recorded turn's heard.wav places the live jaw by when its commands were sent.

The PulseAudio tests start a private server (a null sink, in a temp folder) and run the skull
command as a subprocess with that server's environment, so PortAudio finds it when it starts;
they skip, saying why, where PulseAudio is not installed or cannot start."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from skull.audio.heardfile import read_heard, write_heard
from skull.audio.monitor import Heard
from skull.cli import main
from skull.config import Calibration, SkullConfig
from skull.core.data import bundled
from skull.core.envelope import jaw_track
from skull.core.errors import SkullError
from skull.core.wav import read_wav, to_mono, write_wav
from skull.doctor import TONE_PEAK, TONE_S, _judge_tone, _Tone
from skull.jaw.simulate import follow
from skull.replay import caption, find_reply, live_sync

SINK = "skull_null"


# --- a private PulseAudio server ------------------------------------------------------------------

def _pactl_ok(env) -> bool:
    try:
        return subprocess.run(["pactl", "info"], env=env, capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    """The environment of a running private PulseAudio server whose default output is a null
    sink at 48 kHz (its monitor: skull_null.monitor)."""
    missing = [tool for tool in ("pulseaudio", "pactl", "parec") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"PulseAudio is not installed ({', '.join(missing)} missing; Debian packages pulseaudio, "
                    f"pulseaudio-utils and libasound2-plugins)")
    folder = tmp_path_factory.mktemp("pulse")
    run = folder / "run"
    run.mkdir(mode=0o700)
    script = folder / "default.pa"
    script.write_text(f"load-module module-native-protocol-unix auth-anonymous=1 socket={run}/native\n"
                      f"load-module module-null-sink sink_name={SINK} rate=48000\n"
                      f"set-default-sink {SINK}\n")
    env = {**os.environ, "HOME": str(folder), "XDG_RUNTIME_DIR": str(run), "XDG_CONFIG_HOME": str(folder / "config"),
           "PULSE_SERVER": f"unix:{run}/native"}
    env.pop("PULSE_SINK", None)
    log = open(folder / "pulseaudio.log", "wb")
    proc = subprocess.Popen(["pulseaudio", "-n", "-F", str(script), "--exit-idle-time=-1", "--daemonize=no",
                             "--log-target=stderr"], env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 15
    while not _pactl_ok(env):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            log.close()
            tail = (folder / "pulseaudio.log").read_text(errors="replace").strip().splitlines()[-3:]
            pytest.skip(f"PulseAudio could not start here: {' / '.join(tail)}")
        time.sleep(0.1)
    probe = subprocess.run([sys.executable, "-c", "import sounddevice as sd; "
                            "print(sum(d['max_output_channels'] > 0 for d in sd.query_devices()))"],
                           env=env, capture_output=True, text=True, timeout=60)
    if probe.returncode != 0 or probe.stdout.strip() in ("", "0"):
        proc.terminate()
        proc.wait()
        log.close()
        pytest.skip("PortAudio does not reach the PulseAudio server (ALSA's pulse plugin, Debian package "
                    "libasound2-plugins, is missing)")
    yield env
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def skull(env, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "skull", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def turn(tmp_path_factory):
    """A recorded turn whose reply is the bundled spoken question (2.7 s) with its jaw track."""
    folder = tmp_path_factory.mktemp("session") / "turn-001"
    folder.mkdir()
    audio = read_wav(bundled("question.wav"))
    x = to_mono(audio)
    write_wav(folder / "reply.wav", x, audio.rate)
    shape = SkullConfig().shape
    with open(folder / "jaw.csv", "w") as f:
        f.write("time_ms,opening\n")
        f.writelines(f"{k * 1000 / shape.fps:.1f},{v:.3f}\n" for k, v in enumerate(jaw_track(x, audio.rate, shape)))
    return folder


def figure(out: str, name: str) -> float:
    return float(re.search(rf"{name}\s+([+-]?\d+(?:\.\d+)?)", out).group(1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- skull replay on a real sound server ----------------------------------------------------------

def test_replay_scores_the_jaw_as_heard_on_a_null_sink(pulse, turn, tmp_path):
    png = tmp_path / "sync.png"
    r = skull(pulse, "replay", str(turn), "--report", "--plot", str(png))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    out = r.stdout
    assert f"measured           as heard (monitor of {SINK}.monitor)" in out, out
    # the jaw against what the null sink really played: on time within what nobody notices,
    # with room for a loaded two-core machine
    assert abs(figure(out, "effective lag")) <= 30, out
    assert figure(out, "correlation") >= 0.75, out
    assert re.search(r"heard length\s+[+-]\d+ ms from the reply's own", out), out
    # the reply was found where it was played: heard within a few buffers of when it was scheduled
    onset = re.search(r"first sound heard\s+([+-]\d+) ms from when it was scheduled \((\d+) ms after it was queued",
                      out)
    assert onset and abs(int(onset.group(1))) <= 100 and 0 <= int(onset.group(2)) <= 1000, out
    assert re.search(r"as scheduled\s+lag [+-]\d+ ms, r 0\.\d+", out), out
    assert png.is_file()


def test_replay_no_heard_and_heard_without_a_server(pulse, turn, tmp_path):
    r = skull(pulse, "replay", str(turn), "--no-heard")
    assert r.returncode == 0, r.stderr
    assert "(as scheduled (" in r.stdout and "--no-heard)" in r.stdout, r.stdout
    # --heard where no sound server answers: the reason, not a traceback
    nowhere = {**pulse, "PULSE_SERVER": f"unix:{tmp_path}/none", "XDG_RUNTIME_DIR": str(tmp_path)}
    r = skull(nowhere, "replay", str(turn), "--heard")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "--heard" in r.stderr and ("no sound server" in r.stderr or "simulated" in r.stderr), r.stderr


def test_replay_heard_and_no_audio_contradict(turn, capsys):
    assert main(["replay", str(turn), "--heard", "--no-audio"]) == 2
    assert "--no-audio opens no speaker" in capsys.readouterr().err


def test_replay_on_the_simulated_speaker_says_as_scheduled(turn, capsys):
    assert main(["replay", str(turn), "--report", "--no-audio"]) == 0
    out = capsys.readouterr().out
    assert "measured           as scheduled (simulated speaker)" in out
    assert "first sound heard" not in out


# --- skull doctor ----------------------------------------------------------------------------------

def doctor_lines(env):
    t = time.monotonic()
    r = skull(env, "doctor", "--url", f"ws://127.0.0.1:{free_port()}")
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    return {m.group(2): (m.group(1), m.group(3)) for ln in r.stdout.splitlines()
            if (m := re.match(r"(OK|WARN|FAIL)\s+(\w+(?: \w+)?)\s{2,}(.*)", ln))}, time.monotonic() - t


def test_doctor_plays_a_tone_and_hears_it_on_the_null_sink(pulse):
    lines, took = doctor_lines(pulse)
    status, speaker = lines["speaker"]
    assert status == "OK" and re.search(r"at \d+ Hz, output latency \d+ ms", speaker), speaker
    assert lines["sound server"][0] == "OK" and f"default output {SINK}" in lines["sound server"][1]
    status, tone = lines["speaker tone"]
    assert status == "OK", tone
    after = re.search(rf"came out of {SINK}\.monitor (\d+) ms after it was queued", tone)
    assert after and int(after.group(1)) < 500, tone
    assert "whole" in tone
    assert took < 30, took  # the tone check costs about two seconds


def test_doctor_says_nothing_came_out_of_a_muted_sink(pulse):
    subprocess.run(["pactl", "set-sink-mute", SINK, "1"], env=pulse, check=True, timeout=10)
    try:
        lines, _ = doctor_lines(pulse)
    finally:
        subprocess.run(["pactl", "set-sink-mute", SINK, "0"], env=pulse, check=True, timeout=10)
    status, tone = lines["speaker tone"]
    assert status == "WARN" and "nothing came out" in tone and "muted" in tone, tone


def test_doctor_warns_without_a_sound_server(tmp_path):
    env = {**os.environ, "PULSE_SERVER": f"unix:{tmp_path}/none", "XDG_RUNTIME_DIR": str(tmp_path)}
    lines, _ = doctor_lines(env)
    status, server = lines["sound server"]
    assert status == "WARN" and f"PULSE_SERVER=unix:{tmp_path}/none" in server and "not checked" in server
    if "speaker tone" in lines:  # a machine with its own sound card still plays the tone
        assert "not checked" in lines["speaker tone"][1] or lines["speaker tone"][0] != "OK"


# --- the tone line, from literal recordings --------------------------------------------------------

RATE = 48000


def heard_tone(delay_s=0.020, gap=None, gain=1.0) -> tuple[Heard, _Tone]:
    """A monitor recording that starts at monotonic 100.0 and hears the tone ``delay_s`` after
    it was queued at 100.1, with a silent ``gap`` (start s, length s) inside it."""
    t = np.arange(int(TONE_S * RATE)) / RATE
    tone = (TONE_PEAK * gain * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    if gap:
        a = int(gap[0] * RATE)
        tone = np.concatenate([tone[:a], np.zeros(int(gap[1] * RATE), np.float32), tone[a:]])
    x = np.zeros(int(1.5 * RATE), np.float32)
    i = int((0.1 + delay_s) * RATE)
    x[i:i + len(tone)] = tone
    return Heard(x, RATE, 100.0, f"{SINK}.monitor"), _Tone(100.1, 100.1 + delay_s, True, 0)


def test_tone_line_names_what_went_wrong():
    cfg = SkullConfig()
    heard, tone = heard_tone()
    f = _judge_tone(tone, heard, "", cfg)
    assert f.status == "OK" and "came out of skull_null.monitor 20 ms after it was queued" in f.detail
    assert "+0 ms from when the player expected it" in f.detail
    heard, tone = heard_tone(gap=(0.2, 0.040))
    f = _judge_tone(tone, heard, "", cfg)
    assert f.status == "WARN" and "40 ms gap" in f.detail and "output_latency_ms" in f.detail
    heard, tone = heard_tone(gain=0.05)  # the sink's volume at -26 dB: still heard, and said
    f = _judge_tone(tone, heard, "", cfg)
    assert f.status == "OK" and "26 dB quieter" in f.detail
    heard, tone = heard_tone(delay_s=0.080)
    tone.expected_at = 100.12  # the player thought 20 ms; it came 80 ms after
    f = _judge_tone(tone, heard, "", cfg)
    assert f.status == "WARN" and "the jaw will move 60 ms early" in f.detail
    silent = Heard(np.zeros(RATE, np.float32), RATE, 100.0, f"{SINK}.monitor")
    f = _judge_tone(tone, silent, "", cfg)
    assert f.status == "WARN" and "nothing came out" in f.detail
    under = _Tone(100.1, 100.12, True, 3)
    f = _judge_tone(under, heard, "", cfg)
    assert f.status == "WARN" and "underran 3 time(s)" in f.detail
    stuck = _Tone(100.1, None, False, None)
    assert _judge_tone(stuck, None, "", cfg).status == "FAIL"
    f = _judge_tone(_Tone(100.1, 100.12, True, None), None, "", cfg)
    assert f.status == "OK" and "not checked (no sound server monitor)" in f.detail


# --- finding the reply in the monitor, and heard.wav -----------------------------------------------

def speech():
    audio = read_wav(bundled("question.wav"))
    return to_mono(audio), audio.rate


def test_find_reply_measures_when_the_first_sample_was_heard():
    x, rate = speech()
    from skull.core.wav import resample
    y = resample(x, rate, RATE) * 0.3  # the sink's volume turns it down
    rec = np.zeros(int(4.0 * RATE), np.float32)
    # queued at 10.0, scheduled to be heard at 10.05, heard 25 ms later than that
    start = int((0.05 + 0.025) * RATE)
    rec[start:start + len(y)] = y
    found = find_reply(Heard(rec, RATE, 10.0, "x.monitor"), x, rate, scheduled_at=10.05, queued_at=10.0)
    assert found is not None
    assert found.onset_s * 1000 == pytest.approx(25.0, abs=1.0)
    assert found.after_queued_s * 1000 == pytest.approx(75.0, abs=1.0)
    assert find_reply(Heard(rec * 0, RATE, 10.0, "x.monitor"), x, rate, 10.05, 10.0) is None


def write_turn_with_commands(folder: Path, x, rate, cmds, heard_at_s: float, late_s: float = 0.0):
    """reply.wav and commands.csv of a turn whose reply was heard ``heard_at_s`` after the
    release; ``cmds``: (time on the reply's clock, opening) as the jaw loop meant to send them
    (one 35 ms lead before the sound they open for), each sent ``late_s`` after that."""
    folder.mkdir(parents=True, exist_ok=True)
    write_wav(folder / "reply.wav", x, rate)
    with open(folder / "commands.csv", "w") as f:
        f.write("sent_ms,reply_ms,opening\n")
        f.writelines(f"{(heard_at_s + t + late_s) * 1000:.1f},{(t + 0.035) * 1000:.1f},{o:.3f}\n" for t, o in cmds)


def test_live_jaw_is_placed_by_when_its_commands_were_sent_against_heard_wav(tmp_path):
    x, rate = speech()
    cal = Calibration()
    cmds = follow(x, rate, lead_ms=cal.lead_ms)
    folder = tmp_path / "turn-001"
    write_turn_with_commands(folder, x, rate, cmds, heard_at_s=1.0)
    scheduled = live_sync(folder, x, rate, cal)
    assert scheduled.basis.startswith("as scheduled") and abs(scheduled.lag_ms) <= 15
    # heard.wav: the reply came out 1.0 s after the release, at the sink's volume
    rec = np.zeros(int(5 * rate), np.float32)
    rec[int(0.5 * rate):int(0.5 * rate) + len(x)] = 0.5 * x
    write_heard(folder, Heard(rec, rate, 1000.5, f"{SINK}.monitor"), released_at=1000.0)
    meta = json.loads((folder / "heard.json").read_text())
    assert meta == {"t0_ms_after_release": 500.0, "rate": rate, "source": f"{SINK}.monitor"}
    heard = live_sync(folder, x, rate, cal)
    assert heard.basis == f"as heard: sent_ms against heard.wav, monitor of {SINK}.monitor"
    assert heard.lag_ms == pytest.approx(scheduled.lag_ms, abs=6)
    # the same commands sent 60 ms later (a stalled loop): reply_ms cannot show it, heard.wav does
    write_turn_with_commands(folder, x, rate, cmds, heard_at_s=1.0, late_s=0.060)
    late = live_sync(folder, x, rate, cal)
    assert late.lag_ms == pytest.approx(heard.lag_ms + 60, abs=8)


def test_heard_files_round_trip_and_name_what_is_wrong(tmp_path):
    rec = (0.25 * np.sin(np.arange(4800) / 10)).astype(np.float32)
    write_heard(tmp_path, Heard(rec, 48000, 7.25, "a.monitor"), released_at=7.0)
    got = read_heard(tmp_path)
    assert got.rate == 48000 and got.t0_s == pytest.approx(0.25) and got.source == "a.monitor"
    assert np.max(np.abs(got.samples - rec)) < 1e-4
    assert read_heard(tmp_path / "nothing") is None
    (tmp_path / "heard.json").write_text('{"t0_ms_after_release": "soon", "rate": 48000}')
    with pytest.raises(SkullError, match="t0_ms_after_release = 'soon' must be a number"):
        read_heard(tmp_path)
    (tmp_path / "heard.json").write_text('{"t0_ms_after_release": 5, "rate": 44100}')
    with pytest.raises(SkullError, match="rate = 44100 but .* is at 48000 Hz"):
        read_heard(tmp_path)
    (tmp_path / "heard.json").unlink()
    with pytest.raises(SkullError, match="heard.json is missing"):
        read_heard(tmp_path)


def test_broken_heard_json_falls_back_to_scheduled_and_says_why(tmp_path):
    x, rate = speech()
    folder = tmp_path / "turn-001"
    write_turn_with_commands(folder, x, rate, follow(x, rate, lead_ms=35.0), heard_at_s=1.0)
    write_wav(folder / "heard.wav", x, rate)
    (folder / "heard.json").write_text("{not json")
    live = live_sync(folder, x, rate, Calibration())
    assert live.basis.startswith("as scheduled") and "heard.json is not readable JSON" in live.basis


def test_plot_caption_gives_the_measured_figures(turn, tmp_path):
    from skull.replay import replay_turn
    from skull.audio.player import ClockPlayer
    from skull.runtime import open_jaw
    cfg = SkullConfig()
    cfg = dataclasses.replace(cfg, board=dataclasses.replace(cfg.board, driver="sim"))
    res = replay_turn(turn, cfg, jaw_kind="sim", retrack=False, plot=None, open_jaw=lambda: open_jaw(cfg),
                      open_speaker=lambda rate: ClockPlayer(rate=rate, block_ms=5.0))
    text = caption(res)
    assert re.fullmatch(r"commands \d+ ms ahead; horn \d+ ms (late|early), r 0\.\d\d; as scheduled", text), text
    assert f"{abs(res.lag_ms):.0f} ms" in text and f"r {res.r:.2f}" in text


def test_a_turn_recorded_on_a_sound_server_keeps_what_was_heard(pulse, tmp_path):
    # skull demo through the null sink: each recorded turn gets heard.wav from its monitor, and its
    # first loud sample comes when the skull said the reply was first heard
    session = tmp_path / "session"
    r = skull(pulse, "demo", "--record", str(session), timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    folder = session / "turn-001"
    heard = read_heard(folder)
    assert heard is not None and heard.source.endswith(".monitor")
    reported = json.loads((folder / "turn.json").read_text())["timings_ms"]["first_audio"]
    loud = np.flatnonzero(np.abs(heard.samples) > 10 ** (-45 / 20))
    assert len(loud), "heard.wav is silent"
    first = (heard.t0_s + loud[0] / heard.rate) * 1000.0
    assert -10 <= first - reported <= 60, (first, reported)  # a segment may open with a little silence
    reply_s = json.loads((folder / "turn.json").read_text())["reply_s"]
    assert (loud[-1] - loud[0]) / heard.rate >= reply_s - 1.0  # the whole reply was heard
