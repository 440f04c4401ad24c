"""Listening while the visitor talks: voice activity on the question as it arrives, and each
finished stretch of speech transcribed at once, so after the release only the tail since the
last pause is left to hear.

A :class:`Listener` belongs to one turn. The event loop hands it the microphone chunks
(:meth:`Listener.feed`, cheap); the host's one listening thread resamples them to 16 kHz and
runs the voice activity model (:mod:`skull.core.vad`) on every question's windows together (on
onnxruntime one run for all: ~25 ms of CPU per second of one question alone, ~3 ms each for 64;
on ggml ~70 ms each, one by one), and tells the loop when speech starts and ends. The turn
transcribes each ended segment with whatever speech-to-text backend it has (one request per
segment for a server; the embedded engines in-process), in order. At the release, :meth:`Listener.finish` drains what is still queued and returns the
segments: those already transcribed and the tail still open.

Silence around the speech is never transcribed. When the model finds no speech at all (a
whisper, a mic far away), the whole recording is, as before: a missed word is worse than a
wasted second.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from skull.core import vad
from skull.core.wav import pcm16_to_audio

log = logging.getLogger("host.listen")

RATE = vad.RATE


_models: list = []
"""voice activity models not in use, kept for the next question (on ggml loading one costs
~2.5 MB and a file read; on onnxruntime one is a stream's state on the shared session; a crowd
of questions reuses them)"""
_busy = 0
"""questions being listened to now, in this process"""
_lock = threading.Lock()


def take_model(most: int):
    """A voice activity model for one more question, or None when ``most`` questions are
    listened to already: each costs the host ~25 ms of CPU per second of audio on onnxruntime
    alone, ~3 ms in a crowd of 64 (~70 ms holding Python's GIL on ggml), so past some number at
    once the host's CPU, not the model servers, would make every skull wait. Given back by the
    Listener when its question ends."""
    global _busy
    with _lock:
        if _busy >= most:
            return None
        _busy += 1
        if _models:
            return _models.pop()
    try:
        return vad.SpeechProbability()
    except BaseException:
        _give_back(None)
        raise


def _give_back(model) -> None:
    global _busy
    with _lock:
        _busy -= 1
        if model is not None:
            model.reset()
            _models.append(model)


def let_go(keep: int = 1) -> int:
    """Keep at most ``keep`` spare models (a crowd's are let go when it is over); how many went."""
    with _lock:
        gone = _models[keep:]
        del _models[keep:]
    return len(gone)


def listening() -> int:
    """Questions listened to with voice activity now."""
    return _busy


@dataclass(frozen=True)
class ListenSettings:
    pause_s: float = 0.4
    """silence that ends a stretch of speech (splits the question there)"""
    threshold: float = 0.5
    """probability of speech that counts as speech"""
    min_speech_s: float = 0.15
    """speech shorter than this does not start a segment (a click, a cough)"""


class Listener:
    """Voice activity for one turn's question; see the module docstring.

    ``on_segment(segment, samples)`` is called on the event loop for every segment that ends
    while the recording goes on, with its 16 kHz audio; ``on_speech(segment)`` when one starts.
    Both run on the loop and must return quickly.
    """

    def __init__(self, settings: ListenSettings, loop: asyncio.AbstractEventLoop,
                 on_segment: Callable[[vad.Segment, np.ndarray], None],
                 on_speech: Callable[[vad.Segment], None] | None = None, model=None):
        """``model``: from :func:`take_model`, given back when the question ends (None: a new one
        of this listener's own)."""
        self.loop = loop
        self._model = model
        self.on_segment, self.on_speech = on_segment, on_speech
        self.segmenter = vad.Segmenter(threshold=settings.threshold, min_speech_s=settings.min_speech_s,
                                       min_silence_s=settings.pause_s, keep=True, probability=model)
        self.ended: list[vad.Segment] = []
        """segments that ended, in order (the listening thread's until finish() returns)"""
        self.error: Exception | None = None
        self._done = loop.create_future()
        """set when every queued chunk is decided (awaited without holding a thread)"""
        self._closed = False
        """the listening thread has had the question's end (finish or stop)"""
        _hub().listen(self)

    def feed(self, chunk: bytes, rate: int, channels: int) -> None:
        """A microphone chunk of 16-bit PCM (on the event loop: only queued here)."""
        _hub().queue.put((self, (bytes(chunk), rate, channels)))

    # --- on the listening thread -----------------------------------------------------------------

    def _add(self, item) -> None:
        chunk, rate, channels = item
        try:
            self.segmenter.add(pcm16_to_audio(chunk, rate, channels).samples, rate)
        except Exception as exc:
            self._failed(exc)

    def _decided(self, p: float, tell: "_Tell") -> None:
        try:
            for seg in self.segmenter.decide(p):
                if seg.end is None:
                    if self.on_speech is not None:
                        tell.add(self.loop, self.on_speech, seg)
                else:
                    self.ended.append(seg)
                    audio = self.segmenter.audio(seg.start, seg.end).copy()
                    tell.add(self.loop, self.on_segment, seg, audio)
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:  # the turn then hears the whole recording
        if self.error is None:
            log.error("voice activity failed (%s: %s); the whole question is transcribed", type(exc).__name__, exc)
        self.error = exc

    def _close(self, tell: "_Tell") -> None:
        self._closed = True
        try:
            if self._model is not None:
                model, self._model = self._model, None
                _give_back(model)
        finally:  # whoever awaits finish() is told, whatever happened to the model
            tell.add(self.loop, self._finished)

    def _finished(self) -> None:
        if not self._done.done():
            self._done.set_result(None)

    # ---------------------------------------------------------------------------------------------

    async def finish(self) -> list[vad.Segment]:
        """After the release: every queued chunk decided, the open segment closed where the
        audio ends. Returns all segments in order (the last may be the tail)."""
        _hub().queue.put((self, None))
        await asyncio.shield(self._done)  # no thread waits for the listening thread: with a crowd they would queue
        if self.error is not None:
            return []
        tail = self.segmenter.close()
        return self.ended + ([tail] if tail is not None else [])

    def samples(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """The question at 16 kHz mono, positions as the segments count them (after finish())."""
        return self.segmenter.audio(start, end)

    def stop(self) -> None:
        """Abandon: the listening thread lets go of it after what is queued."""
        _hub().queue.put((self, None))


class _Tell:
    """What one round of the listening thread has to tell the event loop(s): handed over in one
    call per loop at the end of the round. With a call per stretch, a crowd's 64 stretches that
    end in the same round each woke the loop, whose transcription requests then took Python's
    lock from the listening thread in the middle of its round (a round of 30 ms of CPU took
    120 ms). Handed over together, the crowd's p95 stretch reached the loop 226-237 ms before
    its release against 206-234 ms one by one (one skull alone: 300; bench/scale.py, 64 skulls,
    three runs each)."""

    def __init__(self):
        self.calls: dict = {}

    def add(self, loop: asyncio.AbstractEventLoop, fn, *args) -> None:
        self.calls.setdefault(loop, []).append((fn, args))

    def send(self) -> None:
        calls, self.calls = self.calls, {}
        for loop, todo in calls.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_run_all, todo)


def _run_all(todo: list) -> None:
    """On the event loop: a round's calls in the order they were decided; one that fails is
    logged and the rest still run (each is one question's)."""
    for fn, args in todo:
        try:
            fn(*args)
        except Exception:
            log.exception("listening: a question's callback failed")


class _Hub:
    """The host's one listening thread: every question's chunks in the order they came, and
    each round of 32 ms windows, one from every question that has one, decided together in one
    run of the model (skull.core.vad.probabilities: on onnxruntime 64 questions' windows cost
    a third of what they cost one by one, and one thread never competes with itself). What a
    round decided reaches the event loop at its end (:class:`_Tell`)."""

    def __init__(self):
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="listen", daemon=True)
        self.thread.start()

    def listen(self, listener: Listener) -> None:
        if not self.thread.is_alive():  # it never ends by itself; a fault in it must not deafen the host
            self.thread = threading.Thread(target=self._run, name="listen", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        while True:
            items = [self.queue.get()]
            while True:  # everything queued meanwhile, decided together
                try:
                    items.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            tell = _Tell()
            try:
                self._round(items, tell)
            except Exception as exc:  # a fault here fails these questions, not the thread
                log.error("voice activity failed (%s: %s)", type(exc).__name__, exc)
                for listener, _ in items:
                    if not listener._closed:
                        listener._failed(exc)
                        with contextlib.suppress(Exception):
                            listener._close(tell)
            finally:
                tell.send()

    @staticmethod
    def _round(items, tell: _Tell) -> None:
        active, ending = [], []
        for listener, item in items:
            if listener._closed:
                continue
            if item is None:
                if listener not in ending:
                    ending.append(listener)
            elif listener.error is None:
                listener._add(item)
                if listener not in active:
                    active.append(listener)
        while True:
            ready = [(ls, w) for ls in active if ls.error is None and (w := ls.segmenter.window()) is not None]
            if not ready:
                break
            ps = vad.probabilities([ls.segmenter.prob for ls, _ in ready], [w for _, w in ready])
            for (listener, _), p in zip(ready, ps):
                listener._decided(p, tell)
        for listener in ending:
            listener._close(tell)


_the_hub: _Hub | None = None
_hub_lock = threading.Lock()


def _hub() -> _Hub:
    global _the_hub
    with _hub_lock:
        if _the_hub is None:
            _the_hub = _Hub()
        return _the_hub
