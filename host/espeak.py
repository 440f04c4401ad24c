"""espeak-ng kept running: speaker processes that load espeak-ng's own library (libespeak-ng, the
Debian package libespeak-ng1 that the espeak-ng program runs on) once and then speak sentence
after sentence, instead of starting the espeak-ng program for every sentence.

Starting the program costs more than speaking: it loads its phoneme tables and dictionary each
time, 10-20 ms here before the first sample, while a loaded library speaks a sentence in ~4 ms.
The first sentence a speaker says is the program's, sample for sample; later ones differ in the
last bits (the voice's flutter runs on from one sentence to the next, a pause after "Ha!" may
fall up to 100 ms longer), not in words.

Why a process of its own (``python -m host.espeak``) and not the library inside the host:
espeak-ng is GPL-3.0-or-later and this project is MIT. As with the program, the host only sends
text down a pipe and reads 16-bit samples back; the GPL library never becomes part of the host
program (the same line docs/model-servers.md draws for piper-tts). The library keeps one voice
and one sentence in progress per process, so each speaker says one sentence at a time and the
host keeps a few (``SPEAKERS_MAX``, up to one per core), started as they are needed.

The pipe's protocol: the host writes one JSON line {"text", "voice", "wpm", "pitch",
"timeout_s"}; the speaker answers one JSON line, {"bytes": n, "rate": r} followed by n bytes of
little-endian 16-bit mono samples, or {"error": message, "kind": "voice" | "timeout" | "failed"}.
Its first line says {"ready": true, "rate": r, "version": v} or {"error": ..., "kind":
"unavailable"} (then it exits). It ends when its standard input closes.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import queue
import select
import subprocess
import sys
import threading
import time
import weakref

log = logging.getLogger("host.espeak")

SPEAKERS_MAX = 4
"""speaker processes at most (one per core, at least two): sentences spoken at once"""
START_TIMEOUT_S = 10.0
"""seconds a speaker may take to load the library and say it is ready"""

_SYNCHRONOUS = 2
"""AUDIO_OUTPUT_SYNCHRONOUS: the samples come to the callback on the calling thread"""
_DONT_EXIT = 0x8000
"""espeakINITIALIZE_DONT_EXIT: a missing data directory is an error code, not the process's end"""
_RATE, _PITCH = 1, 3
"""espeakRATE (words per minute), espeakPITCH (0..99)"""
_POS_CHARACTER = 1
_FLAGS = 0x0000 | 0x0100 | 0x1000
"""espeakCHARS_AUTO | espeakPHONEMES | espeakENDPAUSE: what the espeak-ng program passes"""


class SpeakerError(Exception):
    """A speaker could not say a sentence: ``kind`` is "voice" (no such voice), "timeout",
    "failed" (the library failed or the speaker died) or "unavailable" (no library here)."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


# --- in the speaker process ------------------------------------------------------------------------

class _Voice(ctypes.Structure):
    """espeak_VOICE: what a voice is asked for by (the language, "en-gb+m3", where no voice has that name)"""
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class Library:
    """libespeak-ng, initialised once in this (speaker) process."""

    def __init__(self, lib: ctypes.CDLL, rate: int, version: str):
        self.lib, self.rate, self.version = lib, rate, version
        self._chunks: list[bytes] = []
        self._deadline = 0.0
        self._cut = False
        self._settings: tuple | None = None
        self._callback = _CALLBACK(self._take)  # kept: the library holds only its address
        lib.espeak_SetSynthCallback(self._callback)

    def _take(self, wav, samples: int, _events) -> int:
        """The library's callback: keep the samples; 1 (stop) once past the deadline."""
        if samples > 0 and wav:
            self._chunks.append(ctypes.string_at(wav, samples * 2))
        if time.monotonic() > self._deadline:
            self._cut = True
            return 1
        return 0

    def use(self, voice: str, wpm: int, pitch: int) -> None:
        """Take ``voice`` (~5 ms the first time); SpeakerError("voice") when there is none."""
        if self._settings != (voice, wpm, pitch):
            self._settings = None
            name = voice.encode("utf-8")
            # as the program does: a voice's name or file first, else a language
            if (self.lib.espeak_SetVoiceByName(name) != 0
                    and self.lib.espeak_SetVoiceByProperties(ctypes.byref(_Voice(languages=name))) != 0):
                raise SpeakerError(f"espeak-ng has no voice {voice!r}", "voice")
            self.lib.espeak_SetParameter(_RATE, wpm, 0)
            self.lib.espeak_SetParameter(_PITCH, pitch, 0)
            self._settings = (voice, wpm, pitch)

    def speak(self, text: str, voice: str, wpm: int, pitch: int, timeout_s: float) -> bytes:
        """``text`` spoken: 16-bit mono samples at ``self.rate``."""
        self.use(voice, wpm, pitch)
        data = text.encode("utf-8", errors="replace") + b"\0"
        self._chunks, self._cut = [], False
        self._deadline = time.monotonic() + timeout_s
        try:
            code = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _FLAGS, None, None)
            pcm = b"".join(self._chunks)
        finally:
            self._chunks = []
        if self._cut:
            self.lib.espeak_Cancel()  # the library's own end of a synthesis cut short
            raise SpeakerError(f"espeak-ng took longer than {timeout_s:g} s", "timeout")
        if code != 0:
            raise SpeakerError(f"libespeak-ng could not speak (error {code})", "failed")
        return pcm


def load() -> Library:
    """libespeak-ng, loaded and initialised; SpeakerError("unavailable") saying why not."""
    name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
    try:
        lib = ctypes.CDLL(name)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(_Voice)]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Cancel.argtypes = []
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
    except (OSError, AttributeError) as exc:
        raise SpeakerError(f"libespeak-ng cannot be loaded ({exc})", "unavailable") from None
    rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, None, _DONT_EXIT)
    if rate <= 0:
        raise SpeakerError(f"libespeak-ng did not start (error {rate}: is espeak-ng-data installed?)", "unavailable")
    return Library(lib, rate, (lib.espeak_Info(None) or b"").decode("ascii", "replace"))


def serve(stdin=None, stdout=None) -> int:
    """The speaker process: answer each request line until standard input closes."""
    stdin, stdout = stdin or sys.stdin.buffer, stdout or sys.stdout.buffer

    def answer(head: dict, body: bytes = b"") -> None:
        stdout.write(json.dumps(head).encode() + b"\n" + body)
        stdout.flush()
    try:
        library = load()
    except SpeakerError as exc:
        answer({"error": str(exc), "kind": exc.kind})
        return 1
    answer({"ready": True, "rate": library.rate, "version": library.version})
    for line in stdin:
        try:
            ask = json.loads(line)
            pcm = library.speak(str(ask["text"]), str(ask["voice"]), int(ask["wpm"]), int(ask["pitch"]),
                                float(ask["timeout_s"]))
        except SpeakerError as exc:
            answer({"error": str(exc), "kind": exc.kind})
        except (ValueError, KeyError, TypeError) as exc:
            answer({"error": f"a request the speaker cannot read ({type(exc).__name__}: {exc})", "kind": "failed"})
        else:
            answer({"bytes": len(pcm), "rate": library.rate}, pcm)
    return 0


# --- in the host -------------------------------------------------------------------------------------

class Speaker:
    """One speaker process and the host's ends of its pipes; used by one thread at a time."""

    def __init__(self, deadline: float | None = None):
        """Start one and wait (until ``deadline``, at most ``START_TIMEOUT_S``) for it to say it is
        ready; SpeakerError("unavailable") saying why it is not."""
        from .cores import every_core
        deadline = min(deadline or float("inf"), time.monotonic() + START_TIMEOUT_S)
        self.proc = None
        self._buffer = b""
        try:
            with every_core():  # it computes: every core, even when the host's own threads keep to one
                self.proc = subprocess.Popen([sys.executable, "-m", "host.espeak"], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            ready = self._line(deadline)
            if "error" in ready:
                raise SpeakerError(str(ready["error"]), "unavailable")
            self.rate, self.version = int(ready["rate"]), str(ready.get("version", ""))
        except SpeakerError as exc:
            self.close()
            if exc.kind == "unavailable":
                raise
            raise SpeakerError(f"the espeak-ng speaker did not start ({exc})", "unavailable") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:  # no interpreter, an answer that is not its own
            self.close()
            raise SpeakerError(f"the espeak-ng speaker did not start ({type(exc).__name__}: {exc})",
                               "unavailable") from None

    def _fill(self, deadline: float) -> None:
        """More of the speaker's output into the buffer; SpeakerError at the deadline or its end."""
        fd = self.proc.stdout.fileno()
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise SpeakerError("the espeak-ng speaker gave no answer in time", "timeout")
        chunk = os.read(fd, 1 << 17)
        if not chunk:
            try:
                code = self.proc.wait(1.0)
            except subprocess.TimeoutExpired:
                code = "unknown: it closed its output"
            raise SpeakerError(f"the espeak-ng speaker process ended (exit code {code})", "failed")
        self._buffer += chunk

    def _line(self, deadline: float) -> dict:
        while b"\n" not in self._buffer:
            self._fill(deadline)
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def _read(self, n: int, deadline: float) -> bytes:
        while len(self._buffer) < n:
            self._fill(deadline)
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def speak(self, text: str, voice: str, wpm: int, pitch: int, timeout_s: float) -> bytes:
        """``text`` spoken: 16-bit mono samples at ``self.rate``. SpeakerError on failure; a
        speaker that hangs, ends or garbles its answer is closed (the next sentence starts another)."""
        limit = time.monotonic() + timeout_s + 1.0  # the speaker cuts itself off at timeout_s: a second to say so
        ask = {"text": text, "voice": voice, "wpm": wpm, "pitch": pitch, "timeout_s": timeout_s}
        try:
            self.proc.stdin.write(json.dumps(ask).encode() + b"\n")
            self.proc.stdin.flush()
            head = self._line(limit)
            pcm = self._read(int(head["bytes"]), limit) if "error" not in head else b""
        except SpeakerError:
            self.close()
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.close()
            raise SpeakerError(f"the espeak-ng speaker process failed ({type(exc).__name__}: {exc})", "failed") from None
        if "error" in head:  # it said why: it is still fine for the next sentence
            raise SpeakerError(str(head["error"]), str(head.get("kind", "failed")))
        return pcm

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and not self.proc.stdin.closed

    def close(self) -> None:
        if self.proc is None:
            return
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):  # a broken pipe: the process is killed below all the same
                pipe.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Speakers:
    """Up to ``size`` speakers, started as sentences overlap and reused; thread-safe. One call's
    whole wait (for a free speaker, for one to start, for its answer) keeps to its ``timeout_s``."""

    POLL_S = 0.05
    """how often a sentence waiting for a busy speaker looks again (one may have died meanwhile)"""

    def __init__(self, size: int):
        self.size = size
        self._idle: queue.LifoQueue[Speaker] = queue.LifoQueue()
        self._all: list[Speaker | None] = []
        """every speaker, and None in the place of one starting"""
        self._lock = threading.Lock()
        self._closed = False
        self._finalizer = weakref.finalize(self, _close_all, self._all)
        first = Speaker()  # raises SpeakerError("unavailable") where the library cannot load
        self.rate, self.version = first.rate, first.version
        self._all.append(first)
        self._idle.put(first)

    def speak(self, text: str, voice: str, wpm: int, pitch: int, timeout_s: float) -> bytes:
        deadline = time.monotonic() + timeout_s
        speaker = self._take(deadline, timeout_s)
        try:
            return speaker.speak(text, voice, wpm, pitch, max(0.05, deadline - time.monotonic()))
        except SpeakerError as exc:
            if str(exc).startswith("espeak-ng took longer"):  # what the stage allows, not what was left of it
                raise SpeakerError(f"espeak-ng took longer than {timeout_s:g} s", "timeout") from None
            raise
        finally:
            if speaker.alive and not self._closed:
                self._idle.put(speaker)
            else:
                self._drop(speaker)

    def _take(self, deadline: float, timeout_s: float) -> Speaker:
        """An idle speaker that is alive, a new one while there are fewer than ``size``, else the
        next to come free; one that died while idle is let go (no sentence is given to it)."""
        while True:
            if self._closed:
                raise SpeakerError("the host is stopping: its espeak-ng speakers are closed", "failed")
            try:
                speaker = self._idle.get_nowait()
            except queue.Empty:
                speaker = None
            if speaker is not None:
                if speaker.alive:
                    return speaker
                log.warning("an espeak-ng speaker process ended while idle (exit code %s); another starts",
                            speaker.proc.poll())
                self._drop(speaker)
                continue
            with self._lock:
                start = len(self._all) < self.size
                if start:
                    self._all.append(None)  # its place, held while it starts
            if start:
                try:
                    speaker = Speaker(deadline)
                except BaseException:
                    with self._lock:
                        self._all.remove(None)
                    raise
                with self._lock:
                    self._all[self._all.index(None)] = speaker
                return speaker
            left = deadline - time.monotonic()
            if left <= 0:
                raise SpeakerError(f"no espeak-ng speaker was free within {timeout_s:g} s", "timeout")
            try:
                speaker = self._idle.get(timeout=min(self.POLL_S, left))
            except queue.Empty:
                continue
            self._idle.put(speaker)  # looked at (alive or not) at the top of the loop

    def _drop(self, speaker: Speaker) -> None:
        speaker.close()
        with self._lock:
            if speaker in self._all:
                self._all.remove(speaker)

    def pids(self) -> list[int]:
        with self._lock:
            return [s.proc.pid for s in self._all if s is not None]

    def close(self) -> None:
        self._closed = True
        self._finalizer()


def _close_all(speakers: list) -> None:
    for speaker in list(speakers):
        if speaker is not None:
            speaker.close()
    speakers.clear()


_shared: "Speakers | None | bool" = False
_shared_lock = threading.Lock()


def speakers() -> Speakers | None:
    """This process's speakers, the first started now; None where libespeak-ng cannot load here
    (then the espeak-ng program is run for each sentence; the reason is logged once)."""
    global _shared
    with _shared_lock:
        if _shared is False:
            from .pool import cores
            # at least two: the fallback voice shares them, and must speak while one hangs
            size = max(2, min(SPEAKERS_MAX, cores()))
            try:
                _shared = Speakers(size)
            except SpeakerError as exc:
                log.warning("%s; espeak-ng runs as a program for each sentence", exc)
                _shared = None
        return _shared


if __name__ == "__main__":
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the host's: it stops, and the speakers' input closes
    sys.exit(serve())
