"""Language models (and vision models) behind HTTP: OpenAI-compatible chat completions
(llama.cpp's llama-server, LocalAI, vLLM...) and Ollama's native /api/chat.

The same backend writes replies (streamed, so the first sentence can be spoken while the rest
is written) and, given a caption prompt, describes the snapshot. In "one vision model" mode the
reply backend gets the snapshot itself. A model that cannot take images is detected (llama.cpp's
``image input is not supported`` 500, Ollama's capabilities without ``vision``, the model
list without ``multimodal``); it is reported once, clearly, and the turn carries on without the
picture instead of failing.
"""
from __future__ import annotations

import abc
import base64
import logging
import threading
from dataclasses import dataclass, field
from typing import ClassVar, Iterator

from skull.core.errors import BackendError
from skull.core.validate import need

from ..http import iter_ndjson, iter_sse
from . import ReplyContext
from .registry import BackendContext, HttpSettings, backend

log = logging.getLogger("host.llm")

REPLY_PROMPT = (
    "You are Mr Bones, a talking skeleton prop at a Halloween party. Answer the visitor with a short, "
    "family-friendly joke about what they said and, when you know it, what you see in front of you. "
    "Begin with a very short exclamation of two or three words, then at most two short sentences. "
    "Speak plainly: no emoji, no lists, no stage directions, no quotation marks around your answer.")
CAPTION_PROMPT = ("Describe in one short sentence who and what is in front of the camera: people, costumes, "
                  "colours, anything spooky. No preamble.")
NO_IMAGE_HINT = {
    "openai-chat": "start llama-server with --mmproj (or -hf with a vision model), or set [vision] backend to a "
                   "caption model",
    "ollama": "pull a vision model (e.g. llava, gemma3, qwen2.5vl), or set [vision] backend to a caption model",
}


def image_mime(image: bytes) -> str:
    if image.startswith(b"\x89PNG"):
        return "image/png"
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


def user_text(ctx: ReplyContext, with_image: bool) -> str:
    said = f'The visitor said: "{ctx.transcript}".' if ctx.transcript else "The visitor said nothing you could hear."
    if with_image:
        return said + " The picture is what you see in front of you right now."
    if ctx.caption:
        return said + f" What you see in front of you: {ctx.caption}."
    return said


@dataclass(frozen=True)
class ChatSettings(HttpSettings):
    """``[reply.openai-chat]`` or ``[vision.openai-chat]``: an OpenAI-compatible chat server."""
    model: str = ""
    """the model name; empty: the server's only model (llama.cpp ignores it)"""
    prompt: str = ""
    """the system prompt: reply, the skull's persona; vision, the caption instruction; empty = built in"""
    temperature: float = 0.8
    """0 always picks the likeliest word; higher is more surprising (0..2)"""
    max_tokens: int = 120
    """the longest answer, in tokens"""
    options: dict = field(default_factory=dict)
    """extra request fields passed to the server as they are (e.g. {top_p = 0.9})"""

    def check(self, where: str) -> None:
        super().check(where)
        need(0.0 <= self.temperature <= 2.0, where, "temperature", self.temperature, "must be 0..2")
        need(1 <= self.max_tokens <= 4096, where, "max_tokens", self.max_tokens, "must be 1..4096")


@dataclass(frozen=True)
class OllamaSettings(ChatSettings):
    """``[reply.ollama]`` or ``[vision.ollama]``: Ollama's own API; ``options`` go into its ``options``
    (e.g. {num_ctx = 4096})."""
    example_url: ClassVar[str] = "http://127.0.0.1:11434"

    def check(self, where: str) -> None:
        super().check(where)
        need(bool(self.model), where, "model", self.model, "ollama needs a model, e.g. 'llava:7b'")


class _Chat(abc.ABC):
    """What both chat APIs share: prompts, history, the image fallback, the stage's options."""

    name = "chat"
    api = "openai-chat"

    def __init__(self, settings: ChatSettings, ctx: BackendContext):
        self.cfg, self.stage = settings, ctx.stage
        self.http = settings.http(self.name, ctx)
        self.sees_images = ctx.sees_images
        self.prompt = settings.prompt or (CAPTION_PROMPT if ctx.stage == "vision" else REPLY_PROMPT)
        self._refused = threading.Event()  # the model said it cannot take images

    # --- subclasses ---------------------------------------------------------------------

    @abc.abstractmethod
    def _request(self, messages: list, stream: bool):
        """Implemented by each API."""

    @abc.abstractmethod
    def _pieces(self, resp, cancel) -> Iterator[str]:
        """Implemented by each API."""

    @abc.abstractmethod
    def _whole(self, resp) -> str:
        """Implemented by each API."""

    @abc.abstractmethod
    def _message(self, role: str, text: str, image: bytes | None) -> dict:
        """Implemented by each API."""

    # --- shared -------------------------------------------------------------------------

    def _messages(self, ctx: ReplyContext, with_image: bool) -> list:
        out = [{"role": "system", "content": self.prompt}]
        for question, answer in ctx.history:
            out.append({"role": "user", "content": f'The visitor said: "{question}".'})
            out.append({"role": "assistant", "content": answer})
        out.append(self._message("user", user_text(ctx, with_image), ctx.image if with_image else None))
        return out

    def _refusal(self, exc: BackendError) -> bool:
        text = str(exc).lower()
        return "image input is not supported" in text or "does not support image" in text

    def _open(self, ctx: ReplyContext, stream: bool):
        """Send the request; if the model refuses the picture, say so once and ask without it."""
        with_image = bool(ctx.image) and self.sees_images and not self._refused.is_set()
        try:
            return self._request(self._messages(ctx, with_image), stream)
        except BackendError as exc:
            if not (with_image and self._refusal(exc)):
                raise
            self._refused.set()
            log.error("%s: the %s model cannot take images (%s); %s. Replying from the words alone.",
                      self.http.where(), self.cfg.model or "configured", exc, NO_IMAGE_HINT[self.api])
            return self._request(self._messages(ctx, False), stream)

    def stream(self, ctx: ReplyContext, cancel: threading.Event | None = None) -> Iterator[str]:
        """The reply as it is written, piece by piece."""
        resp = self._open(ctx, True)
        yield from self._pieces(resp, cancel)

    def reply(self, ctx: ReplyContext) -> str:
        return self._whole(self._open(ctx, False)).strip()

    def caption(self, image: bytes) -> str:
        """One line describing the snapshot (caption-model mode)."""
        messages = [{"role": "system", "content": self.prompt}, self._message("user", "Describe this picture.", image)]
        try:
            return " ".join(self._whole(self._request(messages, False)).split())
        except BackendError as exc:
            if self._refusal(exc):
                raise BackendError(self.stage, f"the {self.cfg.model or 'configured'} model at {self.http.url} "
                                               f"cannot take images; {NO_IMAGE_HINT[self.api]}") from None
            raise

    def _body(self, messages: list, stream: bool) -> dict:
        return {**({"model": self.cfg.model} if self.cfg.model else {}), "messages": messages, "stream": stream}


@backend("openai-chat", "vision", "reply", settings=ChatSettings)
class OpenAIChat(_Chat):
    """POST /v1/chat/completions, streamed as SSE; images as ``image_url`` data URIs."""

    name = "openai-chat"
    api = "openai-chat"

    def _message(self, role: str, text: str, image: bytes | None) -> dict:
        if image is None:
            return {"role": role, "content": text}
        url = f"data:{image_mime(image)};base64,{base64.b64encode(image).decode()}"
        return {"role": role, "content": [{"type": "text", "text": text},
                                          {"type": "image_url", "image_url": {"url": url}}]}

    def _request(self, messages: list, stream: bool):
        body = {**self._body(messages, stream), "temperature": self.cfg.temperature,
                "max_tokens": self.cfg.max_tokens, **self.cfg.options}
        return self.http.request("POST", "/v1/chat/completions", json=body, stream=stream)

    def _pieces(self, resp, cancel) -> Iterator[str]:
        for obj in iter_sse(self.http, resp, "/v1/chat/completions", cancel):
            for choice in obj.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    yield piece

    def _whole(self, resp) -> str:
        try:
            obj = resp.json()
            return obj["choices"][0]["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise BackendError(self.stage, f"{self.http.where('/v1/chat/completions')} sent an answer without "
                                           f"choices[0].message: {resp.text[:120]!r}", retryable=True) from None

    def check(self) -> str:
        obj = self.http.json("GET", "/v1/models")
        models = obj.get("data") or []
        ids = [m.get("id") for m in models if isinstance(m, dict)]
        name = self.cfg.model or (ids[0] if ids else "?")
        caps = next((m.get("capabilities") for m in obj.get("models") or [] if isinstance(m, dict)), None)
        if self.sees_images and caps is not None and "multimodal" not in caps:
            raise BackendError(self.stage, f"model {name} at {self.http.url} cannot take images (no mmproj); "
                                           f"{NO_IMAGE_HINT[self.api]}")
        return f"model {name}"


@backend("ollama", "vision", "reply", settings=OllamaSettings)
class OllamaChat(_Chat):
    """Ollama's POST /api/chat, streamed as NDJSON; images as plain base64 (a data URI is refused)."""

    name = "ollama"
    api = "ollama"

    def __init__(self, settings: OllamaSettings, ctx: BackendContext):
        super().__init__(settings, ctx)
        self._caps: list | None = None

    def _message(self, role: str, text: str, image: bytes | None) -> dict:
        msg = {"role": role, "content": text}
        if image is not None:
            msg["images"] = [base64.b64encode(image).decode()]
        return msg

    def capabilities(self) -> list:
        if self._caps is None:
            obj = self.http.json("POST", "/api/show", json={"model": self.cfg.model})
            self._caps = list(obj.get("capabilities") or [])
        return self._caps

    def _request(self, messages: list, stream: bool):
        if any(m.get("images") for m in messages) and "vision" not in self.capabilities():
            # local Ollama would answer anyway, seeing only an "[img-0]" marker
            raise BackendError(self.stage, f"model {self.cfg.model} does not support image input "
                                           f"(capabilities {self._caps})")
        options = {"temperature": self.cfg.temperature, "num_predict": self.cfg.max_tokens, **self.cfg.options}
        body = {**self._body(messages, stream), "options": options}
        return self.http.request("POST", "/api/chat", json=body, stream=stream)

    def _pieces(self, resp, cancel) -> Iterator[str]:
        for obj in iter_ndjson(self.http, resp, "/api/chat", cancel):
            piece = (obj.get("message") or {}).get("content")
            if piece:
                yield piece
            if obj.get("done"):
                return

    def _whole(self, resp) -> str:
        try:
            return resp.json()["message"].get("content") or ""
        except (ValueError, KeyError, TypeError, AttributeError):
            raise BackendError(self.stage, f"{self.http.where('/api/chat')} sent an answer without message: "
                                           f"{resp.text[:120]!r}", retryable=True) from None

    def check(self) -> str:
        self.http.request("GET", "/")
        self._caps = None
        caps = self.capabilities()
        if self.sees_images and "vision" not in caps:
            raise BackendError(self.stage, f"model {self.cfg.model} cannot take images (capabilities {caps}); "
                                           f"{NO_IMAGE_HINT[self.api]}")
        return f"model {self.cfg.model}"

