"""Recording turns as session folders: ``DIR/turn-001/``, ``turn-002/``...

Each folder holds ``question.wav`` (what the mic heard, 16 kHz mono), ``snapshot.jpg``,
``reply.wav`` (the reply segments back to back), ``jaw.csv`` (the jaw track aligned with
reply.wav: ``time_ms,opening``), ``commands.csv`` (each jaw command actually sent: when it was
sent after the button release and the
position in reply.wav it was meant for) and ``turn.json`` (transcript, caption, reply,
timings in milliseconds). Where the speaker is a sound server's output, ``heard.wav`` holds
what its monitor recorded from the button release on (what really came out of the speaker) and
``heard.json`` says where it starts (skull/audio/heardfile.py); `skull replay` measures the
jaw as it ran against it. Files are written to a temporary folder and renamed into place, so
a crash never leaves half a turn behind.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .core.wav import pcm16_to_audio, resample, to_mono, write_wav
from .segment import ReplySegment

log = logging.getLogger("skull.record")


_NO_AUDIO = np.zeros(0, np.float32)


class SentCommand(NamedTuple):
    """One jaw command of a recorded turn (a row of commands.csv)."""
    sent_s: float
    """seconds after the button release it was sent"""
    reply_s: float
    """the position in reply.wav it was meant for, seconds"""
    opening: float
    """0 (closed) .. 1 (open)"""


@dataclass
class TurnRecord:
    turn: int
    skull: str = ""
    question: bytearray = field(default_factory=bytearray)
    question_rate: int = 16000
    snapshot: bytes | None = None
    transcript: str = ""
    caption: str = ""
    reply: str = ""
    segments: list[ReplySegment] = field(default_factory=list)
    """the reply's spoken sentences as they arrived"""
    timings_ms: dict = field(default_factory=dict)
    outcome: str = ""
    released_at: float | None = None
    """time.monotonic() of button release"""
    commands: list[SentCommand] = field(default_factory=list)
    """the jaw commands sent during the turn, placed on reply.wav's clock"""
    errors: list = field(default_factory=list)

    def drop_audio(self) -> None:
        """Forget the sound and the picture (question, snapshot, the reply's samples and jaw
        tracks, the jaw commands), keeping the words, the outcome and the timings: what the
        skull keeps of a turn that is no longer the newest, so nothing grows with the turns."""
        self.question = bytearray()
        self.snapshot = None
        self.segments = [dataclasses.replace(seg, samples=_NO_AUDIO, jaw=_NO_AUDIO) for seg in self.segments]
        self.commands = []

    def in_order(self) -> list[ReplySegment]:
        return sorted(self.segments, key=lambda s: s.seq)

    def reply_audio(self) -> tuple[np.ndarray, int, list[tuple[float, float]]]:
        """All segments back to back at the first segment's rate, and the jaw track rows."""
        segs = self.in_order()
        if not segs:
            return np.zeros(0, np.float32), 22050, []
        rate = segs[0].rate
        parts, rows, offset = [], [], 0.0
        for seg in segs:
            x = resample(seg.samples, seg.rate, rate)
            parts.append(x)
            rows.extend(((offset + k / seg.jaw_fps) * 1000.0, float(v)) for k, v in enumerate(seg.jaw))
            offset += len(x) / rate
        return np.concatenate(parts), rate, rows


def next_turn_dir(root: Path) -> Path:
    used = [int(m.group(1)) for p in root.glob("turn-*") if (m := re.fullmatch(r"turn-(\d+)", p.name))]
    return root / f"turn-{max(used, default=0) + 1:03d}"


def write_turn(root: str | Path, rec: TurnRecord) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = next_turn_dir(root)
    tmp = root / f".{final.name}.partial-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    q = pcm16_to_audio(bytes(rec.question), rec.question_rate)
    write_wav(tmp / "question.wav", to_mono(q), rec.question_rate)
    if rec.snapshot:
        (tmp / "snapshot.jpg").write_bytes(rec.snapshot)
    audio, rate, rows = rec.reply_audio()
    write_wav(tmp / "reply.wav", audio, rate)
    with open(tmp / "jaw.csv", "w") as f:
        f.write("time_ms,opening\n")
        f.writelines(f"{t:.1f},{v:.3f}\n" for t, v in rows)
    with open(tmp / "commands.csv", "w") as f:
        f.write("sent_ms,reply_ms,opening\n")
        f.writelines(f"{c.sent_s * 1000:.1f},{c.reply_s * 1000:.1f},{c.opening:.3f}\n" for c in rec.commands)
    meta = {
        "turn": rec.turn, "skull": rec.skull, "outcome": rec.outcome,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "transcript": rec.transcript, "caption": rec.caption, "reply": rec.reply,
        "sentences": [seg.text for seg in rec.in_order()],
        "question_s": round(len(q.samples) / rec.question_rate, 3),
        "reply_s": round(len(audio) / rate, 3) if len(audio) else 0.0,
        "timings_ms": rec.timings_ms, "errors": rec.errors,
    }
    (tmp / "turn.json").write_text(json.dumps(meta, indent=2) + "\n")
    tmp.rename(final)
    log.info("turn %d recorded in %s", rec.turn, final)
    return final

