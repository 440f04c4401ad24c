"""The skull's own voice when the host is gone: the host's pre-synthesised lines, kept on disk.

The host sends its line set after ``welcome`` (``line`` messages, docs/protocol.md):
:class:`LineCollector` gathers one set's lines until all ``count`` have arrived, and
:class:`LineCache` writes the set to ``[offline] cache_dir`` atomically: a new folder is written
and synced, then a one-line pointer file (``CURRENT``) is replaced in a single rename, so a
half-written set never replaces a good one, whenever the power goes. At start the cache is
loaded from disk, so a skull rebooted with no host still speaks; a set that does not hold
together (a missing or damaged file, a checksum that does not match) is ignored with one
warning.

When there is no cached line at all, :func:`espeak_line` is the last resort: espeak-ng on the
skull itself speaks the ``[offline] apology`` (played without a jaw track, so the jaw follows
the sound's live level).
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

try:
    import fcntl
except ImportError:  # Windows has none: there a save is not guarded against another process
    fcntl = None

import numpy as np

from .core import protocol as p
from .core.wav import pcm16_to_audio, read_wav, to_mono

log = logging.getLogger("skull.lines")

POINTER = "CURRENT"
"""the file naming the folder of the set in use (replaced in one rename)"""
LOCK = ".lock"
"""the file a save holds locked, so saves of one folder take turns"""
MANIFEST = "lines.json"
FORMAT = 1
"""the layout of a set folder; a folder of another layout is ignored"""


class LineTag(NamedTuple):
    """What a queued sound is when it is a line, not a reply segment."""
    kind: str
    index: int


@dataclass(frozen=True, eq=False)
class Line:
    """One line as the skull plays it."""
    kind: str
    text: str
    samples: np.ndarray = field(repr=False)
    """mono float -1..1"""
    rate: int
    """Hertz"""
    jaw: np.ndarray = field(repr=False)
    """jaw opening 0..1 per frame; empty: the jaw follows the sound's live level"""
    jaw_fps: int
    index: int = 0

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate


@dataclass(frozen=True, eq=False)
class LineSet:
    id: str
    lines: tuple

    def of(self, kind: str) -> list[Line]:
        return [line for line in self.lines if line.kind == kind]

    @property
    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for line in self.lines:
            out[line.kind] = out.get(line.kind, 0) + 1
        return out


class Received(NamedTuple):
    """One ``line`` message and its PCM, as the collector keeps it until the set is whole."""
    msg: p.Line
    pcm: bytes


class LineCollector:
    """Gathers the ``line`` messages of one set; :meth:`add` returns the whole set (in index
    order) once its last line arrived, else None. Lines of another set, or line 0 (the host
    sending a set again after a lost connection), start afresh; a line
    that contradicts the set (another count, an index twice) or takes it past
    ``max_bytes`` drops what was gathered (the cached set stays as it was)."""

    def __init__(self, max_bytes: int = p.MAX_SET_BYTES):
        self.max_bytes = max_bytes
        self.set: str | None = None
        self.got: dict[int, Received] = {}
        self.bytes = 0

    def reset(self) -> None:
        self.set, self.got, self.bytes = None, {}, 0

    def add(self, msg: p.Line, pcm: bytes) -> list[Received] | None:
        if msg.set != self.set or msg.index == 0:  # a set starts (again: the host sends it whole each time)
            self.reset()
            self.set = msg.set
        first = next(iter(self.got.values()), None)
        if first is not None and first.msg.count != msg.count:
            log.warning("line set %s: line %d says the set has %d lines, an earlier one %d; the set is dropped",
                        msg.set, msg.index, msg.count, first.msg.count)
            self.reset()
            return None
        if msg.index in self.got:
            log.warning("line set %s: line %d came twice; the set is dropped", msg.set, msg.index)
            self.reset()
            return None
        if self.bytes + len(pcm) > self.max_bytes:
            log.warning("line set %s is larger than %d MB; it is not kept (raise [offline] max_mb to keep it)",
                        msg.set, self.max_bytes // 2 ** 20)
            self.reset()
            self.set = msg.set  # the rest of this set is ignored too
            self.bytes = self.max_bytes + 1
            return None
        self.got[msg.index] = Received(msg, pcm)
        self.bytes += len(pcm)
        if len(self.got) < msg.count:
            return None
        whole = [self.got[i] for i in range(msg.count)]
        self.reset()
        return whole


def decode(received: list[Received], set_id: str) -> LineSet:
    """The lines of a whole set, decoded for playing."""
    lines = []
    for r in received:
        m = r.msg
        samples = to_mono(pcm16_to_audio(r.pcm, m.rate, m.channels))
        lines.append(Line(m.kind, m.text, samples, m.rate, np.asarray(m.jaw, np.float32), m.jaw_fps, m.index))
    return LineSet(set_id, tuple(lines))


def default_cache_dir(name: str) -> Path:
    """``$XDG_STATE_HOME/skull/NAME/lines``, else ``~/.local/state/skull/NAME/lines``."""
    base = os.environ.get("XDG_STATE_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "skull" / name / "lines"


class LineCache:
    """A line set on disk in ``folder``: ``CURRENT`` names the set folder in use, which holds
    ``lines.json`` (set id, and per line its kind, text, format, jaw track and the SHA-256 of
    its PCM file) and one ``NN.pcm`` per line. ``max_bytes`` caps the PCM of a set."""

    def __init__(self, folder: str | Path, max_bytes: int = p.MAX_SET_BYTES):
        self.folder = Path(folder)
        self.max_bytes = max_bytes

    # --- reading ------------------------------------------------------------------------------

    def load(self) -> LineSet | None:
        """The set in use, or None when there is none; a set that does not hold together is
        ignored with one warning (the skull then falls back to espeak-ng)."""
        pointer = self.folder / POINTER
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("the cached lines in %s cannot be read (%s); they are ignored until the host sends a new "
                        "set", self.folder, exc)
            return None
        try:
            return self._read_set(self.folder / name)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("the cached lines in %s are damaged or half written (%s); they are ignored until the "
                        "host sends a new set", self.folder / name, str(exc)[:200])
            return None

    def _read_set(self, folder: Path) -> LineSet:
        if folder.parent != self.folder or not folder.name.startswith("set-"):
            raise ValueError(f"{POINTER} names {folder.name!r}, not a set folder")
        meta = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{MANIFEST} is not of format {FORMAT}")
        entries = meta["lines"]
        if not isinstance(entries, list) or not 1 <= len(entries) <= p.MAX_LINES:
            raise ValueError(f"{MANIFEST} lists {len(entries) if isinstance(entries, list) else 'no'} lines")
        lines, total = [], 0
        for i, e in enumerate(entries):
            pcm = (folder / f"{i:02d}.pcm").read_bytes()
            total += len(pcm)
            if total > self.max_bytes:
                raise ValueError(f"the set is larger than {self.max_bytes} bytes")
            if hashlib.sha256(pcm).hexdigest() != e["sha256"]:
                raise ValueError(f"line {i} does not match its checksum")
            # the same rules as on the wire: a cache is input too
            msg = p.Line(meta["set"], i, len(entries), e["kind"], e["text"], e["rate"], 2, e["channels"], len(pcm),
                         e["jaw_fps"], list(e["jaw"]))
            try:
                msg.validate()
            except p.ProtocolError as exc:
                raise ValueError(f"line {i}: {exc}") from None
            lines.append(Received(msg, pcm))
        return decode(lines, meta["set"])

    def id(self) -> str:
        """The id of the set in use ('' when there is none or it cannot be read)."""
        loaded = self.load()
        return loaded.id if loaded else ""

    # --- writing ------------------------------------------------------------------------------

    def save(self, received: list[Received]) -> LineSet:
        """Write a whole set and make it the one in use; the old one is removed after. Raises
        OSError when the disk refuses (the old set then stays in use)."""
        set_id = received[0].msg.set
        total = sum(len(r.pcm) for r in received)
        if total > self.max_bytes:
            raise OSError(f"the line set is {total} bytes, over the cache's {self.max_bytes}")
        self.folder.mkdir(parents=True, exist_ok=True)
        with _locked(self.folder / LOCK):
            return self._save(received, set_id)

    def _save(self, received: list[Received], set_id: str) -> LineSet:
        self._sweep(keep=None)
        tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=self.folder))
        try:
            entries = []
            for i, r in enumerate(received):
                m = r.msg
                _write_synced(tmp / f"{i:02d}.pcm", r.pcm)
                entries.append({"kind": m.kind, "text": m.text, "rate": m.rate, "channels": m.channels,
                                "jaw_fps": m.jaw_fps, "jaw": m.jaw, "sha256": hashlib.sha256(r.pcm).hexdigest()})
            manifest = {"format": FORMAT, "set": set_id, "lines": entries}
            _write_synced(tmp / MANIFEST, json.dumps(manifest, separators=(",", ":")).encode())
            final = self.folder / f"set-{set_id}-{tmp.name[5:]}"
            os.rename(tmp, final)
            pointer_tmp = self.folder / f".{POINTER}.new"
            _write_synced(pointer_tmp, final.name.encode() + b"\n")
            os.replace(pointer_tmp, self.folder / POINTER)  # the one step that switches sets
            _sync_dir(self.folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._sweep(keep=final.name)
        return decode(received, set_id)

    def _sweep(self, keep: str | None) -> None:
        """Remove half-written folders, and (``keep`` given) every set folder but that one."""
        try:
            children = list(self.folder.iterdir())
        except OSError:
            return
        for child in children:
            stale = child.name.startswith(".new-") or (keep is not None and child.name.startswith("set-")
                                                       and child.name != keep)
            if stale and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path):
    """Hold ``path`` locked (flock) against every other save, in this process or another: two
    skulls of one name on one machine (``skull demo`` beside ``skull run``) share the folder,
    and a save's sweep would remove the folder the other is writing (measured: two processes
    saving 40 sets each at once, 19-29 saves of each failed)."""
    with open(path, "a+b") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # let go when the file closes
        yield


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot sync a folder; the rename itself is still atomic
    finally:
        os.close(fd)


class Picker:
    """Which line of a kind to say next: at random, and none again until all were said."""

    def __init__(self, rng: random.Random | None = None):
        self.rng = rng or random.Random()
        self._left: dict[str, list[int]] = {}
        self._last: dict[str, int] = {}

    def pick(self, lines: list[Line]) -> Line | None:
        if not lines:
            return None
        kind = lines[0].kind
        left = [i for i in self._left.get(kind, []) if i < len(lines)]
        choices = left
        if not left:  # a new round; its first line is not the one just said
            left = list(range(len(lines)))
            choices = [i for i in left if i != self._last.get(kind)] or left
        i = self.rng.choice(choices)
        left.remove(i)
        self._left[kind], self._last[kind] = left, i
        return lines[i]

    def forget(self) -> None:
        """A new set arrived: start afresh."""
        self._left.clear()
        self._last.clear()


IDLE_JAW_MAX = 0.12
"""the widest an idle jaw movement opens: a small share of the calibrated travel"""


def silent_jaw_line(rng: random.Random | None = None) -> Line:
    """Idle life: a silent second or two whose jaw track opens a little (at most
    :data:`IDLE_JAW_MAX`) and shuts again, slowly, as if the skull mumbled in its sleep."""
    rng = rng or random.Random()
    fps, rate = 50, 16000
    seconds = rng.uniform(1.0, 2.0)
    n = int(seconds * fps)
    peak = rng.uniform(0.4, 1.0) * IDLE_JAW_MAX
    track = (np.sin(np.linspace(0.0, np.pi, n)) * peak).astype(np.float32)
    track[-3:] = 0.0  # it ends shut
    return Line("jaw", "", np.zeros(int(seconds * rate), np.float32), rate, track, fps, -1)


ESPEAK_TIMEOUT_S = 10.0


def espeak_line(text: str, voice: str = "en-us+m3") -> Line:
    """``text`` spoken by espeak-ng on the skull (no jaw track: the jaw follows the live level).
    Raises OSError when espeak-ng is missing or fails."""
    binary = shutil.which("espeak-ng") or shutil.which("espeak")
    if binary is None:
        raise OSError("espeak-ng is not installed on the skull; install it (sudo apt-get install espeak-ng) so "
                      "the skull can apologise when it has no cached lines")
    try:
        out = subprocess.run([binary, "--stdout", "--stdin", "-v", voice, "-s", "155", "-p", "35"],
                             input=text.encode("utf-8"), capture_output=True, timeout=ESPEAK_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise OSError(f"espeak-ng took longer than {ESPEAK_TIMEOUT_S:g} s") from None
    if out.returncode != 0 or not out.stdout:
        raise OSError(f"espeak-ng failed (exit {out.returncode}): {out.stderr.decode(errors='replace').strip()[:200]}")
    audio = read_wav(out.stdout, name="espeak-ng's output")
    return Line("offline", text, to_mono(audio), audio.rate, np.zeros(0, np.float32), 100, -1)


class OwnVoice:
    """What the skull says by itself: the cached set (loaded from ``[offline] cache_dir`` at
    once), the next line of a kind, the espeak-ng apology, and line sets from the host
    gathered and written to disk one at a time (``on_kept`` gets each set once it is on disk;
    a set overtaken by a newer one before its turn is not written)."""

    def __init__(self, config, name: str, on_kept: Callable[[LineSet], None], faults: Callable = log.error):
        """``config``: the skull's [offline]; ``name``: [link] name (the default folder's)."""
        self.config = config
        self.cache = LineCache(config.folder(name), int(config.max_mb * 2 ** 20))
        self.collector = LineCollector(self.cache.max_bytes)
        self.lines: LineSet | None = self.cache.load()
        self.picker = Picker()
        self.on_kept, self.faults = on_kept, faults
        self._apology: Line | None = None
        self._lock = asyncio.Lock()
        self._saves = 0
        self._tasks: set[asyncio.Task] = set()

    @property
    def set_id(self) -> str:
        return self.lines.id if self.lines is not None else ""

    def pick(self, kind: str) -> Line | None:
        """The next cached line of ``kind`` (random, none again until all were said), or None."""
        return self.picker.pick(self.lines.of(kind) if self.lines is not None else [])

    async def apology(self) -> Line:
        """``[offline] apology`` spoken by espeak-ng (made once, then kept). Raises OSError."""
        if self._apology is None:
            self._apology = await asyncio.to_thread(espeak_line, self.config.apology, self.config.voice)
        return self._apology

    def received(self, msg: p.Line, pcm: bytes) -> None:
        """One ``line`` from the host; a whole set is written to disk off the event loop."""
        whole = self.collector.add(msg, pcm)
        if whole is None:
            return
        self._saves += 1
        task = asyncio.create_task(self._keep(whole, self._saves), name="keep-lines")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _keep(self, whole: list[Received], mine: int) -> None:
        async with self._lock:
            if mine != self._saves:
                return
            try:
                kept = await asyncio.to_thread(self.cache.save, whole)
            except Exception as exc:  # the disk refused: the old set stays in use
                self.faults(f"writing the line set to {self.cache.folder}", exc)
                return
            self.lines = kept
            self.picker.forget()
            log.info("line set %s kept in %s (%s)", kept.id, self.cache.folder,
                     ", ".join(f"{n} {k}" for k, n in kept.kinds.items()))
            self.on_kept(kept)
