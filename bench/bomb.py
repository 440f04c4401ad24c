"""Decompression bombs against a real host: ``--skulls`` skulls at once each send a PNG that is
~100 KB on the wire and 30000x30000 pixels (2.7 GB) once decoded, with the bundled question.

    python bench/bomb.py [--skulls 3] [--side 30000]

The host runs in its own process (host.process.HostProcess) with the embedded backends; after
one warm-up turn with the bundled snapshot (models and OpenCV loaded) its peak RSS (VmHWM) is
reset, the bombs go in together, and the last line is::

    skulls=3 answered=3 stage_failed=3 rss_before_mb=… rss_peak_mb=… growth_mb=… seconds=…

``answered`` counts turns that ended with speech and ``done``; ``stage_failed`` those whose
skull was told why the picture was not used. The host's log (stderr) names each refused size.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from websockets.asyncio.client import connect  # noqa: E402

from host.config import HostConfig, ServerConfig  # noqa: E402
from host.process import HostProcess  # noqa: E402
from skull.core import protocol as p  # noqa: E402
from skull.core.data import bundled  # noqa: E402
from skull.core.wav import read_wav, to_mono_rate, to_pcm16  # noqa: E402

QUESTION = to_pcm16(to_mono_rate(read_wav(bundled("question.wav")), 16000))


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of black pixels: tiny on the wire, width x height x 3 bytes
    once decoded to colour."""
    row = b"\x00" * (1 + (width + 7) // 8)
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row) for _ in range(height)) + z.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


async def turn(port: int, name: str, image: bytes, fmt: str, timeout_s: float = 120.0) -> tuple[bool, bool]:
    """One push-to-talk turn; (answered with speech and done, told stage_failed)."""
    reader = p.FrameReader(p.HOST_MESSAGES)
    async with connect(f"ws://127.0.0.1:{port}", max_size=p.TRANSPORT_MAX_BYTES) as ws:
        await ws.send(json.dumps({"type": "hello", "protocol": 1, "skull": name}))

        async def recv():
            msg = reader.read_text(await asyncio.wait_for(ws.recv(), timeout_s))
            if msg.has_payload:
                msg, _ = reader.read_binary(await asyncio.wait_for(ws.recv(), timeout_s))
            return msg

        async def send(msg, payload=None):
            for frame in p.encode(msg, payload):
                await ws.send(frame)
        assert isinstance(await recv(), p.Welcome)
        await send(p.Listen(1))
        await send(p.Image(1, fmt, len(image)), image)
        await send(p.AudioStart(1, 16000, 2, 1))
        for i in range(0, len(QUESTION), 3200):
            await ws.send(QUESTION[i:i + 3200])
        await send(p.Stop(1))
        speech, failed = 0, False
        while True:
            msg = await recv()
            if isinstance(msg, p.Speech):
                speech += 1
            elif isinstance(msg, p.Error) and msg.code == p.E_STAGE_FAILED:
                failed = True
            elif isinstance(msg, p.Done):
                return speech > 0 and msg.segments == speech, failed


def kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skulls", type=int, default=3, help="bombs sent at once (default 3)")
    ap.add_argument("--side", type=int, default=30000, help="the PNG's width and height in pixels (default 30000)")
    args = ap.parse_args()
    bomb = png_bomb(args.side, args.side)
    print(f"bomb: {len(bomb)} bytes, {args.side}x{args.side} pixels", flush=True)
    with HostProcess(HostConfig(server=ServerConfig(port=0))) as hp:
        pid = hp._proc.pid

        async def go():
            await turn(hp.port, "warm", bundled("snapshot.jpg").read_bytes(), "jpeg")
            before = kb(pid, "VmRSS")
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")  # VmHWM starts again from the current RSS
            t0 = time.monotonic()
            results = await asyncio.gather(*(turn(hp.port, f"skull-{i}", bomb, "png") for i in range(args.skulls)))
            return before, kb(pid, "VmHWM"), results, time.monotonic() - t0
        before, peak, results, seconds = asyncio.run(go())
    print(f"skulls={args.skulls} answered={sum(a for a, _ in results)} stage_failed={sum(f for _, f in results)} "
          f"rss_before_mb={before / 1024:.0f} rss_peak_mb={peak / 1024:.0f} growth_mb={(peak - before) / 1024:.0f} "
          f"seconds={seconds:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
