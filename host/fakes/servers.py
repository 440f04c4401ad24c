"""Fakes of the model servers, each following its documented HTTP contract, quirks included
(docs/model-servers.md lists them). They hear no speech, see no picture and know no words:
speech to text returns a configured transcript, language models stream a configured or
templated reply token by token, and voices return speech-like audio. Timing and failures come
from the knobs in ``core.Knobs``.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
import struct
import time
import uuid

from skull.core.wav import read_wav, wav_bytes
from skull.core.errors import AudioFormatError

from .core import Crash, FakeServer, Handler, Knobs
from .speech import speechlike, speechlike_pcm16

DEFAULT_TRANSCRIPT = "what do you think of my costume"
DEFAULT_REPLY = ("Ooh, spooky! You asked me: {heard}. I would think harder, but my brain "
                 "left with the worms years ago.")
_TOKEN = re.compile(r"\s*[\w']+|\s*[^\w\s]+")


def tokens(text: str) -> list[str]:
    """How the fake language models cut text into tokens: words and runs of punctuation,
    each with its leading space."""
    return _TOKEN.findall(text)


def _heard(text: str) -> str:
    m = re.search(r'"([^"]+)"', text)
    return (m.group(1) if m else text).strip()[:80] or "nothing at all"


class _ReplyMixin:
    reply: str | None

    def compose(self, messages: list) -> str:
        last = ""
        for m in messages:
            if not isinstance(m, dict) or m.get("role") != "user":
                continue
            content = m.get("content")
            if isinstance(content, list):
                content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
            if isinstance(content, str):
                last = content
        return (self.reply if self.reply is not None else DEFAULT_REPLY).replace("{heard}", _heard(last))


# --- whisper.cpp -----------------------------------------------------------------------------

class WhisperCppFake(FakeServer):
    """``whisper-server``: POST /inference (multipart), GET /health. Current error behaviour by
    default (400 ``Invalid request``); ``legacy_errors=True`` gives the pre-2026 servers' HTTP 200
    with an ``{"error": ...}`` body."""

    kind = "whisper.cpp"

    def __init__(self, knobs: Knobs | None = None, transcript: str = DEFAULT_TRANSCRIPT,
                 legacy_errors: bool = False, **kw):
        super().__init__(knobs, **kw)
        self.transcript, self.legacy_errors = transcript, legacy_errors

    def _bad(self, h: Handler, legacy_message: str):
        if self.legacy_errors:
            h.send_json(200, {"error": legacy_message})
        else:
            h.send(400, "Invalid request", "text/plain")

    def handle(self, h: Handler):
        if h.route == "/health" and h.command == "GET":
            return h.send_json(200, {"status": "ok"})
        if h.route != "/inference" or h.command != "POST":
            return h.send(404, f"File Not Found ({h.route})", "text/plain")
        parts = h.multipart()
        if "file" not in parts:
            return self._bad(h, "no 'file' field in the request")
        try:
            audio = read_wav(parts["file"][0])
        except AudioFormatError:
            return self._bad(h, "failed to read audio data")
        for name in ("temperature", "temperature_inc"):
            if name in parts:
                try:
                    float(parts[name][0])
                except ValueError:
                    return h.send(500, "500 Internal Server Error\nstof", "text/plain")
        outcome = self.roll()
        self.work(audio.seconds, h.t0)
        if outcome == "crash":
            raise Crash
        if outcome == "fail":
            return h.send_json(500, {"error": "failed to process audio"})
        fmt = parts.get("response_format", (b"json",))[0].decode()
        text = f" {self.transcript}\n"
        if fmt == "text":
            return h.send(200, text, "text/html; charset=utf-8")
        if fmt == "verbose_json":
            return h.send_json(200, {"task": "transcribe", "language": "english", "duration": audio.seconds,
                                     "text": text, "segments": [{"id": 0, "text": text, "start": 0.0,
                                                                 "end": round(audio.seconds, 2)}]})
        return h.send_json(200, {"text": text})


# --- OpenAI-compatible audio: speaches (speech to text and voices) and Kokoro-FastAPI --------

KOKORO_VOICES = ("af_heart", "af_bella", "af_sky", "am_adam", "am_michael", "bm_george", "bf_emma")
OPENAI_VOICE_MAP = {"alloy": "am_adam", "echo": "af_bella", "onyx": "bm_george", "nova": "bf_isabella",
                    "shimmer": "af_sky", "fable": "af_sarah", "coral": "bf_emma", "ash": "af_nicole",
                    "sage": "am_michael"}


class OpenAIAudioFake(FakeServer):
    """``flavor='kokoro'``: Kokoro-FastAPI (/v1/audio/speech only, 24 kHz, ``stream`` defaults to
    true and then WAV headers carry unpatched zero sizes). ``flavor='speaches'``: speaches, with
    /v1/audio/transcriptions too; models must be installed (404 otherwise), ``model`` and
    ``voice`` are required, PCM is at the voice's native rate or ``sample_rate``.
    ``unit`` chooses what ``per_unit_s`` counts for voices: 'audio_s' or 'char'."""

    def __init__(self, knobs: Knobs | None = None, flavor: str = "kokoro", transcript: str = DEFAULT_TRANSCRIPT,
                 models: tuple = ("Systran/faster-whisper-small", "speaches-ai/Kokoro-82M-v1.0-ONNX"),
                 voices: tuple = KOKORO_VOICES, rate: int = 24000, unit: str = "audio_s", **kw):
        super().__init__(knobs, **kw)
        if flavor not in ("kokoro", "speaches"):
            raise ValueError(f"flavor must be 'kokoro' or 'speaches', not {flavor!r}")
        self.flavor, self.kind = flavor, flavor
        self.transcript, self.models, self.voices, self.rate, self.unit = transcript, models, voices, rate, unit

    def _detail(self, h: Handler, status: int, error: str, message: str, type_: str = "invalid_request_error"):
        if self.flavor == "kokoro":
            h.send_json(status, {"detail": {"error": error, "message": message, "type": type_}})
        else:
            h.send_json(status, {"detail": message})

    def handle(self, h: Handler):
        if h.route == "/health":
            return h.send_json(200, {"status": "healthy"} if self.flavor == "kokoro" else {"message": "OK"})
        if h.route == "/v1/models" and h.command == "GET":
            return h.send_json(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in
                                                                 (("kokoro", "tts-1") if self.flavor == "kokoro"
                                                                  else self.models)]})
        if h.route == "/v1/audio/voices":
            return h.send_json(200, {"voices": list(self.voices)})
        if h.route == "/v1/audio/speech" and h.command == "POST":
            return self._speech(h)
        if h.route == "/v1/audio/transcriptions" and h.command == "POST" and self.flavor == "speaches":
            return self._transcribe(h)
        return h.send_json(404, {"detail": "Not Found"})

    def _model_ok(self, h: Handler, model: str, kind: str) -> bool:
        if self.flavor == "kokoro":
            if model not in ("tts-1", "tts-1-hd", "kokoro", "gpt-4o-mini-tts"):
                self._detail(h, 400, "invalid_model", f"Unsupported model: {model}")
                return False
            return True
        alias = {"whisper-1": "Systran/faster-whisper-small", "tts-1": "speaches-ai/Kokoro-82M-v1.0-ONNX",
                 "tts-1-hd": "speaches-ai/Kokoro-82M-v1.0-ONNX"}.get(model, model)
        if alias not in self.models:
            h.send_json(404, {"detail": f"Model '{model}' is not installed locally. You can download the model "
                                        f"using `POST /v1/models`"})
            return False
        return True

    def _transcribe(self, h: Handler):
        parts = h.multipart()
        missing = [n for n in ("file", "model") if n not in parts]
        if missing:
            return h.send_json(422, {"detail": [{"type": "missing", "loc": ["body", n], "msg": "Field required",
                                                 "input": None} for n in missing]})
        model = parts["model"][0].decode()
        if not self._model_ok(h, model, "stt"):
            return
        data, _, ctype = parts["file"]
        if not data:
            return h.send_json(400, {"detail": "The uploaded file is empty."})
        if ctype in ("audio/pcm", "audio/raw"):
            seconds = len(data) / 2 / 16000
        else:
            try:
                seconds = read_wav(data).seconds
            except AudioFormatError:
                return h.send_json(415, {"detail": "Failed to decode audio. The provided file type is not supported."})
        outcome = self.roll()
        self.work(seconds, h.t0)
        if outcome == "crash":
            raise Crash
        if outcome == "fail":
            return h.send_json(500, {"detail": "Internal Server Error"})
        fmt = parts.get("response_format", (b"json",))[0].decode()
        if fmt == "text":
            return h.send(200, self.transcript, "text/plain; charset=utf-8")
        return h.send_json(200, {"text": self.transcript, "logprobs": None, "usage": None})

    def _speech(self, h: Handler):
        body = h.json_body()
        if not isinstance(body, dict):
            return h.send_json(422, {"detail": [{"type": "json_invalid", "loc": ["body"], "msg": "JSON decode error"}]})
        required = ("input",) if self.flavor == "kokoro" else ("input", "model", "voice")
        missing = [n for n in required if n not in body]
        if missing:
            return h.send_json(422, {"detail": [{"type": "missing", "loc": ["body", n], "msg": "Field required"}
                                                for n in missing]})
        model = body.get("model", "kokoro")
        if not self._model_ok(h, model, "tts"):
            return
        voice = body.get("voice", "af_heart")
        voice = OPENAI_VOICE_MAP.get(voice, voice) if self.flavor == "kokoro" else voice
        if voice.split("+")[0].split("(")[0] not in self.voices and voice not in OPENAI_VOICE_MAP.values():
            return self._detail(h, 400, "validation_error",
                                f"Voice '{voice}' not found. Available voices: {', '.join(self.voices)}")
        speed = body.get("speed", 1.0)
        lo, hi = (0.25, 4.0) if self.flavor == "kokoro" else (0.5, 2.0)
        if not isinstance(speed, (int, float)) or not lo <= speed <= hi:
            return h.send_json(422, {"detail": [{"type": "less_than_equal", "loc": ["body", "speed"],
                                                 "msg": f"Input should be between {lo} and {hi}"}]})
        fmt = body.get("response_format", "mp3")
        if fmt not in ("pcm", "wav"):
            return self._detail(h, 400, "validation_error", f"this fake makes pcm and wav only, not {fmt!r}")
        text = str(body["input"]).strip()
        if not text:
            return self._detail(h, 400, "validation_error", "Text is empty after preprocessing")
        rate = int(body.get("sample_rate") or self.rate) if self.flavor == "speaches" else self.rate
        pcm = speechlike_pcm16(text, rate, speed)
        outcome = self.roll()
        self.work(len(text) if self.unit == "char" else len(pcm) / 2 / rate, h.t0)
        stream = body.get("stream", True) if self.flavor == "kokoro" else True
        if fmt == "wav":
            data = _wav_header(rate, 0 if stream else len(pcm)) + pcm
            ctype = "audio/wav"
        else:
            data, ctype = pcm, "audio/pcm"
        if outcome == "fail":
            return self._detail(h, 500, "processing_error", "Error during speech generation", "server_error")
        headers = {"Content-Disposition": f"attachment; filename=speech.{fmt}", "X-Accel-Buffering": "no"}
        if not stream:
            if outcome == "crash":
                h.send_partial(200, data, ctype)
            return h.send(200, data, ctype, headers)
        h.start_stream(ctype, headers)
        step = max(1, len(data) // 4)
        for i in range(0, len(data), step):
            if outcome == "crash" and i >= step:
                raise Crash
            h.chunk(data[i:i + step])
        h.end_stream()


def _wav_header(rate: int, data_size: int, bits: int = 16, tag: int = 1) -> bytes:
    """A 44-byte mono WAV header; a streaming writer that never seeks back leaves sizes at 0."""
    block = bits // 8
    riff = 36 + data_size if data_size else 0
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE" +
            b"fmt " + struct.pack("<IHHIIHH", 16, tag, 1, rate, rate * block, block, bits) +
            b"data" + struct.pack("<I", data_size))


# --- llama.cpp llama-server ---------------------------------------------------------------------

class LlamaCppFake(FakeServer, _ReplyMixin):
    """``llama-server``: 503 ``Loading model`` on every route while loading, /health,
    /v1/models (``capabilities`` has ``multimodal`` only with an mmproj), /props, and
    /v1/chat/completions with SSE streaming (role chunk, content chunks, finish chunk,
    ``[DONE]``; an error after streaming began is a ``data: {"error":...}`` event and no
    ``[DONE]``). Images without ``mmproj`` get the 500 ``image input is not supported``."""

    kind = "llama.cpp"

    def __init__(self, knobs: Knobs | None = None, reply: str | None = None, mmproj: bool = True,
                 model: str = "fake-vision-model.gguf", **kw):
        super().__init__(knobs, **kw)
        self.reply, self.mmproj, self.model = reply, mmproj, model

    @staticmethod
    def _error(h: Handler, code: int, message: str, type_: str):
        h.send_json(code, {"error": {"code": code, "message": message, "type": type_}},
                    "application/json; charset=utf-8")

    def handle(self, h: Handler):
        if self.loading:
            return self._error(h, 503, "Loading model", "unavailable_error")
        if h.route in ("/health", "/v1/health"):
            return h.send_json(200, {"status": "ok"})
        if h.route in ("/models", "/v1/models"):
            caps = ["completion"] + (["multimodal"] if self.mmproj else [])
            return h.send_json(200, {"models": [{"name": self.model, "model": self.model, "type": "model",
                                                 "capabilities": caps}], "object": "list",
                                     "data": [{"id": self.model, "object": "model", "created": int(time.time()),
                                               "owned_by": "llamacpp"}]})
        if h.route == "/props":
            return h.send_json(200, {"model_alias": self.model,
                                     "modalities": {"vision": self.mmproj, "video": False, "audio": False}})
        if h.route in ("/v1/chat/completions", "/chat/completions") and h.command == "POST":
            return self._chat(h)
        return self._error(h, 404, "File Not Found", "not_found_error")

    def _chat(self, h: Handler):
        body = h.json_body()
        if not isinstance(body, dict):
            return self._error(h, 500, "[json.exception.parse_error.101] parse error: syntax error", "server_error")
        messages = body.get("messages")
        if not isinstance(messages, list):
            return self._error(h, 400, "'messages' is required and must be an array", "invalid_request_error")
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if content is None and (not isinstance(m, dict) or m.get("role") != "assistant"):
                return self._error(h, 400, "'content' is required", "invalid_request_error")
            for part in content if isinstance(content, list) else []:
                ptype = part.get("type") if isinstance(part, dict) else None
                if ptype == "text":
                    continue
                if ptype not in ("image_url", "input_audio"):
                    return self._error(h, 400, "unsupported content[].type", "invalid_request_error")
                kind = "image" if ptype == "image_url" else "audio"
                if kind == "audio" or not self.mmproj:
                    return self._error(h, 500, f"{kind} input is not supported - hint: if this is unexpected, "
                                               f"you may need to provide the mmproj", "server_error")
                problem = _data_uri_problem((part.get("image_url") or {}).get("url", ""))
                if problem:
                    return self._error(h, 400 if problem.startswith("Invalid url") else 500, problem,
                                       "invalid_request_error" if problem.startswith("Invalid url") else "server_error")
        text = self.compose(messages)
        toks = tokens(text)
        limit = body.get("n_predict") or body.get("max_completion_tokens") or body.get("max_tokens")
        finish = "stop"
        if isinstance(limit, int) and 0 < limit < len(toks):
            toks, finish = toks[:limit], "length"
        outcome = self.roll()
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        base = {"created": int(time.time()), "id": cid, "model": self.model, "system_fingerprint": "b0-fake",
                "object": "chat.completion.chunk"}
        if not body.get("stream"):
            self.wait_until(h.t0 + self.first_wait() + sum(self.scaled(self.knobs.per_unit_s) for _ in toks[1:]))
            if outcome == "fail":
                return self._error(h, 500, "the model failed to decode", "server_error")
            obj = {**base, "object": "chat.completion", "choices": [{"finish_reason": finish, "index": 0, "message": {
                "role": "assistant", "content": "".join(toks)}}], "usage": {"completion_tokens": len(toks),
                                                                            "prompt_tokens": 40, "total_tokens": 40 + len(toks)}}
            if outcome == "crash":
                h.send_partial(200, json.dumps(obj).encode(), "application/json; charset=utf-8")
            return h.send_json(200, obj, "application/json; charset=utf-8")
        due = h.t0 + self.first_wait()
        self.wait_until(due)  # headers wait for the first result, as the real server does
        if outcome == "fail" and self.rng.random() < 0.5:
            return self._error(h, 500, "the model failed to decode", "server_error")
        h.start_stream("text/event-stream", {"X-Accel-Buffering": "no"})

        def event(obj):
            h.chunk(f"data: {json.dumps(obj)}\n\n")

        event({**base, "choices": [{"finish_reason": None, "index": 0,
                                    "delta": {"role": "assistant", "content": None}}]})
        error = {"error": {"code": 500, "message": "the model failed to decode", "type": "server_error"}}
        if not self.stream_tokens(toks, due, outcome, lambda tok: event(
                {**base, "choices": [{"finish_reason": None, "index": 0, "delta": {"content": tok}}]}),
                lambda: event(error)):
            return h.end_stream()
        event({**base, "choices": [{"finish_reason": finish, "index": 0, "delta": {}}],
               "timings": {"predicted_n": len(toks)}})
        if (body.get("stream_options") or {}).get("include_usage"):
            event({**base, "choices": [], "usage": {"completion_tokens": len(toks), "prompt_tokens": 40,
                                                    "total_tokens": 40 + len(toks)}})
        h.chunk("data: [DONE]\n\n")
        h.end_stream()


def _data_uri_problem(url: str) -> str:
    """llama.cpp's checks of an image URL (``handle_media``): '' when it would load."""
    if not url.startswith("data:"):
        return "Failed to download image" if url.startswith("http") else f"Invalid url format: {url[:20]}"
    head, _, payload = url.partition(",")
    if not payload or "," in payload:
        return "Invalid url value"
    if not head.startswith("data:image/"):
        return f"Invalid url format: {head}"
    if not head.endswith("base64"):
        return "url must be base64 encoded"
    try:
        data = base64.b64decode(payload, validate=True)
    except binascii.Error:
        return "Failed to load image or audio file"
    if not (data.startswith(b"\xff\xd8") or data.startswith(b"\x89PNG")):
        return "Failed to load image or audio file"
    return ""


# --- Ollama ------------------------------------------------------------------------------------

class OllamaFake(FakeServer, _ReplyMixin):
    """Ollama's native API: GET / ``Ollama is running``, /api/version, /api/tags, /api/show
    (``capabilities``), /api/chat streaming NDJSON unless ``stream: false``. Images must be plain
    base64: a data URI gets 400 ``illegal base64 data at input byte N``. A text-only model given
    images answers anyway (it only sees ``[img-0]``), as local Ollama does: check capabilities."""

    kind = "ollama"

    def __init__(self, knobs: Knobs | None = None, reply: str | None = None,
                 models: dict | None = None, **kw):
        super().__init__(knobs, **kw)
        self.reply = reply
        self.models = models if models is not None else {"llava:7b": ["completion", "vision"],
                                                         "llama3.2:3b": ["completion", "tools"]}

    def handle(self, h: Handler):
        if h.route == "/" and h.command in ("GET", "HEAD"):
            return h.send(200, "Ollama is running", "text/plain; charset=utf-8")
        if h.route == "/api/version":
            return h.send_json(200, {"version": "0.12.0"})
        if h.route == "/api/tags":
            return h.send_json(200, {"models": [{"name": m, "model": m} for m in self.models]})
        if h.route == "/api/show" and h.command == "POST":
            body = h.json_body() or {}
            name = body.get("model") or body.get("name")
            if name not in self.models:
                return h.send_json(404, {"error": f"model '{name}' not found"})
            return h.send_json(200, {"capabilities": self.models[name], "details": {"family": "fake"}})
        if h.route == "/api/chat" and h.command == "POST":
            return self._chat(h)
        return h.send(404, "404 page not found", "text/plain")

    def _chat(self, h: Handler):
        if not h.body:
            return h.send_json(400, {"error": "missing request body"})
        body = h.json_body()
        if not isinstance(body, dict):
            return h.send_json(400, {"error": "invalid character in request body"})
        for m in body.get("messages") or []:
            for img in m.get("images") or [] if isinstance(m, dict) else []:
                bad = _base64_error(img)
                if bad is not None:
                    return h.send_json(400, {"error": f"illegal base64 data at input byte {bad}"})
        model = body.get("model")
        if not model:
            return h.send_json(400, {"error": "model is required"})
        if model not in self.models:
            return h.send_json(404, {"error": f"model '{model}' not found"})
        messages = body.get("messages") or []
        now = "2026-01-01T00:00:00Z"
        if not messages:
            return h.send_json(200, {"model": model, "created_at": now, "message": {"role": "assistant", "content": ""},
                                     "done": True, "done_reason": "load"})
        toks = tokens(self.compose(messages))
        limit = (body.get("options") or {}).get("num_predict")
        reason = "stop"
        if isinstance(limit, int) and 0 < limit < len(toks):
            toks, reason = toks[:limit], "length"
        outcome = self.roll()
        final = {"model": model, "created_at": now, "message": {"role": "assistant", "content": ""}, "done": True,
                 "done_reason": reason, "total_duration": 1, "load_duration": 0, "prompt_eval_count": 40,
                 "eval_count": len(toks), "eval_duration": 1}
        if body.get("stream") is False:
            self.wait_until(h.t0 + self.first_wait() + sum(self.scaled(self.knobs.per_unit_s) for _ in toks[1:]))
            if outcome == "fail":
                return h.send_json(500, {"error": "llama runner process has terminated: exit status 2"})
            obj = {**final, "message": {"role": "assistant", "content": "".join(toks)}}
            if outcome == "crash":
                h.send_partial(200, json.dumps(obj).encode(), "application/json; charset=utf-8")
            return h.send_json(200, obj, "application/json; charset=utf-8")
        due = h.t0 + self.first_wait()
        self.wait_until(due)
        if outcome == "fail" and self.rng.random() < 0.5:
            return h.send_json(500, {"error": "llama runner process has terminated: exit status 2"})
        h.start_stream("application/x-ndjson")
        error = json.dumps({"error": "llama runner process has terminated: exit status 2"}) + "\n"
        if not self.stream_tokens(toks, due, outcome, lambda tok: h.chunk(json.dumps(
                {"model": model, "created_at": now, "message": {"role": "assistant", "content": tok},
                 "done": False}) + "\n"), lambda: h.chunk(error)):
            return h.end_stream()
        h.chunk(json.dumps(final) + "\n")
        h.end_stream()


def _base64_error(s) -> int | None:
    """Go's encoding/base64 position of the first bad byte, or None when ``s`` decodes."""
    if not isinstance(s, str):
        return 0
    alphabet = re.compile(r"[A-Za-z0-9+/=]")
    for i, ch in enumerate(s):
        if not alphabet.match(ch):
            return i
    try:
        base64.b64decode(s, validate=True)
    except binascii.Error:
        return len(s) - len(s) % 4
    return None


# --- Piper -------------------------------------------------------------------------------------

class PiperFake(FakeServer):
    """Piper's HTTP server in its three forms: ``api='synthesize'`` (piper-tts >= 1.5: POST
    /synthesize JSON, GET / is a web page), ``'json-root'`` (1.3-1.4: POST / JSON), ``'text'``
    (the archived rhasspy/piper: GET /?text= or POST / raw text). Always a 16-bit mono WAV at the
    voice's rate with Flask's default ``text/html`` content type; errors are Flask's 500 page."""

    kind = "piper"
    FLASK_500 = ("<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n"
                 "<h1>Internal Server Error</h1>\n<p>The server encountered an internal error and was unable to "
                 "complete your request.</p>\n")
    FLASK_404 = ("<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n"
                 "<p>The requested URL was not found on the server.</p>\n")

    def __init__(self, knobs: Knobs | None = None, api: str = "synthesize", rate: int = 22050, **kw):
        super().__init__(knobs, **kw)
        if api not in ("synthesize", "json-root", "text"):
            raise ValueError(f"api must be 'synthesize', 'json-root' or 'text', not {api!r}")
        self.api, self.rate = api, rate

    def handle(self, h: Handler):
        html = "text/html; charset=utf-8"
        if self.api == "synthesize":
            if h.route == "/" and h.command == "GET":
                return h.send(200, "<!doctype html><title>Piper</title><textarea></textarea>", html)
            if h.route == "/info":
                return h.send_json(200, {"voice": "en_US-fake-medium", "sample_rate": self.rate})
            if h.route == "/synthesize" and h.command == "POST":
                return self._json(h)
        elif h.route == "/" and self.api == "json-root" and h.command == "POST":
            return self._json(h)
        elif h.route == "/" and self.api == "text":
            if h.command == "GET":
                return self._say(h, h.query.get("text", ""), 1.0)
            return self._say(h, h.body.decode("utf-8", "replace"), 1.0)
        if h.route == "/voices":
            return h.send_json(200, {"en_US-fake-medium": {"audio": {"sample_rate": self.rate}}})
        return h.send(404, self.FLASK_404, html)

    def _json(self, h: Handler):
        body = h.json_body()
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            return h.send(500, self.FLASK_500, "text/html; charset=utf-8")
        scale = body.get("length_scale", 1.0)
        return self._say(h, body["text"], float(scale) if isinstance(scale, (int, float)) and scale > 0 else 1.0)

    def _say(self, h: Handler, text: str, length_scale: float):
        if not text.strip():
            return h.send(500, self.FLASK_500, "text/html; charset=utf-8")
        samples = speechlike(text, self.rate, 1.0 / length_scale)
        outcome = self.roll()
        self.work(len(samples) / self.rate, h.t0)
        if outcome == "fail":
            return h.send(500, self.FLASK_500, "text/html; charset=utf-8")
        data = wav_bytes(samples, self.rate)
        if outcome == "crash":
            h.send_partial(200, data, "text/html; charset=utf-8")
        return h.send(200, data, "text/html; charset=utf-8")


# --- XTTS (daswer123/xtts-api-server) ----------------------------------------------------------

XTTS_LANGUAGES = ("ar", "pt", "zh-cn", "cs", "nl", "en", "fr", "de", "it", "pl", "ru", "es", "tr", "ja", "ko", "hu", "hi")


class XttsFake(FakeServer):
    """xtts-api-server: POST /tts_to_audio/ (trailing slash; without it FastAPI redirects) with
    ``text``, ``speaker_wav`` and ``language`` all required; a 24 kHz mono WAV in 32-bit float
    (the sample encoding is torchaudio's choice, not 16-bit); every error comes back as 500
    ``{"detail": "Error: ..."}``, even a bad language. GET /languages, /speakers_list."""

    kind = "xtts"

    def __init__(self, knobs: Knobs | None = None, speakers: tuple = ("skull", "female"), **kw):
        super().__init__(knobs, **kw)
        self.speakers = speakers

    def handle(self, h: Handler):
        if h.route == "/languages":
            return h.send_json(200, {"languages": {c: c for c in XTTS_LANGUAGES}})
        if h.route in ("/speakers_list", "/speakers"):
            return h.send_json(200, list(self.speakers))
        if h.route == "/tts_to_audio" and h.command == "POST":
            return h.send(307, b"", "text/plain", {"Location": "/tts_to_audio/"})
        if h.route == "/tts_to_audio/" and h.command == "POST":
            return self._tts(h)
        return h.send_json(404, {"detail": "Not Found"})

    def _speaker_ok(self, speaker: str) -> bool:
        from pathlib import Path
        name = speaker[:-4] if speaker.endswith(".wav") else speaker
        return name in self.speakers or (Path(speaker).is_absolute() and Path(speaker).is_file())

    def _tts(self, h: Handler):
        body = h.json_body()
        if not isinstance(body, dict):
            return h.send_json(422, {"detail": [{"type": "json_invalid", "loc": ["body"], "msg": "JSON decode error"}]})
        missing = [n for n in ("text", "speaker_wav", "language") if n not in body]
        if missing:
            return h.send_json(422, {"detail": [{"type": "missing", "loc": ["body", n], "msg": "Field required"}
                                                for n in missing]})
        if str(body["language"]).lower() not in XTTS_LANGUAGES:
            return h.send_json(500, {"detail": "Error: 400: Language code sent is either unsupported or misspelled."})
        if not self._speaker_ok(str(body["speaker_wav"])):
            return h.send_json(500, {"detail": f"Error: Speaker {body['speaker_wav']} not found."})
        samples = speechlike(str(body["text"]), 24000)
        outcome = self.roll()
        self.work(len(samples) / 24000, h.t0)
        if outcome == "fail":
            return h.send_json(500, {"detail": "Error: CUDA out of memory"})
        f32 = samples.astype("<f4").tobytes()
        data = _wav_header(24000, len(f32), bits=32, tag=3) + f32
        if outcome == "crash":
            h.send_partial(200, data, "audio/wav")
        return h.send(200, data, "audio/wav", {"Content-Disposition": 'attachment; filename="output.wav"'})


FAKES = {"whisper.cpp": WhisperCppFake, "speaches": lambda knobs=None, **kw: OpenAIAudioFake(knobs, "speaches", **kw),
         "kokoro": lambda knobs=None, **kw: OpenAIAudioFake(knobs, "kokoro", **kw), "llama.cpp": LlamaCppFake,
         "ollama": OllamaFake, "piper": PiperFake, "xtts": XttsFake}
"""every fake by the name ``python -m host.fakes`` knows it by"""


__all__ = ["FAKES", "Knobs", "tokens", "WhisperCppFake", "OpenAIAudioFake", "LlamaCppFake", "OllamaFake",
           "PiperFake", "XttsFake", "DEFAULT_TRANSCRIPT", "DEFAULT_REPLY"]
