"""espeak-ng's own library (libespeak-ng, the Debian package libespeak-ng1 that espeak-ng itself
runs on), called in this process instead of starting the espeak-ng program for every sentence.

Starting the program costs more than speaking: it loads its phoneme tables and dictionary each
time, 10-20 ms here before the first sample, while the library, loaded once, speaks a sentence
in ~4 ms. The first sentence a loaded library speaks is the program's, sample for sample; later
ones differ in the last bits (the voice's flutter and noise run on from one sentence to the next),
not in words, pauses or length beyond a few milliseconds.

The library keeps one voice and one sentence in progress for the whole process, so calls take
turns (``_LOCK``); the host's engine worker processes (host.pool) each hold their own copy, so
several skulls are spoken for on several cores. A binding of five functions is written here
rather than taken from a package: the Python packages that speak through libespeak-ng either
start the program (espeakng, py-espeak-ng) or bind it inside a larger speech framework
(pyttsx3's private driver module).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time

import numpy as np

log = logging.getLogger("host.espeak")

_SYNCHRONOUS = 2
"""AUDIO_OUTPUT_SYNCHRONOUS: the samples come to the callback on the calling thread"""
_DONT_EXIT = 0x8000
"""espeakINITIALIZE_DONT_EXIT: a missing data directory is an error code, not the process's end"""
_RATE, _PITCH = 1, 3
"""espeakRATE (words per minute), espeakPITCH (0..99)"""
_POS_CHARACTER = 1
_FLAGS = 0x0000 | 0x0100 | 0x1000
"""espeakCHARS_AUTO | espeakPHONEMES | espeakENDPAUSE: what the espeak-ng program passes"""



class _Voice(ctypes.Structure):
    """espeak_VOICE: what a voice is asked for by (the language, "en-gb+m3", where no voice has that name)"""
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_LOCK = threading.Lock()
_loaded: "Library | None | bool" = False
"""the library once loaded, None when it cannot be, False before the first try"""


class Library:
    """libespeak-ng, initialised once in this process."""

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
        """Load ``voice`` now (~5 ms, else paid by the next sentence); ValueError when there is none."""
        with _LOCK:
            self._use(voice, wpm, pitch)

    def _use(self, voice: str, wpm: int, pitch: int) -> None:
        if self._settings != (voice, wpm, pitch):
            self._settings = None
            name = voice.encode("utf-8")
            # as the program does: a voice's name or file first, else a language
            if (self.lib.espeak_SetVoiceByName(name) != 0
                    and self.lib.espeak_SetVoiceByProperties(ctypes.byref(_Voice(languages=name))) != 0):
                raise ValueError(f"espeak-ng has no voice {voice!r}")
            self.lib.espeak_SetParameter(_RATE, wpm, 0)
            self.lib.espeak_SetParameter(_PITCH, pitch, 0)
            self._settings = (voice, wpm, pitch)

    def speak(self, text: str, voice: str, wpm: int, pitch: int, timeout_s: float) -> np.ndarray:
        """``text`` spoken as mono float samples at ``self.rate``. Raises ValueError when the
        library does not know ``voice``, TimeoutError when speaking outlasts ``timeout_s``."""
        data = text.encode("utf-8") + b"\0"
        with _LOCK:
            self._use(voice, wpm, pitch)
            self._chunks, self._cut = [], False
            self._deadline = time.monotonic() + timeout_s
            try:
                code = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _FLAGS, None, None)
                pcm = b"".join(self._chunks)
            finally:
                self._chunks = []
            if self._cut:
                self.lib.espeak_Cancel()  # the library's own end of a synthesis cut short
                raise TimeoutError(f"espeak-ng took longer than {timeout_s:g} s")
            if code != 0:
                raise RuntimeError(f"libespeak-ng could not speak (error {code})")
        return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0


def library() -> Library | None:
    """This process's libespeak-ng, loaded and initialised on the first call; None when it is not
    installed or does not start (then the espeak-ng program is run instead; the reason is logged)."""
    global _loaded
    with _LOCK:
        if _loaded is False:
            _loaded = _load()
        return _loaded


def _load() -> Library | None:
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
        log.info("libespeak-ng cannot be loaded (%s); espeak-ng runs as a program for each sentence", exc)
        return None
    rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, None, _DONT_EXIT)
    if rate <= 0:
        log.warning("libespeak-ng did not start (error %d: is espeak-ng-data installed?); espeak-ng runs as a "
                    "program for each sentence", rate)
        return None
    version = (lib.espeak_Info(None) or b"").decode("ascii", "replace")
    return Library(lib, rate, version)
