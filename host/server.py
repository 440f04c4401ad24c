"""The host's websocket server: handshake and auth, one conversation per skull, turns.

Every connection starts with ``hello``. A wrong or missing token closes with 4401, an
unsupported protocol version with 4426; both reasons say what to do. After the handshake a
malformed frame gets an ``error`` message and the connection stays open. A skull that
reconnects under the same name takes over its conversation (the old connection is closed with
4409), so memory survives network drops.

No single failure stops the host: an unexpected fault while handling a frame is logged and
answered with ``error`` (``internal_error``), and the connection stays open; a fault in a turn
still ends that turn with a spoken fallback line and ``done``; a subscriber of ``Host.events``
that raises never reaches the turn.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import gc
import hashlib
import hmac
import logging
import os
import re
import ssl
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from skull.core import protocol as p
from skull.core.bus import Bus
from skull.core.envelope import JawShape
from skull.core.errors import ConfigError, ProtocolError
from skull.core.faults import FaultLog
from skull.core.jsonlog import JsonLines

from . import events as ev
from .build import build_backends
from .discovery import Advertiser
from .config import HostConfig, ServerConfig, is_loopback
from .cores import allowed, keep_to_core
from .dashboard import Dashboard
from .filter import FamilyFilter
from .lines import LineBook
from .listen import let_go
from .turn import Backends, Turn

log = logging.getLogger("host.server")
status = logging.getLogger("host.status")
"""skulls coming and going: one of the status loggers shown by default (skull.core.console)"""


def _describe(frame) -> str:
    """What a frame is, for a log line, without trusting it to be valid JSON."""
    if isinstance(frame, bytes):
        return f"a {len(frame)}-byte binary frame"
    m = re.search(r'"type"\s*:\s*"([a-z_]{1,20})"', frame[:200])
    return f"a {m.group(1)!r} message" if m else "a text frame"


def cert_fingerprint(path: str) -> str:
    """The SHA-256 fingerprint of the first certificate in a PEM file, as a skull pins it:
    ``sha256:AB:CD:...`` (the same digits ``openssl x509 -noout -fingerprint -sha256`` prints)."""
    try:
        text = open(path, encoding="ascii", errors="replace").read()
    except OSError as exc:
        raise ConfigError(f"cannot read the certificate {path}: {exc.strerror or exc}") from None
    m = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)
    if m is None:
        raise ConfigError(f"{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----); give tls_cert the "
                          f"certificate file, not the key")
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(m.group(0))).hexdigest().upper()
    return "sha256:" + ":".join(digest[i:i + 2] for i in range(0, 64, 2))


def tls_context(server: ServerConfig) -> ssl.SSLContext | None:
    """The TLS context that makes the host serve wss:// ([server] tls_cert and tls_key), or None
    for plain ws://. The certificate's fingerprint is logged for skulls that pin it; a host bound
    beyond this machine without TLS is logged too: its token travels in clear."""
    if not server.tls_cert:
        if not is_loopback(server.bind):
            log.warning("serving plain ws:// on %s: the token and every question travel in clear. Across a "
                        "network you do not own, give the host a certificate (--tls-cert/--tls-key) or put a TLS "
                        "proxy in front of it (docs/internet.md)", server.bind)
        return None
    if not server.tls_key:
        raise ConfigError(f"tls_cert {server.tls_cert} needs its private key: set tls_key (--tls-key) too")
    fingerprint = cert_fingerprint(server.tls_cert)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(server.tls_cert, server.tls_key, password=b"")  # never prompts for a passphrase
    except OSError as exc:  # a missing file, a key that does not match, a key with a passphrase
        raise ConfigError(f"cannot serve TLS with tls_cert {server.tls_cert} and tls_key {server.tls_key}: "
                          f"{exc.strerror or exc}; the key must be the certificate's "
                          f"own, in PEM, without a passphrase (docs/internet.md)") from None
    log.info("serving wss:// with the certificate %s, fingerprint %s", server.tls_cert, fingerprint)
    return ctx
def _shown(text: str, limit: int = 64) -> str:
    """A client-supplied string as a log line may show it: control characters, line breaks and
    lone surrogates escaped (no forged lines, no terminal escapes), cut at ``limit`` characters."""
    shown = repr(text[:limit])[1:-1]
    return shown if len(text) <= limit else f"{shown}...(+{len(text) - limit} chars)"


class PeerLog:
    """Log lines about one peer's failures (bad frames, refused hellos), at most ``per_min`` a
    minute per peer address; the rest are counted and the count is logged once the minute is
    over. Keeps at most ``peers`` addresses (the oldest is forgotten first)."""

    def __init__(self, logger: logging.Logger, per_min: int, peers: int = 1024):
        self.log, self.per_min, self.peers = logger, per_min, peers
        self._seen: collections.OrderedDict[str, list] = collections.OrderedDict()
        """peer -> [minute start (monotonic s), lines logged, lines held back]"""

    def __call__(self, peer: str, line: str) -> None:
        now = time.monotonic()
        entry = self._seen.get(peer)
        if entry is None or now - entry[0] >= 60.0:
            if entry is not None and entry[2]:
                self.log.warning("%s: %d more failures in the minute before were not logged", peer, entry[2])
            entry = [now, 0, 0]
            self._seen[peer] = entry
            self._seen.move_to_end(peer)
            while len(self._seen) > self.peers:
                self._seen.popitem(last=False)
        if entry[1] < self.per_min:
            entry[1] += 1
            self.log.warning("%s: %s", peer, line)
        else:
            entry[2] += 1


@dataclass
class Conversation:
    """What one skull and its visitors have said, kept across reconnects until it has been idle
    for ``[server] conversation_idle_s``."""
    skull: str
    history: collections.deque = field(default_factory=lambda: collections.deque(maxlen=6))
    turns: int = 0
    last_s: float = field(default_factory=time.monotonic)
    """monotonic seconds of the last turn (or of the connection that made it)"""


class SkullSession:
    """One connected skull: reads its frames, runs its turns, answers errors."""

    def __init__(self, ws: ServerConnection, host: "Host", conversation: Conversation, play_rate: int = 0,
                 jaw_shape: dict | None = None, controls: bool = False):
        self.ws, self.host, self.conversation = ws, host, conversation
        self.controls = controls
        """the skull takes the operator's ``command`` and ``say`` (``hello.controls``)"""
        self.last_turn = 0
        """the skull's latest turn id (0 before any)"""
        self.play_rate = play_rate
        # the skull's [shape] keys over the host's own: this skull's jaw tracks are made with it
        try:
            self.shape = JawShape.from_dict({**host.config.shape.to_dict(), **(jaw_shape or {})}, "jaw shape")
        except ConfigError:  # the mix does not hold together: the skull's own shape alone
            self.shape = JawShape.from_dict(jaw_shape or {}, "jaw shape")
        self.reader = p.FrameReader(p.CLIENT_MESSAGES)
        self.turn: Turn | None = None
        self.task: asyncio.Task | None = None
        self._send_lock = asyncio.Lock()
        self._ended_by_host = False
        """the host ended the current turn's recording at max_record_s (the skull's stop is late)"""
        self.name = _shown(conversation.skull)
        """the skull's name as log lines show it"""
        self.peer = ws.remote_address[0] if ws.remote_address else "?"

    async def send(self, msg: p.Message, payload: bytes | None = None) -> None:
        frames = p.encode(msg, payload)
        async with self._send_lock:  # a header and its payload go out back to back
            for frame in frames:
                await self.ws.send(frame)

    async def run(self) -> None:
        try:
            async for frame in self.ws:
                await self._guarded(frame)
        finally:
            self._cancel_turn()

    async def _guarded(self, frame, msg: p.Message | None = None) -> None:
        """Handle one frame (or, given ``msg``, that already read message); whatever is wrong
        with it is answered with ``error`` and the connection stays open."""
        skull = self.conversation.skull
        try:
            if msg is not None:
                await self._on_message(msg)
            else:
                await self._handle(frame)
        except p.PayloadMissing as exc:  # the announced payload is lost, the text frame is not
            self.host.peer_failure(self.peer, f"{skull}: {exc.code}: {exc}")
            await self.send(p.Error(exc.code, str(exc)))
            await self._guarded(frame, exc.message)
        except ProtocolError as exc:
            self.host.peer_failure(self.peer, f"{skull}: {exc.code}: {exc}")
            await self.send(p.Error(exc.code, str(exc)))
        except ConnectionClosed:
            raise
        except Exception as exc:  # a fault in the host: this frame is lost, the skull is not
            what = _describe(frame)
            self.host.faults(f"{skull}: handling {what}", exc)
            await self.send(p.Error(p.E_INTERNAL, f"the host hit an unexpected fault handling {what} "
                                                  f"({type(exc).__name__}); it is logged on the host. "
                                                  f"Carry on; if a turn was starting, press again"))

    def _cancel_turn(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.turn is not None:
            self.turn.cancel()

    async def _handle(self, frame) -> None:
        if isinstance(frame, bytes):
            msg, data = self.reader.read_binary(frame)
            return await self._on_payload(msg, data)
        await self._on_message(self.reader.read_text(frame))

    async def _on_message(self, msg: p.Message) -> None:
        if isinstance(msg, p.Hello):
            raise ProtocolError(p.E_BAD_STATE, "hello was already received on this connection")
        if isinstance(msg, p.Listen):
            self._cancel_turn()  # a new press abandons whatever turn was running
            host, conv = self.host, self.conversation
            if time.monotonic() - conv.last_s > host.config.server.conversation_idle_s:
                conv.history.clear()  # a new visitor: no callbacks to the last one's hat
            conv.last_s = time.monotonic()
            self.turn = Turn(msg.turn, host.backends, host.config, skull=self.conversation.skull, events=host.events,
                             timings=host.timings, executor=host.executor, history=tuple(self.conversation.history),
                             play_rate=self.play_rate, filter=host.filter, shape=self.shape)
            self.task, self._ended_by_host = None, False
            self.last_turn = msg.turn
            host.events.emit(ev.TurnStarted(self.conversation.skull, msg.turn))
            await self.send(p.Ack(msg.turn, "listen"))
            return
        if isinstance(msg, p.Played):
            self.host.events.emit(ev.Played(self.conversation.skull, msg.turn, msg.first_audio_ms))
            return
        if isinstance(msg, p.Status):
            self.last_turn = msg.turn
            self.host.events.emit(ev.SkullStatus(self.conversation.skull, msg.turn, msg.state, msg.led, msg.jaw,
                                                 msg.mic_dbfs, msg.mic_vad_dbfs, msg.speaker_dbfs, msg.muted))
            return
        turn = self._current(msg.turn, msg.type)
        if isinstance(msg, p.Stop):
            if self.task is not None:
                if self._ended_by_host:  # the host ended this recording at max_record_s already
                    return
                raise ProtocolError(p.E_BAD_STATE, f"turn {msg.turn} was already stopped")
            await self._stop(turn)
        # image and audio_start are kept by the reader until their binary frames arrive

    async def _stop(self, turn: Turn) -> None:
        """The recording of ``turn`` is over: ``ack`` it and start answering."""
        turn.stopped()
        await self.send(p.Ack(turn.turn, "stop"))
        self.task = asyncio.create_task(self._answer(turn), name=f"turn-{turn.turn}")

    def _current(self, turn_id: int, what: str) -> Turn:
        if self.turn is None or self.turn.turn != turn_id:
            raise ProtocolError(p.E_BAD_STATE, f"{what} for turn {turn_id}, but the current turn is "
                                               f"{None if self.turn is None else self.turn.turn}; send listen first")
        return self.turn

    async def _on_payload(self, msg: p.Message, data: bytes) -> None:
        turn = self._current(msg.turn, msg.type)
        if isinstance(msg, p.Image):
            self.host.events.emit(ev.Snapshot(self.conversation.skull, msg.turn, msg.format, data))
            turn.on_image(data)
        elif isinstance(msg, p.AudioStart):
            if self.task is not None:
                if self._ended_by_host:  # audio still in flight after the host ended the recording
                    return
                raise ProtocolError(p.E_BAD_STATE, f"audio for turn {msg.turn} after its stop; dropped")
            if not turn.on_audio(msg, data):
                # a stuck button or a skull that never sends stop: the host ends the recording
                # itself and answers what it has; the skull's late stop and audio are accepted
                self._ended_by_host = True
                limit_s = self.host.config.server.max_record_s
                log.info("%s: turn %d reached max_record_s = %g s; the host ends the recording and answers",
                         self.name, msg.turn, limit_s)
                await self.send(p.Error(p.E_TOO_LARGE, f"recording is longer than {limit_s:g} s (max_record_s); "
                                                       f"the host ended turn {msg.turn}'s recording there and "
                                                       f"answers what it heard", msg.turn))
                await self._stop(turn)

    async def _answer(self, turn: Turn) -> None:
        skull = self.conversation.skull
        try:
            async with self.host.admission(turn, self.send):
                await turn.run(self.send)
        except ConnectionClosed:
            log.info("%s: connection closed during turn %d", skull, turn.turn)
            return
        except asyncio.CancelledError:
            log.info("%s: turn %d abandoned", skull, turn.turn)
            raise
        except Exception as exc:  # a fault in the host: the skull still hears something, then done
            self.host.faults(f"{skull}: turn {turn.turn}", exc)
            try:
                await turn.recover(exc)
            except ConnectionClosed:
                log.info("%s: connection closed during turn %d", skull, turn.turn)
            except Exception as again:
                self.host.faults(f"{skull}: ending turn {turn.turn} after a fault", again)
            return
        self.conversation.history.append((turn.transcript, turn.reply))
        self.conversation.turns += 1
        self.conversation.last_s = time.monotonic()


def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()


def _collect_and_trim(collect: bool) -> None:
    """Free what a crowd's turns left in reference cycles (``collect``), then give the freed
    memory back. The cycles first: Python frees them only at its next full collection, and until
    then their blocks keep the heap from shrinking. Crowds of 64 in a row (bench/scale.py) left the host at
    151, 244, 226, 227, 227, 227 MB with the trim alone (one skull: 119); collected first, at 149,
    153, 154, 155 MB, and 149, 152, 154 in another run."""
    if collect:
        gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
"""glibc's mallopt parameters"""
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20


def _tune_malloc() -> None:
    """Two settings of glibc's allocator for a host serving a crowd; where the C library has no
    mallopt (musl, macOS), nothing changes.

    Arenas: glibc gives threads up to 8 arenas per core, each keeping its own freed memory;
    with a worker thread per waiting call a crowd of 64 skulls left the host at 255 MB against
    119 MB for one skull. One arena per core (at least two): 158 MB in the same setting, no
    slower (bench/scale.py; the threads hold Python's GIL most of the time anyway).

    Big blocks: a turn's audio passes through arrays of 0.1-2 MB (a sentence's samples and PCM,
    its jaw analysis, a resampled copy). glibc maps each such block fresh from the system and
    unmaps it when freed, or gives the top of its heap back once 128 KB-2 MB of it is free, so
    the next sentence faults every page in again: measured, a 3 s sentence's jaw track took
    1000 page faults and 3.9 ms of system time on top of 1.7 ms of work. Blocks up to 32 MB come
    from the heap instead, and freed memory stays there while turns go on; the end of a crowd's
    last turn gives it back (:meth:`Host._give_back_memory`)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_ARENA_MAX, max(2, os.cpu_count() or 1))
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def heavy_stages(backends: Backends) -> list[str]:
    """The stages whose engine computes inside the host process (moonshine, OpenCV, piper-local,
    pocketsphinx without workers, the espeak-ng program where its speakers cannot run): they want
    every core. A server's client, a wyoming client, an engine in the worker processes, espeak-ng's
    speaker processes and the joke engine only wait or do a little (a backend says so with
    ``computes_here = False``)."""
    return [stage for stage in ("stt", "vision", "reply", "tts")
            if (b := getattr(backends, stage)) is not None and not hasattr(b, "http")
            and getattr(b, "computes_here", True)]


def host_core(config: HostConfig, backends: Backends) -> int | None:
    """The core ``[server] core`` keeps the host process's threads to, or None: where the system
    puts them ("off", one core to use, or an engine computing in the process). A core this host
    may not use is a ConfigError naming the ones it may."""
    choice = config.server.core
    mine = allowed()
    if mine is None:  # pragma: no cover - not Linux: no affinity to set
        return None
    usable = sorted(mine)
    if choice == "off":
        return None
    if choice == "auto":
        return usable[-1] if len(usable) > 1 and not heavy_stages(backends) else None
    if choice not in usable:
        raise ConfigError(f"{config.stt.source} [server]: core = {choice} is not a core this host may use "
                          f"(it may use {', '.join(map(str, usable))}); pick one of them, or \"auto\"")
    return int(choice)


WORKERS_PER_TURN = 4
"""blocking backend calls one turn can have under way at once: the caption, a stretch of speech
being transcribed, the streamed reply and a sentence being voiced"""
MIN_WORKERS = 32
"""the fewest worker threads (lines being synthesised and checks share the pool too)"""


class Host:
    """Owns the backends, the conversations, the thread pool for blocking backend calls and the
    turn event bus; ``start()`` runs the websocket server, ``stop()`` ends it.

    ``events``: every turn of every skull publishes to it (see :mod:`host.events`); subscribe
    once for all skulls. ``timings`` builds ``done.timings_ms``; ``turn_log`` writes the per-turn
    log line (``turn_log.detach()`` silences it). ``workers``: threads for backend calls, shared
    by all skulls (a streamed reply holds one while it is written); by default
    ``WORKERS_PER_TURN`` for each of ``[server] max_turns``, at least ``MIN_WORKERS``.
    """

    #: how often a skull that takes controls sends its status (welcome.status_hz) to a host that
    #: serves the dashboard (others ask for none)
    STATUS_HZ = 10.0

    def __init__(self, config: HostConfig, backends: Backends | None = None, *, workers: int | None = None):
        s = config.server
        if not s.token and not is_loopback(s.bind):
            raise ConfigError(f"refusing to listen on {s.bind} without a token: anyone on the network could "
                              f"drive the skull. Set --token (or SKULL_TOKEN), or bind 127.0.0.1")
        self.config = config
        self.turn_json = (JsonLines(s.turn_log, max_mb=s.turn_log_max_mb, backups=s.turn_log_backups,
                                    key="host.toml [server] turn_log") if s.turn_log else None)
        """the JSON-lines turn log ([server] turn_log), or None"""
        self.backends = backends or build_backends(config)
        self._owns_pool = backends is None
        """the host built its backends, so it stops their worker processes (host.pool) when it stops"""
        self.filter = FamilyFilter(config.filter)
        self.lines = LineBook(config, self.backends)
        """the lines skulls keep for when the host is gone, sent after welcome ([lines])"""
        self.conversations: dict[str, Conversation] = {}
        self.sessions: dict[str, SkullSession] = {}
        self.session_id = uuid.uuid4().hex[:12]
        self.server = None
        self.advertiser: Advertiser | None = None
        """the host's mDNS record ([server] discovery), from start() on"""
        self.workers = workers or max(MIN_WORKERS, WORKERS_PER_TURN * s.max_turns)
        self._core: int | None = None
        """the core [server] core keeps this host's threads to, once checked by start()"""
        self.executor: ThreadPoolExecutor | None = None
        self.events: Bus[ev.TurnEvent] = Bus("host")
        self.timings = ev.TurnTimings().attach(self.events)
        self.turn_log = ev.TurnLog(jsonl=self.turn_json).attach(self.events)
        self.faults = FaultLog(log, "; the host goes on")
        self.peer_failure = PeerLog(log, s.log_failures_per_min)
        self._answering = 0
        """turns holding a place now"""
        self._most_at_once = 0
        """the most turns answered at once since the memory was last given back"""
        self._turns = asyncio.Semaphore(s.max_turns)
        """admission: turns answered at once; waiters are served first come, first served"""
        self._replaced: dict[str, collections.deque] = {}
        """skull name -> monotonic seconds of its recent replacements (a flapping pair)"""
        self._sweeper: asyncio.Task | None = None
        self._closing: set[asyncio.Task] = set()
        """closes of replaced connections still under way"""
        self.dashboard = Dashboard(self, config.dashboard) if config.dashboard.listen else None
        """the operator's web page and /metrics ([dashboard] listen), or None"""

    @contextlib.asynccontextmanager
    async def admission(self, turn: Turn, send):
        """Hold one of ``[server] max_turns`` places while ``turn`` is answered; a turn that waits
        longer than ``queue_notice_s`` hears the "one moment" line first (the fallback voice)."""
        s = self.config.server
        notice, asked = None, time.monotonic()
        if self._turns.locked():
            log.info("%s: turn %d waits for a place (%d turns answered at once)", turn.skull, turn.turn,
                     s.max_turns)

            async def one_moment():
                await asyncio.sleep(s.queue_notice_s)
                try:
                    await turn.notice(send, s.queue_line)
                except Exception as exc:  # the notice is a courtesy: the turn still goes on
                    log.warning("%s: turn %d: the one-moment line was not spoken: %s", turn.skull, turn.turn, exc)
            notice = asyncio.create_task(one_moment(), name=f"one-moment-{turn.turn}")
        try:
            await self._turns.acquire()
        except BaseException:
            if notice is not None:
                notice.cancel()
            raise
        self._answering += 1
        self._most_at_once = max(self._most_at_once, self._answering)
        if notice is not None:  # done.timings_ms names the wait
            turn._emit(ev.StageFinished, stage="queued", ms=round((time.monotonic() - asked) * 1000, 1))
        try:
            if notice is not None:
                if notice.done() or turn.notices:
                    await notice
                else:
                    notice.cancel()
                    # waited for, not awaited: the notice's own CancelledError stays in it, and a
                    # cancel of this turn (suppressing it would swallow that too) goes through
                    await asyncio.wait({notice})
            yield
        finally:
            self._turns.release()
            self._answering -= 1
            if not self._answering:
                self._give_back_memory()

    def _give_back_memory(self) -> None:
        """The last turn under way has ended: let go of a crowd's spare voice activity models and
        hand the memory its turns freed back to the system (glibc keeps freed memory in each thread's arena; without this a burst of 64 turns
        leaves the host three times its size for good). On a worker: it takes a few ms."""
        let_go(keep=1)  # the voice activity models a crowd needed, but one
        crowd, self._most_at_once = self._most_at_once > 1, 0
        if self.executor is not None:  # one skull's turns leave little: no full collection (~16 ms) after each
            self.executor.submit(_collect_and_trim, crowd)

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def start(self):
        s = self.config.server
        self._core = host_core(self.config, self.backends)  # a core it may not use is refused before it listens
        _tune_malloc()
        # backend calls run on the host's own pool (the loop's default executor is left to others
        # sharing the loop); sized from max_turns so admitted turns never wait for a thread, and a
        # waiting call costs one idle thread (threads are started only when needed, and every
        # server's connections are one kept-alive pool shared by them all: host/http.py Server)
        self.executor = ThreadPoolExecutor(self.workers, thread_name_prefix="host-backend")
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="host-conversation-sweeper")
        self.server = await serve(self._connection, s.bind, s.port, ssl=tls_context(s),
                                  max_size=p.TRANSPORT_MAX_BYTES, ping_interval=s.ping_interval_s,
                                  ping_timeout=s.ping_timeout_s,
                                  compression=None, logger=logging.getLogger("host.websockets"))
        self.advertiser = Advertiser(s, self.port)
        self.advertiser.start()
        b = self.backends
        log.info("host listening on %s://%s:%d (stt=%s vision=%s reply=%s tts=%s, %s)",
                 "wss" if s.tls_cert else "ws", s.bind, self.port,
                 b.stt.name, b.vision.name if b.vision else self.config.vision.backend, b.reply.name, b.tts.name,
                 "streaming" if self.config.streaming else "not streaming")
        if self.dashboard is not None:
            try:
                await self.dashboard.start()
            except BaseException:
                await self.stop()
                raise
        return self

    def keep_to_one_core(self) -> int | None:
        """For a process that is the host alone (``skull host``, host.process), once started: its
        threads keep to the core ``[server] core`` named (:func:`host_core`, checked by
        :meth:`start`); that core, or None. A system that refuses leaves them where they are."""
        core = self._core
        if core is None:
            return None
        try:
            keep_to_core(core)
        except OSError as exc:  # the core went offline since the start: the host runs on, only slower
            log.warning("the host's threads could not keep to core %d (%s); they run where the system puts them",
                        core, exc.strerror or exc)
            return None
        log.info("the host's threads keep to core %d ([server] core; \"off\" leaves them to the system)", core)
        return core

    async def stop(self) -> None:
        """Close every connection and the server, write pending turn lines, close the thread pool
        (without waiting for a backend call that hangs; abandoned streamed replies stop on their own)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self.dashboard is not None:
            await self.dashboard.stop()
        if self.advertiser is not None:
            await self.advertiser.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        self.turn_log.close()
        if self.turn_json is not None:
            self.turn_json.close()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None
        if self._owns_pool and self.backends.pool is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.backends.pool.close)

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc):
        await self.stop()

    def forget_idle(self) -> int:
        """Forget every conversation idle past ``conversation_idle_s`` whose skull is not
        connected; how many were forgotten."""
        idle_s, now = self.config.server.conversation_idle_s, time.monotonic()
        gone = [name for name, conv in self.conversations.items()
                if name not in self.sessions and now - conv.last_s > idle_s]
        for name in gone:
            self._forget(name)
        return len(gone)

    def _forget(self, name: str) -> None:
        del self.conversations[name]
        self._replaced.pop(name, None)
        self.timings.forget(name)

    async def _sweep_forever(self) -> None:
        period_s = min(60.0, max(0.5, self.config.server.conversation_idle_s / 2))
        while True:
            await asyncio.sleep(period_s)
            self.forget_idle()

    def _room_for(self, name: str) -> bool:
        """Make room for a conversation of ``name`` within ``max_skulls``: forget idle ones, then
        the longest idle one not connected; False when every kept skull is connected."""
        if name in self.conversations or len(self.conversations) < self.config.server.max_skulls:
            return True
        self.forget_idle()
        if len(self.conversations) < self.config.server.max_skulls:
            return True
        offline = [(conv.last_s, n) for n, conv in self.conversations.items() if n not in self.sessions]
        if not offline:
            return False
        self._forget(min(offline)[1])
        return True

    def _credential(self, hello: p.Hello) -> str | None:
        """Why ``hello``'s token is refused, or None when it is accepted: a skull with its own
        [skulls.NAME] token must send that one; any other name, the shared [server] token."""
        own = self.config.skulls.get(hello.skull)
        if own is not None:
            if hmac.compare_digest(hello.token.encode(), own.token.encode()):
                return None
            what = "missing token" if not hello.token else "wrong token"
            return (f"{what}: skull {hello.skull} has its own token on the host ([skulls.{hello.skull}]); "
                    f"set this skull's token to it (SKULL_TOKEN)")
        shared = self.config.server.token
        if not shared or hmac.compare_digest(hello.token.encode(), shared.encode()):
            return None
        what = "missing token" if not hello.token else "wrong token"
        return f"{what}: set the skull's token to the host's (SKULL_TOKEN)"

    async def _handshake(self, ws: ServerConnection) -> p.Hello | None:
        s = self.config.server
        peer = ws.remote_address[0] if ws.remote_address else "?"
        try:
            async with asyncio.timeout(s.hello_timeout_s):  # not wait_for: see host/turn.py _blocking
                first = await ws.recv()
        except asyncio.TimeoutError:
            await _refuse(ws, p.CLOSE_HELLO_TIMEOUT, f"no hello within {s.hello_timeout_s:g} s")
            return None
        try:
            if isinstance(first, bytes):
                raise ProtocolError(p.E_UNEXPECTED_BINARY, "the first message must be a hello text frame")
            hello = p.decode_text(first, {"hello": p.Hello})
        except ProtocolError as exc:
            self.peer_failure(peer, f"refused a hello: {_shown(str(exc), 200)}")
            await _refuse(ws, p.CLOSE_BAD_HELLO, _clip(f"bad hello: {exc}"))
            return None
        if hello.protocol not in p.SUPPORTED_VERSIONS:
            await _refuse(ws, p.CLOSE_UNSUPPORTED_PROTOCOL, f"protocol {hello.protocol} is not supported; this host "
                                                        f"speaks {', '.join(map(str, p.SUPPORTED_VERSIONS))}")
            return None
        refused = self._credential(hello)
        if refused is not None:
            await _refuse(ws, p.CLOSE_UNAUTHORIZED, _clip(refused))
            self.peer_failure(peer, f"refused {hello.skull}: {refused.split(':')[0]}")
            return None
        return hello

    async def _connection(self, ws: ServerConnection) -> None:
        try:
            await self._serve_skull(ws)
        except ConnectionClosed:
            return
        except Exception as exc:  # never handed to websockets: logged here, the skull reconnects
            self.faults(f"connection from {ws.remote_address}", exc)
            with contextlib.suppress(Exception):
                await _refuse(ws, 1011, "unexpected fault on the host; it is logged there, reconnect")

    def _note_replaced(self, name: str, old_peer: str, new_peer: str) -> None:
        """A flapping pair (two skulls under one name replacing each other) is logged as such."""
        now = time.monotonic()
        times = self._replaced.setdefault(name, collections.deque(maxlen=4))
        times.append(now)
        if len(times) == times.maxlen and now - times[0] < 60.0:
            self.peer_failure(new_peer, f"another skull is using the name {name}: connections from {old_peer} and "
                                        f"{new_peer} keep replacing each other; give each skull its own [link] name")

    async def _serve_skull(self, ws: ServerConnection) -> None:
        hello = await self._handshake(ws)
        if hello is None:
            return
        name, peer = hello.skull, (ws.remote_address[0] if ws.remote_address else "?")
        old = self.sessions.get(name)
        if old is not None:
            self._note_replaced(name, old.peer, peer)
            # closed in the background: an old connection that no longer reads must not hold up
            # the new one's welcome for the close timeout
            closing = asyncio.create_task(old.ws.close(p.CLOSE_REPLACED, _clip(
                f"another skull is using the name {name}: a new connection from {peer} took it over; give each "
                f"skull its own [link] name")), name=f"replace-{name}")
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
            old._cancel_turn()
        if not self._room_for(name):
            m = self.config.server.max_skulls
            await _refuse(ws, p.CLOSE_HOST_FULL, f"the host keeps at most {m} skulls and all are connected; raise "
                                             f"[server] max_skulls on the host, or retry later")
            self.peer_failure(peer, f"refused {name}: {m} skulls (max_skulls) are connected")
            return
        conv = self.conversations.get(name)
        if conv is not None and time.monotonic() - conv.last_s > self.config.server.conversation_idle_s:
            self._forget(name)
            conv = None
        if conv is None:
            conv = self.conversations[name] = Conversation(name, collections.deque(maxlen=self.config.history_turns))
        session = self.sessions[name] = SkullSession(ws, self, conv, hello.play_rate, hello.jaw_shape,
                                                     hello.controls)
        await session.send(p.Welcome(p.PROTOCOL_VERSION, "skull-host", self.session_id,
                                     self.config.server.max_record_s,
                                     self.STATUS_HZ if hello.controls and self.dashboard is not None else 0.0))
        self.events.emit(ev.SkullConnected(name, 0, _address(ws.remote_address), hello.controls))
        status.info("skull %s connected from %s%s", name, _address(ws.remote_address), "" if old is None else
                    f" and took the place of its connection from {old.peer}: two skulls with one name? Give each "
                    f"its own [link] name")
        lines = asyncio.create_task(self._send_lines(session, hello.lines), name=f"lines-{name}")
        try:
            await session.run()
        finally:
            lines.cancel()
            if self.sessions.get(name) is session:
                del self.sessions[name]
                self.events.emit(ev.SkullLeft(name, session.last_turn))
            status.info("skull %s disconnected", name)


    async def _send_lines(self, session: SkullSession, have: str | None) -> None:
        """The line set to a skull that holds another one, beside whatever it asks meanwhile."""
        try:
            await self.lines.send_to(session, have, self.executor)
        except (ConnectionClosed, asyncio.CancelledError):
            return
        except Exception as exc:  # the skull keeps the lines it has; the connection goes on
            self.faults(f"{session.name}: sending the line set", exc)


async def _refuse(ws: ServerConnection, code: int, reason: str) -> None:
    """Close ``ws``, reading and dropping whatever the peer still sends meanwhile: a peer that
    sent more frames than the incoming queue holds would otherwise have its close reply sit
    unread behind them, and the connection would linger for the whole close timeout."""
    async def discard() -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.recv()
    draining = asyncio.create_task(discard())
    try:
        await ws.close(code, reason)
    finally:
        draining.cancel()


def _address(remote) -> str:
    """``host:port`` of a peer (``[v6]:port`` for IPv6), ``?`` when the socket did not say."""
    if not remote:
        return "?"
    host, port = remote[0], remote[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _clip(reason: str) -> str:
    """A close reason within the 123 bytes a websocket close frame holds."""
    data = reason.encode("utf-8")
    return reason if len(data) <= 123 else data[:120].decode("utf-8", "ignore") + "..."
