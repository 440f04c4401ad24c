"""Many skulls on one host: how first audio, the host's CPU, memory and threads grow with the
number of skulls pressing their buttons together.

The host runs in its own process (host.process.HostProcess) with ``[server] max_turns`` as large
as the largest crowd, first against the standard fake workload (bench/memory.serve_workload:
four fake servers in a process of their own, each working on ``--slots`` requests at once and
queueing the rest, as a real server with that many parallel slots does), then with the embedded
backends. The host's threads keep to one core against the fakes (its ``[server] core = "auto"``
when every stage has a server); ``--core off`` compares without. Each simulated skull is a minimal
protocol client on a loopback websocket: at once with the others it presses (``listen`` and the
bundled snapshot), streams the bundled question in real time, releases (``stop``) and reads the
reply. first audio = release to the first ``speech`` segment received. A turn is an error when it
ends without speech and ``done``, with an ``error`` message (a fallback line), or not within the
timeout.

Per crowd size it prints the host's own p50 timings of the crowd's turns (heard, first token,
first sentence, first segment sent: ms after the release, from ``done.timings_ms``: where a
crowd's wait grows), then a row: first audio p50/p95, the host's CPU time per turn, its resident
memory (VmRSS a second after the crowd's last turn, connections still open) and its most threads
seen while the crowd was served. The last line is, for the fakes' largest crowd::

    n=<max> p50_ms=… p95_ms=… single_p50_ms=… ratio_p95=… errors=0

(ratio_p95 = p95 at the largest crowd / p50 of one skull alone, same run; errors over all the
fakes' crowds).

Usage: python bench/scale.py [--skulls 1,2,4,8,16,32,64] [--embedded 1,2,4] [--slots 64] [--rounds 3]
                             [--voice-activity-max N] [--core auto|off|N]
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from memory import serve_workload  # noqa: E402

from websockets.asyncio.client import connect  # noqa: E402

from host.config import HostConfig, ServerConfig, load_host_config  # noqa: E402
from host.process import HostProcess  # noqa: E402
from skull.core import protocol as p  # noqa: E402
from skull.core.data import bundled  # noqa: E402
from skull.core.wav import read_wav, to_mono_rate, to_pcm16  # noqa: E402

RATE = 16000
CHUNK_S = 0.1
QUESTION = to_pcm16(to_mono_rate(read_wav(bundled("question.wav")), RATE))
SNAPSHOT = bundled("snapshot.jpg").read_bytes()
TICK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Outcome:
    first_ms: float | None
    """release to the first speech segment, or None: none came"""
    error: str = ""
    """what went wrong, or '' for a turn answered in full"""
    timings: dict = dataclasses.field(default_factory=dict)
    """the host's own timings of the turn (``done.timings_ms``)"""


STEPS = (("stt", "heard"), ("llm_first_token", "first token"), ("llm_first_sentence", "first sentence"),
         ("tts_first_segment", "first segment sent"))
"""the host's timings (ms after the release) printed per crowd: where a crowd's wait grows"""


class Skull:
    """One simulated skull: a websocket that says hello once, then asks the question on demand."""

    def __init__(self, port: int, name: str, timeout_s: float):
        self.port, self.name, self.timeout_s = port, name, timeout_s
        self.reader = p.FrameReader(p.HOST_MESSAGES)
        self.turn = 0
        self.ws = None

    async def open(self) -> "Skull":
        self.ws = await connect(f"ws://127.0.0.1:{self.port}", max_size=p.TRANSPORT_MAX_BYTES,
                                open_timeout=self.timeout_s)
        await self.ws.send(json.dumps({"type": "hello", "protocol": 1, "skull": self.name}))
        while not isinstance(await self.recv(), p.Welcome):
            pass
        return self

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def recv(self):
        msg = self.reader.read_text(await asyncio.wait_for(self.ws.recv(), self.timeout_s))
        if msg.has_payload:
            msg, _ = self.reader.read_binary(await asyncio.wait_for(self.ws.recv(), self.timeout_s))
        return msg

    async def send(self, msg, payload=None) -> None:
        for frame in p.encode(msg, payload):
            await self.ws.send(frame)

    async def ask(self) -> Outcome:
        try:
            return await asyncio.wait_for(self._ask(), 2 * self.timeout_s)
        except asyncio.TimeoutError:
            return Outcome(None, "timeout")
        except Exception as exc:  # a broken connection is one error, not the end of the bench
            return Outcome(None, f"{type(exc).__name__}: {exc}")

    async def _ask(self) -> Outcome:
        self.turn += 1
        turn = self.turn
        await self.send(p.Listen(turn))
        await self.send(p.Image(turn, "jpeg", len(SNAPSHOT)), SNAPSHOT)
        await self.send(p.AudioStart(turn, RATE, 2, 1))
        step = int(CHUNK_S * RATE) * 2
        t0 = time.monotonic()
        for k, i in enumerate(range(0, len(QUESTION), step)):  # as fast as a microphone, no faster
            await asyncio.sleep(max(0.0, t0 + k * CHUNK_S - time.monotonic()))
            await self.ws.send(QUESTION[i:i + step])
        await self.send(p.Stop(turn))
        released = time.monotonic()
        first, speech, error = None, 0, ""
        while True:
            msg = await self.recv()
            if getattr(msg, "turn", turn) != turn:
                continue
            if isinstance(msg, p.Speech):
                if first is None:
                    first = (time.monotonic() - released) * 1000.0
                speech += 1
            elif isinstance(msg, p.Error):
                error = error or f"{msg.code}: {msg.message}"
            elif isinstance(msg, p.Done):
                if not error and not (speech and msg.segments == speech):
                    error = "no speech"
                return Outcome(first, error, msg.timings_ms)


class Watch:
    """The host process's CPU time, resident memory and most threads while a crowd is served."""

    def __init__(self, pid: int):
        self.pid, self.threads = pid, 0

    def status(self, key: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

    def cpu_s(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime

    async def sample(self) -> None:
        while True:
            self.threads = max(self.threads, self.status("Threads"))
            await asyncio.sleep(0.05)


def pct(xs: list, q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100.0 * (len(xs) - 1))))] if xs else float("nan")


async def crowd(port: int, pid: int, n: int, rounds: int, timeout_s: float) -> dict:
    """``n`` skulls ask together, ``rounds`` times; the figures of that crowd."""
    skulls = await asyncio.gather(*(Skull(port, f"skull-{n}-{i}", timeout_s).open() for i in range(n)))
    watch = Watch(pid)
    sampler = asyncio.create_task(watch.sample())
    try:
        cpu0, outcomes = watch.cpu_s(), []
        for _ in range(rounds):
            outcomes += await asyncio.gather(*(s.ask() for s in skulls))
        cpu = watch.cpu_s() - cpu0
        await asyncio.sleep(1.0)  # the host hands a crowd's freed memory back once its last turn ends
        rss = watch.status("VmRSS")
    finally:
        sampler.cancel()
        await asyncio.gather(*(s.close() for s in skulls), return_exceptions=True)
    firsts = [o.first_ms for o in outcomes if o.first_ms is not None]
    errors = [o.error for o in outcomes if o.error]
    if errors:
        print(f"    {len(errors)} error(s) at n={n}, the first: {errors[0]}", flush=True)
    steps = [f"{name} {pct([o.timings[key] for o in outcomes if key in o.timings], 50):.0f}"
             for key, name in STEPS if any(key in o.timings for o in outcomes)]
    print(f"    n={n}, the host's p50 after the release (ms): {', '.join(steps)}", flush=True)
    return {"n": n, "turns": len(outcomes), "p50": pct(firsts, 50), "p95": pct(firsts, 95),
            "cpu_ms": cpu * 1000.0 / len(outcomes), "rss_mb": rss / 1024.0, "threads": watch.threads,
            "errors": len(errors)}


def row(r: dict) -> str:
    return (f"| {r['n']:>6} | {r['p50']:7.0f} / {r['p95']:<7.0f} | {r['cpu_ms']:13.1f} | {r['rss_mb']:7.0f} | "
            f"{r['threads']:>7} | {r['errors']:>6} |")


HEAD = ("| skulls | first audio p50 / p95 ms | host CPU ms/turn | RSS MB | threads | errors |\n"
        "|---|---|---|---|---|---|")


def measure(config: HostConfig, sizes: list, rounds: int, timeout_s: float, title: str) -> list[dict]:
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, port=0, max_turns=max(sizes)))
    print(f"\n{title}\n{HEAD}", flush=True)
    rows = []
    with HostProcess(config) as hp:
        async def go():
            warm = await Skull(hp.port, "warm-up", timeout_s).open()
            await warm.ask()  # models, caches and connections of a first turn are not the crowd's
            await warm.close()
            for n in sizes:
                rows.append(await crowd(hp.port, hp._proc.pid, n, rounds, timeout_s))
                print(row(rows[-1]), flush=True)
        asyncio.run(go())
    return rows


def sizes_of(text: str, flag: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()] if text else []
    except ValueError:
        raise SystemExit(f"{flag} {text!r}: write crowd sizes as whole numbers separated by commas, e.g. 1,2,4")
    if any(not 1 <= n <= 1000 for n in sizes):
        raise SystemExit(f"{flag} {text!r}: each crowd is 1..1000 skulls")
    return sizes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skulls", default="1,2,4,8,16,32,64", help="crowd sizes against the fakes (default 1,2,4,8,16,32,64)")
    ap.add_argument("--embedded", default="1,2,4", help="crowd sizes with the embedded backends; '' skips them "
                                                        "(default 1,2,4)")
    ap.add_argument("--slots", type=int, default=64, help="requests each fake server works on at once, the rest "
                                                          "queue (default 64: enough for 64 skulls)")
    ap.add_argument("--rounds", type=int, default=3, help="questions each skull of a crowd asks (default 3)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds a turn may take before it is an error")
    ap.add_argument("--voice-activity-max", type=int, default=None, metavar="N",
                    help="the host's [stt] voice_activity_max against the fakes (default: the host's own, "
                         "\"auto\": every question on onnxruntime, 8 on ggml; 0: every question transcribed whole)")
    ap.add_argument("--core", default=None, metavar="auto|off|N",
                    help="the host's [server] core (default: the host's own, \"auto\": its threads keep to one "
                         "core when every stage has a server; \"off\": wherever the system puts them)")
    args = ap.parse_args()
    fakes_sizes, embedded_sizes = sizes_of(args.skulls, "--skulls"), sizes_of(args.embedded, "--embedded")
    if not fakes_sizes or 1 not in fakes_sizes:
        ap.error("--skulls must include 1 (the single-skull p50 the largest crowd is compared with)")
    if args.slots < 1 or args.rounds < 1:
        ap.error("--slots and --rounds must be 1 or more")
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    print(f"scale: {args.rounds} question(s) per skull per crowd, fake servers with {args.slots} slot(s) each, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start", flush=True)

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    fakes = ctx.Process(target=serve_workload, args=(1.0, child), kwargs={"slots": args.slots, "backlog": 1024},
                        name="fake-servers", daemon=True)
    fakes.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            toml = Path(tmp) / "host.toml"
            toml.write_text(parent.recv())
            config = load_host_config(toml)
        if args.core is not None:
            core = int(args.core) if args.core.isdigit() else args.core
            config = dataclasses.replace(config, server=dataclasses.replace(config.server, core=core))
            try:
                config.server.check("scale.py --core")
            except ValueError as exc:
                raise SystemExit(str(exc)) from None
        if args.voice_activity_max is not None:
            config = dataclasses.replace(config, stt=dataclasses.replace(
                config.stt, voice_activity_max=args.voice_activity_max))
        rows = measure(config, fakes_sizes, args.rounds, args.timeout,
                       f"model servers (fakes, {args.slots} slots each)")
    finally:
        parent.send("stop")
        fakes.join(10)
    if embedded_sizes:
        measure(HostConfig(server=ServerConfig()), embedded_sizes, args.rounds, args.timeout, "embedded backends")
    single = next(r for r in rows if r["n"] == 1)
    top = max(rows, key=lambda r: r["n"])
    errors = sum(r["errors"] for r in rows)
    print(f"\nn={top['n']} p50_ms={top['p50']:.0f} p95_ms={top['p95']:.0f} single_p50_ms={single['p50']:.0f} "
          f"ratio_p95={top['p95'] / single['p50']:.2f} errors={errors}")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
