"""Embedded backends on every core: one skull asking alone against two skulls asking at once.

Runs the real host (``skull host`` in its own process) with the embedded backends (moonshine or
pocketsphinx, the OpenCV caption, the joke engine, espeak-ng) and simulated skulls in this
process over loopback websockets. In each round every skull presses at the same moment, plays
the bundled question as its microphone in real time and releases; first_audio is the skull's
own measure: button release to the first reply sample leaving its (simulated) speaker.

Against each host two skulls are connected throughout, and ``--turns`` rounds of one skull
pressing alone (``skulls=1``; the two take turns at it) alternate with as many rounds of both
pressing together (``skulls=2``), so the two are measured side by side while the machine's load
drifts, as ratios are here. Each round starts when every skull is idle again; one round of two
before them is not counted (the host starts its second espeak-ng speaker then, once, ~100 ms).
``--workers`` lists the hosts' ``[embedded] workers``, compared side by side in one run ("auto":
one worker process per core; 0: the engines inside the host process, as before the pool).
``--stt pocketsphinx`` measures the engine that holds the GIL for its whole decode.
``--espeak library,program`` compares espeak-ng's speaker processes, which load its library
once (the default), with the program started for every sentence (``SKULL_ESPEAK=program``), each against each
``--workers`` value.

Prints per-stage host medians, one summary line per host and, as its last line (the first
host's figures):
    skulls=1 p50_ms=<a> skulls=2 p50_ms=<b> ratio=<b/a>

Usage: python bench/embedded_scale.py [--turns 20] [--workers auto,0] [--stt pocketsphinx]
       [--espeak library,program]
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import HostProcess, pct, press_and_ask, skull, unwind_on_sigterm  # noqa: E402  (bench/latency.py)

from skull.machine import State  # noqa: E402


async def one_round(agents: list, pressing: list) -> list[dict]:
    """``pressing`` press together once, when all ``agents`` are idle; their turns' timings."""
    while any(a.state is not State.IDLE for a in agents):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    recs = await asyncio.gather(*(press_and_ask(a) for a in pressing))
    for rec in recs:
        if rec is None or "first_audio" not in rec.timings_ms:
            raise RuntimeError(f"a turn produced no sound: {rec and rec.errors}")
    return [rec.timings_ms for rec in recs]


async def side_by_side(port: int, turns: int) -> dict[int, list[dict]]:
    """``turns`` rounds of one skull alone alternating with ``turns`` rounds of two at once; every
    turn's timings by the number of skulls in its round."""
    agents = [skull(port, f"bench-{i}", play_speed=4.0) for i in range(2)]
    tasks = [asyncio.create_task(a.run()) for a in agents]
    out: dict[int, list[dict]] = {1: [], 2: []}
    try:
        while any(a.state is not State.IDLE for a in agents):
            await asyncio.sleep(0.02)
        await one_round(agents, agents)  # warm-up, not counted
        for i in range(turns):
            for n in ((1, 2) if i % 2 == 0 else (2, 1)):
                out[n] += await one_round(agents, agents if n == 2 else [agents[i % 2]])
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return out


def measure(toml: str, turns: int, tmp: Path, label: str, env: dict | None = None) -> dict[int, float]:
    """first_audio p50 of one skull and of two at once, side by side against one host; prints each."""
    p50 = {}
    host = HostProcess(toml, tmp, label.replace(" ", "-"), env)
    try:
        t0 = time.monotonic()
        by_n = asyncio.run(side_by_side(host.port, turns))
        took = time.monotonic() - t0
        for n, timings in by_n.items():
            firsts = [t["first_audio"] for t in timings]
            p50[n] = pct(firsts, 50)
            steps = ("stt", "vision", "llm_first_sentence", "tts_first_segment")
            print(f"{label}: skulls={n}: {len(firsts)} turns ({took:5.1f} s for both): first_audio p50 "
                  f"{p50[n]:6.0f} ms  p95 {pct(firsts, 95):6.0f} ms; host medians: " + "  ".join(
                      f"{k} {pct([t[k] for t in timings if k in t], 50):.0f}" for k in steps
                      if any(k in t for t in timings)) + " ms", flush=True)
    finally:
        host.stop()
    return p50


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--turns", type=int, default=20, help="rounds of presses per count of skulls (default 20)")
    ap.add_argument("--workers", default="auto,0",
                    help='[embedded] workers of each host compared, first one reported last: "auto,0" (default)')
    ap.add_argument("--stt", default="", help="the [stt] backend: moonshine (the default) or pocketsphinx")
    ap.add_argument("--espeak", default="library",
                    help='how espeak-ng speaks in each host: "library" (default), "program" or both: "library,program"')
    args = ap.parse_args()
    for espeak in args.espeak.split(","):
        if espeak not in ("library", "program"):
            ap.error(f"--espeak {espeak!r}: choose library, program or both")
    unwind_on_sigterm()
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("skull").setLevel(logging.CRITICAL)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in args.workers.split(","):
            for espeak in args.espeak.split(","):
                value = '"auto"' if workers == "auto" else str(int(workers))
                toml = f"[embedded]\nworkers = {value}\n" + (f'[stt]\nbackend = "{args.stt}"\n' if args.stt else "")
                label = f"workers={workers} espeak={espeak}"
                results[label] = measure(toml, args.turns, Path(tmp), label, {"SKULL_ESPEAK": espeak})
    for label, p50 in results.items():
        print(f"{label}: skulls=1 p50 {p50[1]:.0f} ms, skulls=2 p50 {p50[2]:.0f} ms, ratio {p50[2] / p50[1]:.2f}")
    p50 = next(iter(results.values()))
    print(f"skulls=1 p50_ms={p50[1]:.0f} skulls=2 p50_ms={p50[2]:.0f} ratio={p50[2] / p50[1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
