"""A whole push-to-talk turn over a real loopback websocket with the embedded backends
(moonshine, OpenCV, the joke engine, espeak-ng) and a MockFactory skull."""
import asyncio
import csv
import json
import os
import subprocess
import sys

import numpy as np

from conftest import ask, sim_body, skull_config, start_host, wait_for
from skull.agent import Agent
from skull.core.envelope import JawShape, frame_levels_dbfs
from skull.core.wav import read_wav, to_mono
from skull.events import LedChanged
from skull.machine import LedPattern, State


def test_whole_turn_answers_moves_the_jaw_and_ends_safe(host_config, backends, tmp_path):
    async def go():
        host = await start_host(host_config, backends)
        cfg = skull_config(host.port)
        body = sim_body(cfg)
        led_pin = body.panel.led.pin
        agent = Agent(cfg, body, record_dir=tmp_path)
        task = asyncio.create_task(agent.run())
        try:
            await wait_for(lambda: agent.state is State.IDLE)
            led_seen = []
            agent.events.subscribe(lambda e: led_seen.append(e.pattern), LedChanged)  # a view of the LED
            rec = await ask(agent)
            led_seen.append(("after turn", body.panel.pattern))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await host.stop()
        return agent, body, rec, led_seen, led_pin

    agent, body, rec, led_seen, led_pin = asyncio.run(go())
    assert rec.outcome == "answered"
    assert "costume" in rec.transcript
    assert "two faces" in rec.caption
    assert "costume" in rec.reply.lower()
    assert len(rec.segments) >= 2  # one speech segment per sentence
    assert LedPattern.ON in led_seen  # LED lit while listening (after the host's ack)...
    after = led_seen.index(("after turn", LedPattern.OFF))
    assert led_seen[after - 1] is LedPattern.OFF  # ...and off when the turn ended
    for key in ("stt", "vision", "reply", "llm_first_token", "llm_first_sentence", "tts_first_segment",
                "first_audio", "total"):
        assert rec.timings_ms[key] >= 0, key
    # the jaw moved, always inside its calibrated pulse range, and ended closed and detached
    cal = agent.config.calibration
    pulses = [us for _, _, us in body.jaw.log if us is not None]
    openings = [o for _, o, _ in body.jaw.log]
    assert max(openings) > 0.5 and min(openings) == 0.0
    assert all(cal.closed_us <= us <= cal.open_us for us in pulses)
    assert body.jaw.log[-1][2] is None and body.jaw.log[-1][1] == 0.0
    assert not body.jaw.attached
    assert body.panel.led.closed and not led_pin.state
    # the turn was recorded
    assert (tmp_path / "turn-001" / "reply.wav").exists()


def test_demo_records_a_stereo_22k_question(stereo_question, tmp_path):
    """Acceptance: skull demo --question Q.wav --record DIR --no-audio, Q at 22.05 kHz stereo."""
    out = subprocess.run([sys.executable, "-m", "skull", "demo", "--question", str(stereo_question),
                          "--record", str(tmp_path), "--no-audio"],
                         capture_output=True, text=True, timeout=180, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "heard:" in out.stdout and "replied:" in out.stdout
    turn = tmp_path / "turn-001"
    names = {p.name for p in turn.iterdir()}
    assert {"question.wav", "snapshot.jpg", "reply.wav", "jaw.csv", "turn.json"} <= names
    meta = json.loads((turn / "turn.json").read_text())
    assert meta["transcript"] and meta["caption"] and meta["reply"]
    assert set(meta["timings_ms"]) >= {"stt", "vision", "reply", "llm_first_token", "tts_first_segment",
                                          "first_audio", "total"}
    question = read_wav(turn / "question.wav")
    assert question.rate == 16000 and question.channels == 1 and question.seconds > 1.5
    reply = read_wav(turn / "reply.wav")
    assert reply.seconds > 0.5
    rows = list(csv.DictReader(open(turn / "jaw.csv")))
    t = np.array([float(r["time_ms"]) for r in rows])
    jaw = np.array([float(r["opening"]) for r in rows])
    assert jaw.min() == 0.0 and jaw.max() > 0.5 and np.all((jaw >= 0) & (jaw <= 1))
    assert np.count_nonzero(np.abs(np.diff(jaw)) > 0.2) > 5 or np.count_nonzero((jaw[:-1] < 0.1) & (jaw[1:] >= 0.1)) > 5
    # the track covers the reply and follows its loudness
    assert abs(t[-1] / 1000 - reply.seconds) < 0.2
    # compared on reply.wav's clock (the rows' times), as replay places them: each sentence's
    # track has a whole number of frames, so counting rows drifts a frame per sentence
    loud = frame_levels_dbfs(to_mono(reply), reply.rate)
    frame_ms = np.arange(len(loud)) * 1000.0 / JawShape().fps
    r = np.corrcoef(np.clip(loud, -60, None), np.interp(frame_ms, t, jaw))[0, 1]
    assert r > 0.8, f"jaw track does not follow the reply's loudness (r={r:.2f})"
