"""Does the skull's memory grow with the number of turns? A night at a show is hundreds of them.

The host runs as its own process (``skull host``) against the standard fake workload with its
delays scaled down and no failures, the fake servers in a process of their own (they keep their
last 100 requests, audio included, which is not the skull's memory); a simulated skull in this
process (gpiozero MockFactory
button, LED and servo, the bundled question as its microphone, a simulated speaker) asks the
question again and again and lets every reply play to its end, so the jaw moves for the whole
of it. The skull's resident memory (this process's VmRSS) is read after turn 10 (start-up,
imports and first-use caches are done by then) and after the last turn.

Prints progress every 10 turns and, as its last line:

    turns=<n> rss_start_mb=<at turn 10> rss_end_mb=<at the end> rss_growth_pct=<growth in %>

Usage: python bench/memory.py [--turns 100] [--scale 0.25] [--play-speed 2]
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import HostProcess, skull, unwind_on_sigterm  # noqa: E402

from host.fakes.workload import Workload  # noqa: E402
from skull.machine import State  # noqa: E402


def serve_workload(scale: float, conn, **misbehaving) -> None:
    """In a child process: the fake servers, until the parent sends anything (or goes away).
    ``misbehaving``: Workload's jitter, failure_rate, crash_rate, warmup_s and seed (default:
    none of it); the host.toml that points at them goes to the parent first."""
    how = dict(jitter=0.0, failure_rate=0.0, crash_rate=0.0, warmup_s=0.0, seed=1) | misbehaving
    servers = Workload(**how).scaled(scale).start()
    try:
        conn.send(Workload.host_toml(servers, streaming=True, timeout_s=5.0))
        try:
            conn.recv()
        except EOFError:
            pass
    finally:
        for s in servers.values():
            s.stop()


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


async def one_turn(agent, timeout: float = 60.0) -> str:
    """Press, let the question play, release, wait until the whole reply has played."""
    pin = agent.body.panel.button.pin
    spoken = asyncio.Event()
    loop = asyncio.get_running_loop()
    agent.body.mic.on_finished = lambda: loop.call_soon_threadsafe(spoken.set)
    agent.turn_ended.clear()
    pin.drive_low()
    await asyncio.wait_for(spoken.wait(), timeout)
    pin.drive_high()
    await asyncio.wait_for(agent.turn_ended.wait(), timeout)
    return agent.finished[-1].outcome


async def run(port: int, turns: int, play_speed: float) -> tuple[float, float, dict]:
    agent = skull(port, "memory", mic_speed=4.0, play_speed=play_speed)
    task = asyncio.create_task(agent.run())
    outcomes: dict[str, int] = {}
    start = end = 0.0
    t0 = time.monotonic()
    try:
        while agent.state is not State.IDLE:
            await asyncio.sleep(0.02)
        for i in range(1, turns + 1):
            outcome = await one_turn(agent)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            while agent.state is not State.IDLE:
                await asyncio.sleep(0.01)
            if i == 10 or i == turns or i % 10 == 0:
                gc.collect()
                mb = rss_mb()
                if i == 10:
                    start = mb
                end = mb
                jaw_log = len(agent.body.jaw.log or ())
                servo = agent.body.jaw._servo.pwm_device.pin  # the simulated servo pin
                print(f"  {i:4d} turns  {time.monotonic() - t0:6.1f} s  rss {mb:6.1f} MB  jaw log {jaw_log}  "
                      f"servo pin states {len(servo.states)}  {outcomes}", flush=True)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return start, end, outcomes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--turns", type=int, default=100)
    ap.add_argument("--scale", type=float, default=0.25, help="multiply every fake delay by this (default 0.25)")
    ap.add_argument("--play-speed", type=float, default=2.0, help="the simulated speaker plays this many times "
                                                                  "faster than real time (default 2)")
    args = ap.parse_args()
    unwind_on_sigterm()
    if args.turns < 10:
        ap.error("--turns must be at least 10 (the first reading is after turn 10)")
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    fakes = ctx.Process(target=serve_workload, args=(args.scale, child), name="fake-servers", daemon=True)
    fakes.start()
    try:
        host_toml = parent.recv()
        with tempfile.TemporaryDirectory() as tmp:
            host = HostProcess(host_toml, Path(tmp), "memory")
            try:
                time.sleep(1.0)  # the host's start-up check of its backends
                print(f"memory: {args.turns} turns, delays x{args.scale}, speaker x{args.play_speed}", flush=True)
                start, end, outcomes = asyncio.run(run(host.port, args.turns, args.play_speed))
            finally:
                host.stop()
    finally:
        parent.send("stop")
        fakes.join(10)
    growth = (end - start) / start * 100.0 if start else 0.0
    print(f"turns={args.turns} rss_start_mb={start:.1f} rss_end_mb={end:.1f} rss_growth_pct={growth:.1f}")
    return 0 if outcomes.get("answered", 0) == args.turns else 1


if __name__ == "__main__":
    sys.exit(main())
