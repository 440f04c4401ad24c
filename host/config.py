"""host.toml: where the host listens, which backend serves each stage, timeouts and fallbacks."""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from skull.core.envelope import JawShape
from skull.core.validate import ValidationError, build, need, read_toml, where_of

from .backends import registry


@dataclass(frozen=True)
class ServerConfig:
    bind: str = "127.0.0.1"
    port: int = 8765
    token: str = ""
    """shared secret every skull must send in hello; also from SKULL_TOKEN"""
    max_record_s: float = 30.0
    """microphone audio past this many seconds of one turn is dropped"""
    max_image_mp: float = 24.0
    """the largest snapshot the host decodes, in megapixels (width x height / 1e6), read from the
    picture's header before any decoding; a larger one is refused with its size (the turn goes on
    without it). 24 MP takes a 4K webcam (8.3 MP) or a phone photo; one snapshot is decoded at a time, in
    ~140 MB at 24 MP"""
    hello_timeout_s: float = 10.0
    ping_interval_s: float = 5.0
    ping_timeout_s: float = 10.0
    tls_cert: str = ""
    """a PEM certificate (chain) file: the host serves wss:// with it; empty: plain ws:// (put a
    TLS proxy in front of a host reached over the internet, docs/internet.md)"""
    tls_key: str = ""
    """the PEM private key of tls_cert (may be the same file)"""
    conversation_idle_s: float = 180.0
    """a conversation with no turn for this long is forgotten: the next visitor is someone else"""
    max_skulls: int = 64
    """skulls the host keeps a conversation for; a new name past it replaces the longest idle one
    that is not connected, or is refused (4429) when all are connected"""
    max_turns: int = 4
    """turns answered at once; more wait their turn in a fair queue (first come, first served).
    The host starts up to 4 worker threads per turn for the calls to its backends (at least 32),
    only as they are needed"""
    queue_notice_s: float = 2.0
    """a turn still queued after this long hears the "one moment" line (in the fallback voice)"""
    queue_line: str = "One moment, mortal. Other souls are ahead of you."
    log_failures_per_min: int = 10
    """log lines per minute about one peer's bad frames or refused hellos; the rest are counted"""
    turn_log: str = ""
    """a JSON-lines file with one object per finished turn (time, skull, turn, transcript, reply,
    outcome, timings_ms); empty = none (docs/show.md)"""
    turn_log_max_mb: float = 10.0
    """turn_log is rotated (.1, .2...) when it would grow past this many megabytes"""
    turn_log_backups: int = 3
    """rotated turn logs kept; the oldest is deleted"""
    discovery: bool = True
    """advertise the host over mDNS (zeroconf, a _skull._tcp service) so skulls with no [link] url
    find it; only a host that listens beyond this machine (bind not 127.0.0.1) is advertised.
    false for networks that forbid multicast (host.discovery)"""
    name: str = ""
    """the name the host advertises (a skull's [link] host_name picks it); empty: this machine's name"""
    core: int | str = "auto"
    """the one core the host process's own threads run on. Its threads take turns at one Python
    lock; spread over several cores they hand it from core to core, and with a crowd that costs
    (64 skulls on 2 cores: about 25 % more CPU per turn, p95 first audio 1.5-2.0 x one skull's p50
    instead of 1.2-1.35 x, bench/scale.py). "auto": the last core this host may use, when it may
    use two or more and no engine computes inside the host process (every stage has a server or
    runs in the [embedded] worker processes); "off": wherever the system puts them; or a core's
    number (kept to even with engines inside). The worker processes and the espeak-ng speakers it
    starts keep every core"""

    def check(self, where: str) -> None:
        need(len(self.name) <= 63 and "." not in self.name, where, "name", self.name[:70],
             "at most 63 characters and no dot (an mDNS instance name)")
        need(0 <= self.port <= 65535, where, "port", self.port, "must be 0..65535 (0 picks a free port)")
        need(bool(self.tls_cert) == bool(self.tls_key), where, "tls_key" if self.tls_cert else "tls_cert",
             self.tls_key if self.tls_cert else self.tls_cert,
             "tls_cert and tls_key go together: set both (the certificate and its private key) or neither")
        for key in ("tls_cert", "tls_key"):
            value = getattr(self, key)
            need(not value or Path(value).is_file(), where, key, value,
                 "no such file (a path relative to the folder the host runs in, or absolute); make a "
                 "self-signed pair as docs/internet.md shows")
        need(1 <= self.max_record_s <= 300, where, "max_record_s", self.max_record_s, "must be 1..300 s")
        need(0.1 <= self.max_image_mp <= 250, where, "max_image_mp", self.max_image_mp, "must be 0.1..250 megapixels")
        need(0.1 <= self.conversation_idle_s <= 86400, where, "conversation_idle_s", self.conversation_idle_s,
             "must be 0.1..86400 s")
        need(1 <= self.max_skulls <= 10000, where, "max_skulls", self.max_skulls, "must be 1..10000")
        need(1 <= self.max_turns <= 1000, where, "max_turns", self.max_turns, "must be 1..1000")
        need(0 <= self.queue_notice_s <= 60, where, "queue_notice_s", self.queue_notice_s, "must be 0..60 s")
        need(1 <= self.log_failures_per_min <= 10000, where, "log_failures_per_min", self.log_failures_per_min,
             "must be 1..10000")
        need(0.01 <= self.turn_log_max_mb <= 10_000, where, "turn_log_max_mb", self.turn_log_max_mb,
             "must be 0.01..10000 MB")
        need(1 <= self.turn_log_backups <= 100, where, "turn_log_backups", self.turn_log_backups, "must be 1..100 files")
        need(self.core in ("auto", "off") or (isinstance(self.core, int) and not isinstance(self.core, bool)
                                              and 0 <= self.core <= 4095),
             where, "core", self.core, '"auto", "off" or a core\'s number (0 is the first)')


@dataclass(frozen=True)
class SkullEntry:
    """[skulls.NAME]: one skull's own credential. A name with a table accepts only its own
    token (the shared [server] token is refused for it), so no other token holder can take the
    name over; a name without one accepts the shared token."""
    token: str = ""

    def check(self, where: str) -> None:
        need(len(self.token) >= 8, where, "token", "***", "a skull's own token must be at least 8 characters")


def load_skulls(table, source: str) -> dict:
    """The [skulls] table: skull name -> :class:`SkullEntry`, each name checked as hello checks it."""
    from skull.core.protocol import name_problem
    if not isinstance(table, dict):
        raise ValidationError(f"{source}: skulls = {table!r} must be a table: write [skulls.NAME]"[:300], "skulls",
                              "type")
    skulls = {}
    for name, entry in table.items():
        problem = name_problem(name)
        if problem is not None:
            raise ValidationError(f"{where_of(source, 'skulls')}: skull name {name[:70]!r} {problem}", name, "range")
        skulls[name] = build(SkullEntry, entry, source, f"skulls.{name}")
    return skulls


STAGE_TIMEOUT_S = {"stt": 20.0, "vision": 10.0, "reply": 20.0, "tts": 20.0}
"""each stage's time budget when its table does not set timeout_s"""


@dataclass(frozen=True)
class _StageTable:
    """The keys of a stage table itself; the backend's own keys go in its table [stage.backend]."""
    backend: str = ""
    timeout_s: float = 20.0
    retries: int = 1

    def check(self, where: str) -> None:
        need(0.1 <= self.timeout_s <= 300, where, "timeout_s", self.timeout_s, "must be 0.1..300 s")
        need(0 <= self.retries <= 3, where, "retries", self.retries, "must be 0..3")


@dataclass(frozen=True)
class _SttTable(_StageTable):
    """[stt] also says how the question is listened to."""
    segmented: bool = True
    """transcribe each stretch of speech as soon as the visitor pauses, while the recording goes
    on (needs the voice activity model of the 'ears' extra); false: the whole question after the
    release, its silence trimmed"""
    pause_s: float = 0.4
    """the pause that ends a stretch of speech"""
    voice_activity_max: int | str = "auto"
    """questions the host listens to with its voice activity model at once (segmented, silence
    trimmed); one more is transcribed whole, silence and all. Each costs the host ~25 ms of CPU
    per second of question on onnxruntime (~3 ms in a crowd of 64, whose windows run together),
    ~70 ms holding Python's GIL and 2.5 MB on ggml
    (skull/core/vad.py): with a crowd on a small host, this, not the model servers, is what runs
    out. "auto": every question the host admits ([server] max_turns) on onnxruntime, 8 on ggml;
    0: never listen, always transcribe whole"""

    def check(self, where: str) -> None:
        super().check(where)
        need(0.1 <= self.pause_s <= 3.0, where, "pause_s", self.pause_s, "must be 0.1..3 s")
        need(self.voice_activity_max == "auto" or (isinstance(self.voice_activity_max, int)
                                                   and 0 <= self.voice_activity_max <= 1000),
             where, "voice_activity_max", self.voice_activity_max,
             'must be "auto" or 0..1000 questions (0: always transcribe the whole question)')


GGML_LISTEN_AT_ONCE = 8
"""questions listened to at once by default where Silero computes on ggml (~70 ms of CPU per
second of question each, holding the GIL)"""


def _table_of(stage: str) -> type:
    return _SttTable if stage == "stt" else _StageTable


@dataclass(frozen=True)
class StageConfig:
    """One stage: the backend that serves it, its time budget, how often to ask again, and the
    backend's own settings (the frozen dataclass the backend declared, from [stage.backend])."""
    stage: str
    """'stt', 'vision', 'reply' or 'tts'"""
    backend: str
    """the chosen backend, one of host.backends.registry.names(stage)"""
    settings: Any
    """the chosen backend's settings"""
    timeout_s: float = 20.0
    """the whole stage, a retry included; a streamed reply: time to the first piece and between pieces"""
    retries: int = 1
    """extra attempts after a failure that asking again can cure (server down, dropped, 5xx)"""
    source: str = "host.toml"
    """where it was read (a file name), for messages"""
    segmented: bool = False
    """stt only: transcribe each stretch of speech while the visitor talks"""
    pause_s: float = 0.4
    """stt only: the pause that ends a stretch of speech"""
    voice_activity_max: int | str = "auto"
    """stt only: questions listened to with voice activity at once; the rest are transcribed whole
    ("auto": see :meth:`listen_at_once`)"""

    def listen_at_once(self, max_turns: int, engine: str) -> int:
        """``voice_activity_max`` as a number, for a host admitting ``max_turns`` turns whose voice
        activity model runs on ``engine`` (skull.core.vad.ENGINES)."""
        if self.voice_activity_max != "auto":
            return int(self.voice_activity_max)
        return max_turns if engine == "onnx" else GGML_LISTEN_AT_ONCE

    @classmethod
    def of(cls, stage: str, backend: str, *, timeout_s: float | None = None, retries: int = 1,
           source: str = "StageConfig.of", **settings) -> StageConfig:
        """A stage config made in Python, validated as host.toml would be:
        ``StageConfig.of("tts", "openai", timeout_s=5, url="http://127.0.0.1:8880", voice="bm_george")``."""
        table = {"backend": backend, "retries": retries, backend: settings}
        if timeout_s is not None:
            table["timeout_s"] = timeout_s
        return load_stage(stage, table, source)


def load_stage(stage: str, table, source: str) -> StageConfig:
    """The stage table ``[stage]`` read from ``source``: its own keys (backend, timeout_s, retries),
    then one sub-table per backend, each checked against that backend's settings."""
    where = where_of(source, stage)
    if not isinstance(table, dict):
        raise ValidationError(f"{source}: {stage} = {table!r} must be a table: write [{stage}]"[:300], stage, "type")
    choices = registry.names(stage)
    keys = [f.name for f in fields(_table_of(stage))]
    own = {k: v for k, v in table.items() if k in keys}
    built = build(_table_of(stage), {"backend": choices[0], "timeout_s": STAGE_TIMEOUT_S[stage], **own}, source, stage)
    need(built.backend in choices, where, "backend", built.backend, f"choose one of {', '.join(choices)}")
    tables = {}
    for key, value in table.items():
        if key in keys:
            continue
        if key in choices:
            entry = registry.lookup(stage, key)
            tables[key] = build(entry.settings, value, source, entry.table(stage))
        else:
            _refuse_key(stage, key, value, built.backend, source)
    settings = tables.get(built.backend)
    if settings is None:  # no table: the backend's defaults, which must do on their own
        entry = registry.lookup(stage, built.backend)
        settings = build(entry.settings, {}, source, entry.table(stage))
    extra = ({"segmented": built.segmented, "pause_s": built.pause_s, "voice_activity_max": built.voice_activity_max}
             if stage == "stt" else {})
    return StageConfig(stage, built.backend, settings, built.timeout_s, built.retries, source, **extra)


def _refuse_key(stage: str, key: str, value, backend: str, source: str) -> None:
    """A key of [stage] that is neither a stage key nor a backend's table: say where it belongs."""
    where, choices = where_of(source, stage), registry.names(stage)
    for name in choices:  # [stt.whisper.cpp] reads as table "whisper" holding table "cpp"
        first, *rest = name.split(".")
        if rest and key == first and _holds_tables(value, rest):
            raise ValidationError(f"{where_of(source, '.'.join([stage, name]))}: there is no backend {key!r}; a dot "
                                  f"in a table name starts a sub-table, so quote the backend's name: "
                                  f"[{stage}.\"{name}\"]", key, "unknown")
    users = [n for n in choices if key in registry.lookup(stage, n).keys()]
    if users:
        home = registry.lookup(stage, backend if backend in users else users[0]).table(stage)
        raise ValidationError(f"{where}: {key} is a setting of the backend, not of the stage: it belongs in "
                              f"[{stage}.<backend>], here [{home}]; [{stage}] itself takes only "
                              f"{', '.join(f.name for f in fields(_table_of(stage)))}", key, "unknown")
    if isinstance(value, dict):
        raise ValidationError(f"{where_of(source, f'{stage}.{key}')}: no {stage} backend is called {key!r}; choose "
                              f"one of {', '.join(choices)}", key, "unknown")
    raise ValidationError(f"{where}: unknown key {key!r}; known keys: "
                          f"{', '.join(f.name for f in fields(_table_of(stage)))}, and one table "
                          f"[{stage}.<backend>] per backend ({', '.join(choices)})", key, "unknown")


def _holds_tables(value, path: list) -> bool:
    """True when ``value`` holds nested tables along ``path``."""
    for part in path:
        if not isinstance(value, dict) or not isinstance(value.get(part), dict):
            return False
        value = value[part]
    return True


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
        need(bool(self.voice), where, "voice", self.voice, "an espeak-ng voice such as 'en-us+m3'")
        need(0.5 <= self.timeout_s <= 120, where, "timeout_s", self.timeout_s, "must be 0.5..120 s")


EMBEDDED_WORKERS_MAX = 64


@dataclass(frozen=True)
class EmbeddedConfig:
    """[embedded]: where the embedded engines that hold the GIL run (pocketsphinx; host.pool).
    Each worker process loads them once, when the host starts, and answers one call at a time,
    so N workers hear N skulls at once. moonshine and OpenCV stay in the host process: they
    release the GIL and use every core by themselves."""
    workers: int | str = "auto"
    """worker processes: "auto" = one per core this host may use; 1..64; 0 = none: the engines run
    inside the host process, one call at a time each (the least memory, e.g. on a small Pi)"""

    def check(self, where: str) -> None:
        need(self.workers == "auto" or (isinstance(self.workers, int) and 0 <= self.workers <= EMBEDDED_WORKERS_MAX),
             where, "workers", self.workers,
             f'"auto" (one per core), 0 (in the host process) or 1..{EMBEDDED_WORKERS_MAX} worker processes')

    def count(self) -> int:
        """The number of worker processes to start (0: none)."""
        if self.workers == "auto":
            from .pool import cores
            return cores()
        return int(self.workers)


LINE_KINDS = ("offline", "closer", "wait", "attract", "greeting")
"""the kinds of line a skull keeps for when the host is gone (skull.core.protocol.LINE_KINDS)"""


def parse_listen(value: str, where: str = "[dashboard] listen") -> tuple[str, int]:
    """``PORT`` or ``ADDRESS:PORT`` (``[::1]:PORT`` for IPv6) -> (address, port); a bare port
    listens on 127.0.0.1. Raises ConfigError naming ``where`` and the rule."""
    from skull.core.errors import ConfigError
    text = value.strip()
    addr, sep, port = text.rpartition(":")
    if not sep:
        addr, port = "127.0.0.1", text
    addr = addr.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where} = {value[:80]!r}: give PORT or ADDRESS:PORT, e.g. 8080 or 0.0.0.0:8080 "
                          f"(port 0..65535; 0 picks a free one)")
    return addr, int(port)


@dataclass(frozen=True)
class DashboardConfig:
    """[dashboard]: the operator's web page and /metrics, served by the host (docs/dashboard.md)."""
    listen: str = ""
    """where to serve it: PORT (on 127.0.0.1) or ADDRESS:PORT; empty: no dashboard"""
    token: str = ""
    """the dashboard's own secret (at least 8 characters); empty: the [server] token. Anything
    but a loopback address needs one"""
    keep_turns: int = 50
    """turns listed with their text, timings and audio (the oldest is forgotten first)"""

    def check(self, where: str) -> None:
        if self.listen:
            parse_listen(self.listen, f"{where}: listen")
        need(not self.token or len(self.token) >= 8, where, "token", "***",
             "the dashboard's own token must be at least 8 characters (or empty: the [server] token)")
        need(1 <= self.keep_turns <= 1000, where, "keep_turns", self.keep_turns, "must be 1..1000 turns")


@dataclass(frozen=True)
class LinesConfig:
    """[lines]: the lines each skull keeps on disk and says on its own (docs/show.md). The host
    synthesises them once in the configured voice, with their jaw tracks, and sends them to a
    skull after welcome when the skull's cached set differs."""
    enabled: bool = True
    """false: the host sends no lines (skulls keep what they have)"""
    offline: tuple = ("My voice from beyond is lost. Try me again soon.",
                      "The spirits have cut the line to my brain. Come back in a little while.")
    """said on a press while the host is gone"""
    closer: tuple = ("Come closer, mortal. I do not bite. Much.",)
    """to invite a visitor nearer"""
    wait: tuple = ("One moment, mortal.",)
    """while something takes its time"""
    attract: tuple = ("Psst. Yes, you. Press my button, if you dare.",
                      "I have been dead for three hundred years. Ask me anything.",
                      "Is anyone there? It gets lonely in the crypt.",
                      "Press the button and talk to me. I promise to keep my jaw on.")
    """said now and then while nobody comes ([idle] attract_every_min on the skull)"""
    greeting: tuple = ("I'm back from the dead!",)
    """said when the skull finds the host again after losing it"""
    timeout_s: float = 60.0
    """the most the whole set may take to synthesise"""

    def check(self, where: str) -> None:
        from skull.core.protocol import MAX_LINES
        total = 0
        for kind in LINE_KINDS:
            texts = getattr(self, kind)
            for text in texts:
                need(isinstance(text, str) and 0 < len(text.strip()) <= 300, where, kind, texts,
                     "a list of texts, each 1..300 characters")
            total += len(texts)
        need(bool(self.offline) or not self.enabled, where, "offline", self.offline,
             "at least one line: it is what a skull says on a press while the host is gone")
        need(total <= MAX_LINES, where, "lines of all kinds", total, f"all kinds together hold at most {MAX_LINES} lines; "
             f"these hold {total}")
        need(1 <= self.timeout_s <= 600, where, "timeout_s", self.timeout_s, "must be 1..600 s")

    def texts(self) -> list[tuple[str, str]]:
        """(kind, text) of every line, in the order they are sent."""
        return [(kind, text) for kind in LINE_KINDS for text in getattr(self, kind)]


@dataclass(frozen=True)
class HostConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    stt: StageConfig = field(default_factory=lambda: load_stage("stt", {}, "built-in defaults"))
    vision: StageConfig = field(default_factory=lambda: load_stage("vision", {}, "built-in defaults"))
    reply: StageConfig = field(default_factory=lambda: load_stage("reply", {}, "built-in defaults"))
    tts: StageConfig = field(default_factory=lambda: load_stage("tts", {}, "built-in defaults"))
    fallback: FallbackConfig = field(default_factory=FallbackConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    shape: JawShape = field(default_factory=JawShape)
    lines: LinesConfig = field(default_factory=LinesConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    embedded: EmbeddedConfig = field(default_factory=EmbeddedConfig)
    skulls: dict = field(default_factory=dict)
    """skull name -> :class:`SkullEntry` (from [skulls.NAME] tables)"""
    history_turns: int = 6
    """how many earlier question/reply pairs each skull's conversation remembers"""
    streaming: bool = True
    """stream the reply sentence by sentence into the voice; false = whole reply, then whole speech
    (slower to first sound; kept for comparison and for servers that cannot stream)"""


def load_host_config(path: str | Path | None = None) -> HostConfig:
    data, source = read_toml(path)
    stages = {stage: load_stage(stage, data.pop(stage), source) for stage in registry.STAGES if stage in data}
    if "skulls" in data:
        stages["skulls"] = load_skulls(data.pop("skulls"), source)
    return replace(build(HostConfig, data, source), **stages)


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
