"""host.toml: where the host listens, which backend serves each stage, timeouts and fallbacks."""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path

from skull.core.envelope import JawShape
from skull.core.validate import build, need, read_toml


@dataclass(frozen=True)
class ServerConfig:
    bind: str = "127.0.0.1"
    port: int = 8765
    token: str = ""
    """shared secret every skull must send in hello; also from SKULL_TOKEN"""
    max_record_s: float = 30.0
    """microphone audio past this many seconds of one turn is dropped"""
    hello_timeout_s: float = 10.0
    ping_interval_s: float = 5.0
    ping_timeout_s: float = 10.0

    def check(self, where: str) -> None:
        need(0 <= self.port <= 65535, where, "port", self.port, "must be 0..65535 (0 picks a free port)")
        need(1 <= self.max_record_s <= 300, where, "max_record_s", self.max_record_s, "must be 1..300 s")


STAGE_BACKENDS = {
    "stt": ("pocketsphinx", "whisper.cpp", "openai"),
    "vision": ("opencv", "openai-chat", "ollama", "reply", "none"),
    "reply": ("jokes", "openai-chat", "ollama"),
    "tts": ("espeak-ng", "openai", "piper", "xtts"),
}
"""the backends each stage can use; the first is the embedded default"""


@dataclass(frozen=True)
class StageConfig:
    """One stage's backend and its settings. Keys a backend does not use are ignored by it."""
    backend: str = ""
    url: str = ""
    """the model server, e.g. http://127.0.0.1:8080 (server backends only)"""
    model: str = ""
    api_key: str = ""
    """sent as 'Authorization: Bearer <key>' when set"""
    timeout_s: float = 20.0
    """the whole stage, a retry included; a streamed reply: time to the first piece and between pieces"""
    connect_timeout_s: float = 3.0
    retries: int = 1
    """extra attempts after a failure that asking again can cure (server down, dropped, 5xx)"""
    path: str = ""
    """endpoint path when the server uses a non-default one (e.g. whisper-server --inference-path)"""
    language: str = ""
    """speech to text and xtts: 'en', 'auto'...; empty = the backend's default"""
    voice: str = ""
    """espeak-ng voice, Kokoro voice, Piper voice; empty = the backend's default"""
    speed: float = 1.0
    """speaking speed: 1.0 normal (espeak-ng: 155 words/min), 0.5 half, 2.0 double"""
    format: str = ""
    """openai tts: 'wav' (default) or 'pcm'"""
    sample_rate: int = 0
    """openai tts with pcm: the rate the server produces; 0 = from its reply, else 24000"""
    speaker_wav: str = ""
    """xtts: the voice to clone (speaker name, or a WAV path on the XTTS server)"""
    api: str = ""
    """piper: 'synthesize', 'json-root', 'text' or 'auto' (empty)"""
    prompt: str = ""
    """reply: the system prompt (the skull's persona); vision: the caption instruction"""
    temperature: float = 0.8
    max_tokens: int = 120
    options: dict = field(default_factory=dict)
    """extra request fields passed to the server as they are (e.g. {num_ctx = 4096})"""
    seed: int = -1
    """joke engine random seed; -1 = different every run (reply only)"""

    def check(self, where: str) -> None:
        need(0.1 <= self.timeout_s <= 300, where, "timeout_s", self.timeout_s, "must be 0.1..300 s")
        need(0.1 <= self.connect_timeout_s <= 60, where, "connect_timeout_s", self.connect_timeout_s,
             "must be 0.1..60 s")
        need(0 <= self.retries <= 3, where, "retries", self.retries, "must be 0..3")
        need(0.25 <= self.speed <= 4.0, where, "speed", self.speed, "must be 0.25..4.0")
        need(self.sample_rate == 0 or 8000 <= self.sample_rate <= 48000, where, "sample_rate", self.sample_rate,
             "must be 0 (automatic) or 8000..48000 Hz")
        need(1 <= self.max_tokens <= 4096, where, "max_tokens", self.max_tokens, "must be 1..4096")
        need(0.0 <= self.temperature <= 2.0, where, "temperature", self.temperature, "must be 0..2")
        stage = where.rsplit("[", 1)[-1].rstrip("]") if where.endswith("]") else ""
        if stage in STAGE_BACKENDS:
            need(self.backend in STAGE_BACKENDS[stage], where, "backend", self.backend,
                 f"choose one of {', '.join(STAGE_BACKENDS[stage])}")
            server = self.backend not in ("pocketsphinx", "opencv", "jokes", "espeak-ng", "reply", "none")
            need(not server or self.url.startswith(("http://", "https://")), where, "url", self.url,
                 f"the {self.backend} backend needs the server's address, e.g. http://127.0.0.1:8080")


@dataclass(frozen=True)
class FilterConfig:
    """The family-friendly filter: the skull performs for children."""
    enabled: bool = True
    words: tuple = ()
    """extra words to keep out of the skull's mouth (added to the built-in list); 'word*' matches endings"""
    allow: tuple = ()
    """built-in words to let through after all"""
    replacement: str = "boo"
    """what the skull says instead"""


@dataclass(frozen=True)
class FallbackConfig:
    """Lines the skull speaks when a stage fails, so it never stands mute."""
    stt: str = "My ears are full of cobwebs. Could you ask me again?"
    vision: str = ""
    """empty: carry on without a caption"""
    reply: str = "My brain seems to have rotted away. Ask me again in a moment."
    tts: str = "Ahem. My voice is lost somewhere in the crypt. Ask me again in a moment."
    """spoken by the fallback voice when the configured voice fails for a whole answer"""
    voice: str = "en-us+m3"
    """the fallback voice: espeak-ng, which needs no server"""
    timeout_s: float = 10.0
    """how long the fallback voice may take to speak a line"""

    def check(self, where: str) -> None:
        need(0.5 <= self.timeout_s <= 120, where, "timeout_s", self.timeout_s, "must be 0.5..120 s")


@dataclass(frozen=True)
class HostConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    stt: StageConfig = field(default_factory=lambda: StageConfig(backend="pocketsphinx", timeout_s=20.0))
    vision: StageConfig = field(default_factory=lambda: StageConfig(backend="opencv", timeout_s=10.0))
    reply: StageConfig = field(default_factory=lambda: StageConfig(backend="jokes", timeout_s=20.0))
    tts: StageConfig = field(default_factory=lambda: StageConfig(backend="espeak-ng", timeout_s=20.0))
    fallback: FallbackConfig = field(default_factory=FallbackConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    shape: JawShape = field(default_factory=JawShape)
    history_turns: int = 6
    """how many earlier question/reply pairs each skull's conversation remembers"""
    streaming: bool = True
    """stream the reply sentence by sentence into the voice; false = whole reply, then whole speech
    (slower to first sound; kept for comparison and for servers that cannot stream)"""


def load_host_config(path: str | Path | None = None) -> HostConfig:
    data, where = read_toml(path)
    defaults = HostConfig()
    # a stage table given in the file starts from that stage's own defaults
    for stage in STAGE_BACKENDS:
        if stage in data and isinstance(data[stage], dict):
            base = getattr(defaults, stage)
            data[stage] = {"backend": base.backend, "timeout_s": base.timeout_s, **data[stage]}
    return build(HostConfig, data, where)


def is_loopback(bind: str) -> bool:
    """True when ``bind`` (an address or a host name) only listens on this machine."""
    if bind in ("localhost", ""):
        return bind == "localhost"
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(bind, None))
        except OSError:
            return False
