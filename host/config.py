"""host.toml: where the host listens, which backend serves each stage, timeouts and fallbacks."""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path

from skull.audio.envelope import JawShape
from skull.config import build, need, read_toml


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


@dataclass(frozen=True)
class StageConfig:
    backend: str = ""
    timeout_s: float = 20.0
    voice: str = "en-us+m3"
    """espeak-ng voice (tts only)"""
    speed: int = 155
    """espeak-ng words per minute (tts only)"""
    seed: int = -1
    """joke engine random seed; -1 = different every run (reply only)"""

    def check(self, where: str) -> None:
        need(0.1 <= self.timeout_s <= 300, where, "timeout_s", self.timeout_s, "must be 0.1..300 s")


@dataclass(frozen=True)
class FallbackConfig:
    """Lines the skull speaks when a stage fails, so it never stands mute."""
    stt: str = "My ears are full of cobwebs. Could you ask me again?"
    vision: str = ""
    """empty: carry on without a caption"""
    reply: str = "My brain seems to have rotted away. Ask me again in a moment."


@dataclass(frozen=True)
class HostConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    stt: StageConfig = field(default_factory=lambda: StageConfig(backend="pocketsphinx", timeout_s=20.0))
    vision: StageConfig = field(default_factory=lambda: StageConfig(backend="opencv", timeout_s=10.0))
    reply: StageConfig = field(default_factory=lambda: StageConfig(backend="jokes", timeout_s=20.0))
    tts: StageConfig = field(default_factory=lambda: StageConfig(backend="espeak-ng", timeout_s=20.0))
    fallback: FallbackConfig = field(default_factory=FallbackConfig)
    shape: JawShape = field(default_factory=JawShape)
    history_turns: int = 6
    """how many earlier question/reply pairs each skull's conversation remembers"""


def load_host_config(path: str | Path | None = None) -> HostConfig:
    data, where = read_toml(path)
    defaults = HostConfig()
    # a stage table given in the file starts from that stage's own defaults
    for stage in ("stt", "vision", "reply", "tts"):
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
