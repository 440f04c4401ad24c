"""Seeded hostile frames against a real host and a real skull, each in its own process.

    python bench/fuzz.py --frames 10000 --seed 1                  # the host, then the skull
    python bench/fuzz.py --target skull --frames 20000

**The host** (embedded backends, loopback, a token) runs in a child process. Connections send a
seeded mix of frames: valid messages with hostile field values, JSON nested past the decoder's
depth, integers of thousands of digits, lone surrogates, unknown types, binary frames nobody
announced, announced payloads replaced by text, names too long or with line breaks, hellos
with wrong tokens. Every few hundred frames each open connection must still answer a ping.
Then a calm skull asks the bundled question and must hear an answer.

**The skull** is a real ``skull run --sim --record`` whose button is pressed and released all
along, against a hostile host (:class:`FuzzHost`): bad welcomes and closes, garbage, spoiled and
out-of-order messages, speech without or with the wrong payload, oversized frames, real speech
for its current turn, and line sets: whole ones (which the skull keeps on disk) and malformed
ones (spoiled fields, a count past the cap, lost or wrong payloads, sets cut short, an index
twice). After each burst the host pings it. After the storm a calm host
welcomes it and must get a pong.

Each target prints one line:

    target=host frames=N tracebacks=T exits=E rss_growth_mb=G answered=1
    target=skull frames=N tracebacks=T exits=E rss_growth_mb=G missed_pongs=0 jaw_outside=0 calm=1 lines_kept=K

``tracebacks``: "Traceback" lines the process wrote; ``exits``: 1 when it ended; ``rss_growth_mb``:
its resident memory at the end minus after the first connections; ``answered``: the calm
skull's turn ended with ``done`` and spoken segments; ``missed_pongs``: pings the skull left
unanswered; ``jaw_outside``: recorded jaw commands outside 0..1 (the calibrated range); ``calm``:
the skull came back to the calm host; ``lines_kept``: 1 when the skull holds a whole line set on
disk that loads (informative: a short storm may send none). Exit status 1 when any of the
others is wrong.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from skull.core import protocol as p  # noqa: E402
from skull.core.data import bundled  # noqa: E402

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


async def attack(port: int, frames: int, seed: int, pid: int) -> tuple[int, float, int, int]:
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


# --- the skull's side: a fuzzing host against `skull run --sim` --------------------------------

RATE = 16000
ANSI = "\x1b[2J\x1b[31mthe host owns your terminal\x1b[0m"
NON_FATAL_CLOSES = (1000, 1001, 1011, 4000, 4999)  # 4400, 4401 and 4426 are the documented fatal ones



def welcome(session: str = "s1") -> str:
    return p.encode(p.Welcome(p.PROTOCOL_VERSION, "hostile", session, 15.0))[0]


def speech(turn: int, seq: int, seconds: float = 0.3, opening: float = 0.8) -> list:
    """A valid spoken segment: a tone of ``seconds`` and a jaw track that opens to ``opening``."""
    n = int(RATE * seconds)
    pcm = (np.sin(np.arange(n) * 2 * np.pi * 220 / RATE) * 12000).astype("<i2").tobytes()
    jaw = [opening] * int(seconds * 100)
    return p.encode(p.Speech(turn, seq, f"sentence {seq}", RATE, 2, 1, len(pcm), 100, jaw), pcm)


def line_set(set_id: str, count: int, seconds: float = 0.2) -> list:
    """The frames of a whole, valid line set of ``count`` lines (tones with jaw tracks)."""
    frames = []
    for i in range(count):
        n = int(RATE * seconds)
        pcm = (np.sin(np.arange(n) * 2 * np.pi * 180 / RATE) * 9000).astype("<i2").tobytes()
        kind = p.LINE_KINDS[i % len(p.LINE_KINDS)]
        frames += p.encode(p.Line(set_id, i, count, kind, f"{kind} line {i}", RATE, 2, 1, len(pcm), 100,
                                  [0.6] * int(seconds * 100)), pcm)
    return frames


class FuzzHost:
    """A host that answers each connection with a seeded mix of what a broken or hostile host
    sends: bad welcomes (garbage, binary, wrong types, nesting, oversized, a close instead),
    then bursts of garbage text and bytes, JSON that is no message, messages with wrong, huge
    or missing fields, valid messages out of order and for other turns, speech without its
    payload or with the wrong one, oversized frames, and real speech for the skull's current
    turn (so the jaw moves). After each burst it pings the skull and notes whether it answered."""

    def __init__(self, seed: int, frames: int):
        import random
        self.rng = random.Random(seed)
        self.budget = frames
        self.sent = self.malformed = self.connections = self.welcomed = 0
        self.pongs, self.missed_pongs = 0, 0
        self.calm_pongs = 0  # pongs on a connection after the fuzzing
        self.turn = 0
        self.transport_overflow_left = 1  # one frame past the transport limit: the skull drops the link

    # frames ---------------------------------------------------------------------------------

    def _text(self) -> str:
        r = self.rng
        alphabet = "{}[]\":,0123456789abcdeftrunl \\\x1b\r\n\x00\u202e\u00e9\U0001f480"
        return "".join(r.choice(alphabet) for _ in range(r.randrange(0, 300)))

    def _valid(self, turn: int) -> dict:
        r = self.rng
        kind = r.choice(["welcome", "ack", "heard", "done", "error", "speech", "line"])
        return {"welcome": {"type": "welcome", "protocol": 1, "host": "h", "session": "x", "max_record_s": 15},
                "ack": {"type": "ack", "turn": turn, "of": r.choice(["listen", "stop"])},
                "heard": {"type": "heard", "turn": turn, "transcript": "hat\x1b[31m", "caption": "skull"},
                "done": {"type": "done", "turn": turn, "segments": 1, "reply": "ok",
                         "timings_ms": {"stt": 1, "tts": "slow", "x\r\ny": 2}},
                "error": {"type": "error", "code": "stage_failed", "message": ANSI + "\r\nforged", "turn": turn},
                "speech": {"type": "speech", "turn": turn, "seq": 0, "text": "hi", "rate": RATE, "width": 2,
                           "channels": 1, "bytes": 320, "jaw_fps": 100, "jaw": [0.5]},
                "line": {"type": "line", "set": f"s{turn}", "index": 0, "count": 2, "kind": "offline", "text": "boo",
                         "rate": RATE, "width": 2, "channels": 1, "bytes": 320, "jaw_fps": 100, "jaw": [0.5]}}[kind]

    def _spoiled(self, msg: dict) -> str:
        """``msg`` with one field made wrong in a way a decoder must survive."""
        r = self.rng
        key = r.choice([k for k in msg if k != "type"] or ["type"])
        bad = r.choice(["drop", "-5", "9" * 5000, "NaN", "Infinity", "1e999", "[[[[[[]]]]]]", "\"\\ud800\"", "true",
                        "null", "{}", "\"" + "x" * 1000 + "\"", "[2.0, -1, \"x\"]", "1.5"])
        if bad == "drop":
            msg = {k: v for k, v in msg.items() if k != key}
            return json.dumps(msg)
        body = json.dumps({k: v for k, v in msg.items() if k != key})
        return body[:-1] + (", " if len(body) > 2 else "") + f"\"{key}\": {bad}}}"

    def burst(self, turn: int) -> list[list]:
        """One hostile item: a list of frames sent back to back."""
        r = self.rng
        kind = r.choices(["garbage_text", "garbage_binary", "not_object", "spoiled", "nested", "valid_other_turn",
                          "speech", "speech_no_payload", "speech_wrong_payload", "mutated", "oversized_text",
                          "oversized_binary", "transport_overflow", "line_set", "line_bad"],
                         weights=[10, 10, 4, 20, 2, 10, 12, 4, 4, 12, 1, 0.3, 0.05, 2, 6])[0]
        if kind == "transport_overflow" and not self.transport_overflow_left:
            kind = "garbage_binary"
        malformed = kind not in ("valid_other_turn", "speech", "line_set")
        if kind == "garbage_text":
            frames = [self._text()]
        elif kind == "garbage_binary":
            frames = [r.randbytes(r.randrange(0, 3000))]
        elif kind == "not_object":
            frames = [r.choice(["[]", "1", "\"welcome\"", "null", "true", "[{\"type\":\"ack\"}]"])]
        elif kind == "spoiled":
            frames = [self._spoiled(self._valid(turn))]
        elif kind == "nested":
            frames = ["[" * r.randrange(500, 100_000)]
        elif kind == "valid_other_turn":
            msg = self._valid(r.choice([turn - 1, turn + 1, turn + 1000, 0]))
            frames = [json.dumps(msg)] + ([b"\0" * 320] if msg["type"] == "speech" else [])
            malformed = msg["type"] == "speech" and msg["turn"] < 0
        elif kind == "speech":
            frames = speech(turn, r.randrange(0, 5), r.uniform(0.05, 0.3), r.uniform(0.0, 1.0)) if turn >= 0 else []
        elif kind == "speech_no_payload":
            frames = [speech(turn, 0, 0.1)[0], json.dumps(self._valid(turn))]
        elif kind == "speech_wrong_payload":
            frames = [speech(turn, 0, 0.1)[0], r.randbytes(r.randrange(0, 5000))]
        elif kind == "mutated":
            text = json.dumps(self._valid(turn))
            i = r.randrange(len(text))
            frames = [text[:i] + r.choice(["", "\"", "}", "\\", "\x00", "{"]) + text[i + 1:]]
        elif kind == "line_set":  # a whole set: the skull keeps it
            frames = line_set(f"fuzz-{r.randrange(1000)}", r.randrange(1, 5))
        elif kind == "line_bad":
            frames = self._bad_lines()
        elif kind == "oversized_text":
            frames = [json.dumps({"type": "error", "code": "x", "message": "y" * (p.MAX_TEXT_BYTES + 10)})]
        elif kind == "oversized_binary":
            frames = [bytes(p.MAX_BINARY_BYTES + 1)]
        else:
            self.transport_overflow_left -= 1
            frames = [bytes(p.TRANSPORT_MAX_BYTES + 1)]
        self.malformed += malformed
        return frames

    def _bad_lines(self) -> list:
        """A line set gone wrong: a spoiled field, a count past the cap, a payload lost or of the
        wrong size, a set cut short, an index twice, lines of two sets interleaved."""
        r = self.rng
        whole = line_set(f"bad-{r.randrange(1000)}", 3)
        how = r.choice(["spoiled", "count", "no_payload", "wrong_payload", "cut_short", "twice", "interleaved",
                        "huge_bytes"])
        line = {"type": "line", "set": "x", "index": 0, "count": 2, "kind": "offline", "text": "boo", "rate": RATE,
                "width": 2, "channels": 1, "bytes": 320, "jaw_fps": 100, "jaw": [0.5]}
        if how == "spoiled":
            return [self._spoiled(line), bytes(320)]
        if how == "count":
            return [json.dumps(line | {"count": p.MAX_LINES + 1}), bytes(320)]
        if how == "huge_bytes":
            return [json.dumps(line | {"bytes": p.MAX_LINE_BYTES + 2})]
        if how == "no_payload":
            return [whole[0], json.dumps(self._valid(self.turn))]
        if how == "wrong_payload":
            return [whole[0], r.randbytes(r.randrange(0, 5000))]
        if how == "cut_short":
            return whole[:2 * r.randrange(1, 3)]
        if how == "twice":
            return whole[:2] + whole[:2]
        other = line_set(f"other-{r.randrange(1000)}", 2)
        return whole[:2] + other[:2] + whole[2:]

    def bad_welcome(self):
        """A reply to hello that is not a welcome the skull can use (a frame, or a close code)."""
        r = self.rng
        return r.choice([self._text(), r.randbytes(64), json.dumps(self._valid(1) | {"type": "ack"}),
                         self._spoiled(self._valid(1) | {"type": "welcome", "protocol": 1, "host": "h",
                                                          "session": "s", "max_record_s": 15}),
                         "[" * 50_000, json.dumps({"type": "welcome", "session": "s" * p.MAX_TEXT_BYTES}),
                         r.choice(NON_FATAL_CLOSES)])

    # the connection ---------------------------------------------------------------------------

    async def handler(self, ws):
        self.connections += 1
        r, lock = self.rng, asyncio.Lock()
        try:
            await ws.recv()  # hello
            if self.budget <= 0:  # the fuzzing is over: a calm host
                await ws.send(welcome())
                listener = asyncio.create_task(self._listen(ws, lock))
                await asyncio.wait_for(await ws.ping(), 15)
                self.calm_pongs += 1
                await listener
                return
            if r.random() < 0.2:
                bad = self.bad_welcome()
                self.sent += 1
                if isinstance(bad, int):
                    await ws.close(bad, "fuzz")
                else:
                    await ws.send(bad)
                    await asyncio.wait_for(ws.wait_closed(), 15)
                return
            await ws.send(welcome(f"fuzz-{self.connections}\x1b[2J"))
            self.welcomed += 1
            listener = asyncio.create_task(self._listen(ws, lock))
            try:
                for _ in range(r.randrange(1, 4)):
                    for _ in range(r.randrange(20, 300)):
                        if self.budget <= 0:
                            break
                        frames = self.burst(self.turn)
                        async with lock:
                            for f in frames:
                                await ws.send(f)
                        self.budget -= 1
                        self.sent += 1
                        if r.random() < 0.05:
                            await asyncio.sleep(r.uniform(0, 0.1))
                    try:
                        await asyncio.wait_for(await ws.ping(), 15)
                        self.pongs += 1
                    except asyncio.TimeoutError:
                        self.missed_pongs += 1
                        return
            finally:
                listener.cancel()
            if r.random() < 0.5:
                await ws.close(r.choice(NON_FATAL_CLOSES), "fuzz")
            else:
                await ws.close()
        except Exception:  # the skull dropped the link (a transport overflow, a bad welcome): it reconnects
            return

    async def _listen(self, ws, lock):
        """Acknowledge most of the skull's listen and stop; follow its turn number."""
        async for frame in ws:
            if isinstance(frame, bytes):
                continue
            msg = json.loads(frame)
            if msg["type"] in ("listen", "stop"):
                self.turn = msg["turn"]
                if self.rng.random() < 0.8:
                    async with lock:
                        await ws.send(p.encode(p.Ack(msg["turn"], msg["type"]))[0])


@contextlib.asynccontextmanager
async def skull_run(url: str, folder: Path, config: str = "", record: bool = False):
    """A real `skull run --sim` process against ``url``; yields (process, output lines so far).
    Each line sent to its stdin toggles the simulated button."""
    args = [sys.executable, "-m", "skull", "-v", "run", "--sim", "--no-audio", "--url", url,
            "--mic-file", str(bundled("question.wav")), "--image", str(bundled("snapshot.jpg"))]
    if config:
        (folder / "skull.toml").write_text(config)
        args += ["--config", str(folder / "skull.toml")]
    if record:
        args += ["--record", str(folder / "turns")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "XDG_STATE_HOME": str(folder / "state"),  # its lines stay here
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, cwd=folder, env=env)
    lines: list[str] = []

    async def read():
        async for line in proc.stdout:
            lines.append(line.decode("utf-8", errors="backslashreplace"))
    reader = asyncio.create_task(read())
    try:
        yield proc, lines
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        await asyncio.wait_for(reader, 5)


SKULL_CONFIG = "[link]\nreconnect_min_s = 0.05\nreconnect_max_s = 0.3\ndone_timeout_s = 0.5\n"


async def storm_skull(fuzz: "FuzzHost", folder: Path, max_s: float) -> tuple[bool, str, float, float]:
    """``fuzz`` against a real `skull run --sim --record` in ``folder`` whose button is pressed
    and released all along, until its frames are spent (or ``max_s``); then a calm host. Returns
    (still running, its output, seconds taken, RSS growth in MB)."""
    from websockets.asyncio.server import serve as ws_serve
    server = await ws_serve(fuzz.handler, "127.0.0.1", 0, max_size=p.TRANSPORT_MAX_BYTES)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    started, base = time.monotonic(), None
    try:
        async with skull_run(url, folder, SKULL_CONFIG, record=True) as (proc, lines):
            while fuzz.budget > 0 and proc.returncode is None and time.monotonic() - started < max_s:
                proc.stdin.write(b"\n")  # the button goes down, or up
                await proc.stdin.drain()
                await asyncio.sleep(fuzz.rng.uniform(0.2, 1.0))
                if base is None and fuzz.welcomed:
                    base = _rss_mb(proc.pid)
            # after the storm, a calm host: the skull connects again and answers its ping
            deadline = time.monotonic() + 15
            while not fuzz.calm_pongs and proc.returncode is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            alive = proc.returncode is None
            growth = _rss_mb(proc.pid) - (base or 0.0) if alive else 0.0
            return alive, "".join(lines), time.monotonic() - started, growth
    finally:
        server.close()
        await server.wait_closed()


def jaw_openings(folder: Path) -> list[float]:
    """Every jaw opening the skull recorded sending (commands.csv of each turn)."""
    openings = []
    for csv in (folder / "turns").glob("turn-*/commands.csv"):
        openings += [float(row.split(",")[2]) for row in csv.read_text().splitlines()[1:]]
    return openings


def fuzz_skull(frames: int, seed: int) -> dict:
    fuzz = FuzzHost(seed=seed, frames=frames)
    with tempfile.TemporaryDirectory(prefix="fuzz-skull-") as tmp:
        alive, out, took, growth = asyncio.run(storm_skull(fuzz, Path(tmp), max_s=max(60.0, frames / 20)))
        openings = jaw_openings(Path(tmp))
        from skull.lines import LineCache
        kept = LineCache(Path(tmp) / "state" / "skull" / "mr-bones" / "lines").load()
    tracebacks = out.count("Traceback")
    if tracebacks:
        i = out.index("Traceback")
        print(out[max(0, i - 500):i + 3000], file=sys.stderr)
    elif not alive:
        print(out[-3000:], file=sys.stderr)
    print(f"# skull: {took:.1f} s, {fuzz.connections} connections, {len(openings)} jaw commands, "
          f"{len(out)} bytes of output", file=sys.stderr)
    return {"target": "skull", "frames": fuzz.sent, "tracebacks": tracebacks, "exits": int(not alive),
            "rss_growth_mb": round(growth, 1), "missed_pongs": fuzz.missed_pongs,
            "jaw_outside": sum(not 0.0 <= o <= 1.0 for o in openings), "calm": int(fuzz.calm_pongs > 0),
            "lines_kept": int(kept is not None)}


def fuzz_host(frames: int, seed: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    log_path = os.environ.get("FUZZ_LOG")
    t0 = time.monotonic()
    with (open(log_path, "w+") if log_path else tempfile.TemporaryFile("w+")) as errlog:
        child = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, stderr=errlog,
                                 text=True, env=env)
        try:
            port = int(child.stdout.readline() or 0)
            if not port:
                errlog.seek(0)
                print(errlog.read()[-3000:], file=sys.stderr)
                return {"target": "host", "frames": 0, "tracebacks": 0, "exits": 1, "rss_growth_mb": 0.0,
                        "answered": 0, "missed_pongs": 0}
            sent, growth, missed, answered = asyncio.run(attack(port, frames, seed, child.pid))
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
    print(f"# host: {time.monotonic() - t0:.1f} s, host log {len(text)} bytes", file=sys.stderr)
    return {"target": "host", "frames": sent, "tracebacks": tracebacks, "exits": exits,
            "rss_growth_mb": round(growth, 1), "answered": answered, "missed_pongs": missed}


def ok(figures: dict) -> bool:
    return (figures["tracebacks"] == 0 and figures["exits"] == 0 and figures["missed_pongs"] == 0
            and figures.get("answered", 1) == 1 and figures.get("calm", 1) == 1 and figures.get("jaw_outside", 0) == 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", choices=["host", "skull", "both"], default="both")
    ap.add_argument("--frames", type=int, default=10000, help="hostile frames per target (default 10000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve()
        return 0
    results = []
    for target, run in (("host", fuzz_host), ("skull", fuzz_skull)):
        if args.target in (target, "both"):
            results.append(run(args.frames, args.seed))
            print(" ".join(f"{k}={v}" for k, v in results[-1].items()), flush=True)
    return 0 if all(map(ok, results)) else 1


if __name__ == "__main__":
    sys.exit(main())
