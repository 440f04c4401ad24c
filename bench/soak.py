"""A show night in miniature: many turns against misbehaving fake servers.

The host runs as its own process (``skull host``) against the standard fake workload with every
delay scaled down (so 300 turns take minutes, not an hour) and with failures switched on: each
server fails 10 % of its calls with its own error shape, drops the connection mid-answer on 2 %,
scales every wait by a random factor in 0.7..1.3, and pays a warm-up penalty on its first call.
A simulated skull in this process asks the bundled question again and again (played 8x faster
than real time) and checks that every turn ends with the skull speaking: the answer, or a
fallback line.

Prints turns, answered (and how many of those were cut short by a failure mid-answer),
fallbacks, turns without a sound, errors by stage (as the skull was told), the host's RSS at
start and end, whether the host is still up, and exceptions that reached the host's stderr
without going through its log (must be 0).

Usage: python bench/soak.py [--turns 300] [--scale 0.25] [--seed 7]
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import collections
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import HostProcess, press_and_ask, skull, unwind_on_sigterm  # noqa: E402

from host.config import FallbackConfig  # noqa: E402
from host.sentences import split_sentences  # noqa: E402
from host.fakes.workload import Workload  # noqa: E402
from skull.machine import State  # noqa: E402

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def unlogged_tracebacks(log_text: str) -> int:
    """Exceptions that reached stderr without a log record: a traceback not attached to an
    ERROR/WARNING record, or Python's "Exception ignored in" notices."""
    count, owner = 0, None  # owner: the level of the log record the following lines belong to
    for line in log_text.splitlines():
        m = LOG_LINE.match(line)
        if m:
            owner = m.group(1)
        elif line.startswith("Exception ignored in"):
            count += 1
        elif line.startswith("Traceback (most recent call last)") and owner not in ("ERROR", "CRITICAL", "WARNING"):
            count += 1
    return count


async def soak(port: int, turns: int, host: HostProcess, reply: str, report_every: int = 50) -> dict:
    agent = skull(port, "soak", mic_speed=8.0, play_speed=4.0)
    fallbacks = set(vars(FallbackConfig()).values())
    whole = len(split_sentences(reply))
    stats = collections.Counter()
    stages = collections.Counter()
    task = asyncio.create_task(agent.run())
    t0 = time.monotonic()
    try:
        while agent.state is not State.IDLE:
            await asyncio.sleep(0.02)
        for i in range(1, turns + 1):
            while agent.state not in (State.IDLE, State.SPEAKING):
                await asyncio.sleep(0.01)
            rec = await press_and_ask(agent, timeout=20.0)
            stats["turns"] += 1
            spoken = [seg.text for seg in rec.in_order()] if rec else []
            if not spoken or "first_audio" not in rec.timings_ms:
                stats["mute"] += 1
            elif any(text in fallbacks for text in spoken):
                stats["fallbacks"] += 1
            else:
                stats["answered"] += 1
                stats["partial"] += len(spoken) < whole  # cut short by a failure mid-answer
            for err in rec.errors if rec else []:
                m = re.match(r"stage_failed: (\w+):", err)
                stages[m.group(1) if m else err.split(":")[0]] += 1
            if i % report_every == 0:
                print(f"  {i:4d} turns  {time.monotonic() - t0:6.1f} s  answered {stats['answered']}  "
                      f"fallbacks {stats['fallbacks']}  mute {stats['mute']}  host RSS {host.rss_kib()} KiB", flush=True)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return {"stats": stats, "stages": stages}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--turns", type=int, default=300)
    ap.add_argument("--scale", type=float, default=0.25, help="multiply every fake delay by this (default 0.25)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    unwind_on_sigterm()
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("skull").setLevel(logging.CRITICAL)  # the skull's warnings about failed stages are expected
    work = Workload(jitter=0.3, failure_rate=0.1, crash_rate=0.02, warmup_s=2.0, seed=args.seed).scaled(args.scale)
    servers = work.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            host = HostProcess(Workload.host_toml(servers, streaming=True, timeout_s=5.0), Path(tmp), "soak")
            try:
                time.sleep(1.0)  # the host's start-up check of its backends
                rss_start = host.rss_kib()
                print(f"soak: {args.turns} turns, failure rate {work.failure_rate}, crash rate {work.crash_rate}, "
                      f"jitter +-{work.jitter:.0%}, warm-up {work.warmup_s:.1f} s, delays x{args.scale}", flush=True)
                out = asyncio.run(soak(host.port, args.turns, host, work.reply))
                rss_end = host.rss_kib()
                alive = host.alive()
            finally:
                host.stop()
            log_text = host.log_path.read_text()
    finally:
        for s in servers.values():
            s.stop()
    stats, stages = out["stats"], out["stages"]
    calls = {name: dict(s.counts) for name, s in servers.items()}
    print("fake servers (ok/fail/crash): " + "  ".join(
        f"{k} {v['ok']}/{v['fail']}/{v['crash']}" for k, v in calls.items()))
    logged_errors = len(re.findall(r" ERROR ", log_text))
    unlogged = unlogged_tracebacks(log_text)
    unhandled = log_text.count("host.unhandled")
    print(f"host log: {logged_errors} errors logged with their stage, {unhandled} from unhandled exceptions")
    print(f"turns={stats['turns']} answered={stats['answered']} (of which cut short {stats['partial']}) "
          f"fallbacks={stats['fallbacks']} "
          f"mute={stats['mute']} errors_by_stage={dict(sorted(stages.items()))} host_up={'yes' if alive else 'NO'} "
          f"host_rss_start_kib={rss_start} host_rss_end_kib={rss_end} unlogged_exceptions={unlogged + unhandled}")
    ok = stats["mute"] == 0 and alive and unlogged + unhandled == 0 and stats["turns"] == args.turns
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
