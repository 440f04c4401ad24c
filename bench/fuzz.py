"""Seeded hostile frames against a real host running in its own process.

    python bench/fuzz.py --frames 10000 --seed 1

Starts ``skull``'s host (embedded backends, loopback, a token) in a child process, then opens
connections and sends a seeded mix of frames: valid messages with hostile field values, JSON
nested past the decoder's depth, integers of thousands of digits, lone surrogates, unknown
types, binary frames nobody announced, announced payloads replaced by text, names too long or
with line breaks, hellos with wrong tokens. Every few hundred frames each open connection must
still answer a ping. Then a calm skull asks the bundled question and must hear an answer. At
the end it prints one line:

    frames=N tracebacks=T exits=E rss_growth_mb=G answered=1

``tracebacks``: "Traceback" lines the host wrote to its log; ``exits``: 1 when the host process
ended; ``rss_growth_mb``: the host's resident memory at the end minus after the first connections;
``answered``: 1 when the calm skull's turn ended with ``done`` and spoken segments. Exit status 1
when either count is not 0, a connection stopped answering pings, or the calm turn went unanswered.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOKEN = "fuzz-T0ken"
TYPES = ["hello", "listen", "image", "audio_start", "stop", "played", "welcome", "done", "dance", ""]


def serve() -> None:
    """The child: a host on a free loopback port; prints the port, runs until killed."""
    import logging
    from host.config import HostConfig, ServerConfig
    from host.server import Host
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")

    async def main():
        host = await Host(HostConfig(server=ServerConfig(port=0, token=TOKEN, max_record_s=2.0,
                                                         conversation_idle_s=5.0, max_skulls=16))).start()
        print(host.port, flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())


def _value(rng: random.Random):
    return rng.choice([0, -1, 1, 2 ** 63, 16000, 1e308, -0.0, True, None, "", "x" * rng.randint(1, 300),
                       "\ud800", "\x1b[31m\nforged", [], {}, [1, [2, [3]]], "jpeg", "png", "released"])


def frame(rng: random.Random, turn: int):
    """One hostile frame (str or bytes)."""
    kind = rng.random()
    if kind < 0.08:
        return "[" * rng.randint(1000, 200_000)
    if kind < 0.12:
        return '{"type":"listen","turn":' + "9" * rng.randint(4300, 20000) + "}"
    if kind < 0.16:
        return '{"type":"stop","turn":"\\ud800"}'
    if kind < 0.24:
        return os.urandom(rng.choice([0, 1, 3, 320, 3200, 70000]))
    if kind < 0.30:
        return bytes(rng.randint(0, 255) for _ in range(rng.randint(1, 60))).decode("latin-1")
    if kind < 0.45:  # a plausible turn: listen, audio, maybe stop
        return rng.choice([json.dumps({"type": "listen", "turn": turn}),
                           json.dumps({"type": "audio_start", "turn": turn, "rate": 16000, "width": 2,
                                       "channels": 1}),
                           bytes(3200),
                           json.dumps({"type": "image", "turn": turn, "format": "jpeg", "bytes": 10}),
                           json.dumps({"type": "stop", "turn": turn})])
    msg = {"type": rng.choice(TYPES)}
    for key in rng.sample(["turn", "rate", "width", "channels", "bytes", "format", "reason", "skull", "token",
                           "protocol", "first_audio_ms", "jaw_shape", "play_rate"], rng.randint(0, 6)):
        msg[key] = _value(rng)
    return json.dumps(msg)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def attack(port: int, frames: int, seed: int, pid: int) -> tuple[int, float]:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake
    if os.environ.get("FUZZ_DEBUG"):
        async def watch():
            await asyncio.sleep(15)
            for t in asyncio.all_tasks():
                t.print_stack(limit=6, file=sys.stderr)
        asyncio.create_task(watch())
    rng = random.Random(seed)
    url = f"ws://127.0.0.1:{port}"
    sent, base, unanswered = 0, None, 0
    while sent < frames:
        name = rng.choice(["mr-bones", "lady-bones", f"s{rng.randint(0, 40)}", "x" * 70_000, "bad\nname",
                           "\x1b[2J", ""])
        token = TOKEN if rng.random() < 0.85 else rng.choice(["", "wrong"])
        try:
            async with connect(url, max_size=None, open_timeout=10, close_timeout=1, ping_interval=None) as ws:
                reading = asyncio.create_task(_drain(ws))  # a skull reads what the host sends
                await ws.send(json.dumps({"type": "hello", "protocol": 1, "skull": name, "token": token}))
                if rng.random() < 0.05:  # a hostile first frame instead
                    await ws.send(frame(rng, 1))
                for i in range(rng.randint(20, 200)):
                    f = frame(rng, rng.randint(1, 4))
                    t = time.monotonic()
                    await ws.send(f)
                    sent += 1
                    if os.environ.get("FUZZ_DEBUG") and time.monotonic() - t > 0.5:
                        print(f"# slow send {time.monotonic() - t:.1f} s: {str(f)[:80]!r}", file=sys.stderr)
                    if i % 50 == 49:
                        t = time.monotonic()
                        await asyncio.wait_for(await ws.ping(), 10)  # still answering
                        if os.environ.get("FUZZ_DEBUG") and time.monotonic() - t > 0.5:
                            print(f"# slow pong {time.monotonic() - t:.1f} s", file=sys.stderr)
                await asyncio.wait_for(await ws.ping(), 10)
            reading.cancel()
        except asyncio.TimeoutError:
            print(f"# a connection stopped answering pings after {sent} frames", file=sys.stderr)
            unanswered += 1
        except (ConnectionClosed, InvalidHandshake, OSError):
            pass  # refused hellos and 4409 replacements close connections: expected
        if os.environ.get("FUZZ_DEBUG"):
            print(f"# {sent} frames sent", file=sys.stderr, flush=True)
        if base is None:
            base = _rss_mb(pid)
    return sent, _rss_mb(pid) - (base or 0.0), unanswered, await calm_turn(url)


async def calm_turn(url: str) -> int:
    """1 when a well-behaved skull, after the storm, asks the bundled question and hears an answer."""
    from websockets.asyncio.client import connect
    from skull.core.data import bundled
    from skull.core.wav import read_wav, to_mono_rate, to_pcm16
    audio = to_pcm16(to_mono_rate(read_wav(bundled("question.wav")), 16000))
    try:
        async with connect(url, max_size=None, open_timeout=10) as ws:
            await ws.send(json.dumps({"type": "hello", "protocol": 1, "skull": "calm", "token": TOKEN}))
            await ws.send(json.dumps({"type": "listen", "turn": 1}))
            await ws.send(json.dumps({"type": "audio_start", "turn": 1, "rate": 16000, "width": 2, "channels": 1}))
            for i in range(0, min(len(audio), 16000 * 2 * 2 - 3200), 3200):  # within max_record_s
                await ws.send(audio[i:i + 3200])
            await ws.send(json.dumps({"type": "stop", "turn": 1}))
            async with asyncio.timeout(60):
                async for frame in ws:
                    msg = json.loads(frame) if isinstance(frame, str) else {}
                    if msg.get("type") == "done":
                        return int(msg.get("segments", 0) >= 1)
    except Exception as exc:  # noqa: BLE001 - any failure of the calm turn is the figure
        print(f"# the calm turn failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 0


async def _drain(ws) -> None:
    from websockets.exceptions import ConnectionClosed
    try:
        async for _ in ws:
            pass
    except ConnectionClosed:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve()
        return 0
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    log_path = os.environ.get("FUZZ_LOG")
    with (open(log_path, "w+") if log_path else tempfile.TemporaryFile("w+")) as errlog:
        child = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, stderr=errlog,
                                 text=True, env=env)
        try:
            port = int(child.stdout.readline() or 0)
            if not port:
                errlog.seek(0)
                print(errlog.read()[-3000:], file=sys.stderr)
                print("frames=0 tracebacks=0 exits=1 rss_growth_mb=0")
                return 1
            t0 = time.monotonic()
            sent, growth, unanswered, answered = asyncio.run(attack(port, args.frames, args.seed, child.pid))
            exits = 0 if child.poll() is None else 1
        finally:
            if child.poll() is None:
                child.terminate()
                child.wait(10)
        errlog.seek(0)
        text = errlog.read()
    tracebacks = text.count("Traceback")
    if tracebacks:
        i = text.index("Traceback")
        print(text[max(0, i - 500):i + 3000], file=sys.stderr)
    print(f"# {time.monotonic() - t0:.1f} s, host log {len(text)} bytes", file=sys.stderr)
    print(f"frames={sent} tracebacks={tracebacks} exits={exits} rss_growth_mb={growth:.1f}"
          f" answered={answered}{f' unanswered_pings={unanswered}' if unanswered else ''}")
    return 0 if tracebacks == 0 and exits == 0 and unanswered == 0 and answered else 1


if __name__ == "__main__":
    sys.exit(main())
