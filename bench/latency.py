"""Time to first answer: segmented speech to text and streaming against the earlier designs,
on the standard fake workload.

Runs the real host (``skull host`` in its own process) against the fake servers of
``host/fakes/workload.py`` and a simulated skull in this process over a loopback websocket:
button down, the workload's two-sentence question plays as the microphone in real time, button
up. The skull measures first_audio: button release to the first reply sample leaving its
speaker (a simulated low-latency speaker: 5 ms blocks, 5 ms output latency). The same turns run
in three designs:

* segmented (the default): each stretch of speech is transcribed when the visitor pauses, so
  after the release only the tail is; the reply is streamed sentence by sentence;
* whole: the whole question is transcribed after the release (its silence trimmed), streamed
  reply: the design before segmented speech to text;
* sequential: whole question, whole reply, then the whole of it spoken (the seed's design).

Prints p50/p95 first_audio of each, the ideal critical path computed from the fake settings
and what each turn left to transcribe, and as its last line:
    first_audio_p50_ms=<x> ideal_ms=<y> overhead_ms=<x-y> sequential_p50_ms=<z> ratio=<x/z> whole_p50_ms=<w>

Usage: python bench/latency.py [--turns 30]
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import dataclasses
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from host.fakes import tokens  # noqa: E402
from host.fakes.workload import Workload, question_wav  # noqa: E402
from skull.agent import Agent  # noqa: E402
from skull.audio.player import ClockPlayer  # noqa: E402
from skull.config import SkullConfig  # noqa: E402
from skull.core.data import bundled  # noqa: E402
from skull.machine import State  # noqa: E402
from skull.runtime import build_body  # noqa: E402


class HostProcess:
    """``skull host`` in a subprocess; its log goes to a file."""

    def __init__(self, config_text: str, workdir: Path, name: str, env: dict | None = None):
        self.config = workdir / f"{name}.toml"
        self.config.write_text(config_text)
        self.log_path = workdir / f"{name}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "skull", "-v", "host", "--config", str(self.config),
                                      "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        line = self.proc.stdout.readline()
        m = re.search(r"ws://[\d.]+:(\d+)", line)
        if not m:
            self.stop()
            raise RuntimeError(f"the host did not start: {line!r}; see {self.log_path}")
        self.port = int(m.group(1))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        return self.proc.returncode


_STATE = tempfile.TemporaryDirectory(prefix="bench-skull-state-")
"""where a bench's skulls keep their line sets: never the user's ~/.local/state (removed at exit)"""


def skull(port: int, name: str, mic_speed: float = 1.0, play_speed: float = 1.0, question=None, tweak=None):
    """A simulated skull's agent; ``tweak``: a function given the SkullConfig, returning the one to use."""
    cfg = SkullConfig()
    cfg = dataclasses.replace(cfg, link=dataclasses.replace(cfg.link, url=f"ws://127.0.0.1:{port}", name=name,
                                                            reconnect_min_s=0.1, reconnect_max_s=1.0),
                              offline=dataclasses.replace(cfg.offline, cache_dir=f"{_STATE.name}/{name}/lines"))
    if tweak is not None:
        cfg = tweak(cfg)
    body = build_body(cfg, sim=True, mic_file=question or bundled("question.wav"), image=bundled("snapshot.jpg"),
                      audio=False, mic_speed=mic_speed)
    body.player = ClockPlayer(block_ms=5.0, speed=play_speed)
    return Agent(cfg, body, reply_timeout_s=30.0)


async def press_and_ask(agent: Agent, timeout: float = 30.0):
    """Press, let the question play, release; wait for the first sound (the next press cuts the
    rest of the answer short). Returns the turn's record, or None when nothing came in time."""
    pin = agent.body.panel.button.pin
    spoken = asyncio.Event()
    loop = asyncio.get_running_loop()
    agent.body.mic.on_finished = lambda: loop.call_soon_threadsafe(spoken.set)
    pin.drive_low()
    await asyncio.wait_for(spoken.wait(), timeout)
    turn = agent.machine.turn
    pin.drive_high()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        rec = agent.records.get(turn) or next((r for r in agent.finished if r.turn == turn), None)
        if rec is not None and (("first_audio" in rec.timings_ms and "total" in rec.timings_ms) or rec.outcome):
            return rec
        await asyncio.sleep(0.01)
    return None


async def run_turns(port: int, turns: int, name: str, question=None) -> list[dict]:
    agent = skull(port, name, question=question)
    task = asyncio.create_task(agent.run())
    firsts = []
    try:
        while agent.state is not State.IDLE:
            await asyncio.sleep(0.02)
        for _ in range(turns):
            while agent.state not in (State.IDLE, State.SPEAKING):
                await asyncio.sleep(0.01)
            rec = await press_and_ask(agent)
            if rec is None or "first_audio" not in rec.timings_ms:
                raise RuntimeError(f"a turn produced no sound: {rec and rec.errors}")
            firsts.append({**rec.timings_ms, "question_s": len(rec.question) / 2 / rec.question_rate})
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return firsts


def unwind_on_sigterm() -> None:
    """A bench stopped with SIGTERM (``kill``, a CI step's time limit) unwinds as Ctrl-C does, so
    its ``finally`` blocks stop the host and skulls it started instead of leaving them running."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs), q))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--turns", type=int, default=30, help="turns per mode (default 30)")
    args = ap.parse_args()
    unwind_on_sigterm()
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("skull").setLevel(logging.CRITICAL)  # the skull's warnings about failed stages are expected
    work = Workload()
    servers = work.start()
    designs = {"segmented": dict(streaming=True, segmented=True), "whole": dict(streaming=True, segmented=False),
               "sequential": dict(streaming=False, segmented=False)}
    results, ideals, questions, tails = {}, {}, [], {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            question = question_wav(Path(tmp) / "question.wav")
            for mode, design in designs.items():
                host = HostProcess(Workload.host_toml(servers, **design), Path(tmp), mode)
                try:
                    t0 = time.monotonic()
                    timings = asyncio.run(run_turns(host.port, args.turns, f"bench-{mode}", question))
                    results[mode] = [t["first_audio"] for t in timings]
                    questions.extend(t["question_s"] for t in timings)
                    tails[mode] = [t.get("stt_tail_audio", t["question_s"] * 1000) / 1000 for t in timings]
                    ideals[mode] = [work.ideal_ms(tail) if design["streaming"] else work.sequential_ideal_ms(tail)
                                    for tail in tails[mode]]
                    print(f"{mode:<11} {args.turns} turns in {time.monotonic() - t0:5.1f} s: first_audio "
                          f"p50 {pct(results[mode], 50):6.0f} ms  p95 {pct(results[mode], 95):6.0f} ms  "
                          f"min {min(results[mode]):6.0f} ms; audio left to transcribe after the release "
                          f"{pct(tails[mode], 50):.2f} s", flush=True)
                    steps = ("stt", "llm_first_token", "llm_first_sentence", "tts_first_segment")
                    print("            host medians: " + "  ".join(
                        f"{k} {pct([t[k] for t in timings if k in t], 50):.0f}" for k in steps
                        if any(k in t for t in timings)) + " ms", flush=True)
                finally:
                    host.stop()
    finally:
        for s in servers.values():
            s.stop()
    sentence, k = work.first_sentence()
    ideal, seq_ideal = pct(ideals["segmented"], 50), pct(ideals["sequential"], 50)
    print(f"workload: stt {work.stt_s * 1000:.0f} ms + {work.stt_per_audio_s:g} s per audio s; caption "
          f"{work.caption_s * 1000:.0f} ms (runs during the recording); llm {work.llm_first_token_s * 1000:.0f} ms "
          f"to first token + {work.llm_per_token_s * 1000:.0f} ms per token, {len(tokens(work.reply))} tokens; tts "
          f"{work.tts_s * 1000:.0f} ms + {work.tts_per_audio_s:g} s per audio s")
    print(f"question as recorded: {pct(questions, 50):.2f} s, two sentences; first reply sentence {sentence!r} "
          f"ends at token {k}")
    print(f"ideal critical path {ideal:.0f} ms (whole question: {pct(ideals['whole'], 50):.0f} ms; the sequential "
          f"design's: {seq_ideal:.0f} ms)")
    x, z, w = pct(results["segmented"], 50), pct(results["sequential"], 50), pct(results["whole"], 50)
    print(f"first_audio_p50_ms={x:.0f} ideal_ms={ideal:.0f} overhead_ms={x - ideal:.0f} "
          f"sequential_p50_ms={z:.0f} ratio={x / z:.2f} whole_p50_ms={w:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
