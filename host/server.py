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
import hashlib
import hmac
import logging
import re
import ssl
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

from . import events as ev
from .build import build_backends
from .config import HostConfig, ServerConfig, is_loopback
from .filter import FamilyFilter
from .turn import Backends, Turn

log = logging.getLogger("host.server")


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


@dataclass
class Conversation:
    """What one skull and its visitors have said, kept across reconnects."""
    skull: str
    history: collections.deque = field(default_factory=lambda: collections.deque(maxlen=6))
    turns: int = 0


class SkullSession:
    """One connected skull: reads its frames, runs its turns, answers errors."""

    def __init__(self, ws: ServerConnection, host: "Host", conversation: Conversation, play_rate: int = 0,
                 jaw_shape: dict | None = None):
        self.ws, self.host, self.conversation = ws, host, conversation
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
        self._warned_long = False

    async def send(self, msg: p.Message, payload: bytes | None = None) -> None:
        frames = p.encode(msg, payload)
        async with self._send_lock:  # a header and its payload go out back to back
            for frame in frames:
                await self.ws.send(frame)

    async def run(self) -> None:
        skull = self.conversation.skull
        try:
            async for frame in self.ws:
                try:
                    await self._handle(frame)
                except ProtocolError as exc:
                    log.warning("%s: %s: %s", skull, exc.code, exc)
                    await self.send(p.Error(exc.code, str(exc)))
                except ConnectionClosed:
                    raise
                except Exception as exc:  # a fault in the host: this frame is lost, the skull is not
                    what = _describe(frame)
                    self.host.faults(f"{skull}: handling {what}", exc)
                    await self.send(p.Error(p.E_INTERNAL, f"the host hit an unexpected fault handling {what} "
                                                          f"({type(exc).__name__}); it is logged on the host. "
                                                          f"Carry on; if a turn was starting, press again"))
        finally:
            self._cancel_turn()

    def _cancel_turn(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.turn is not None:
            self.turn.cancel()

    async def _handle(self, frame) -> None:
        if isinstance(frame, bytes):
            msg, data = self.reader.read_binary(frame)
            return await self._on_payload(msg, data)
        msg = self.reader.read_text(frame)
        if isinstance(msg, p.Hello):
            raise ProtocolError(p.E_BAD_STATE, "hello was already received on this connection")
        if isinstance(msg, p.Listen):
            self._cancel_turn()  # a new press abandons whatever turn was running
            host = self.host
            self.turn = Turn(msg.turn, host.backends, host.config, skull=self.conversation.skull, events=host.events,
                             timings=host.timings, executor=host.executor, history=tuple(self.conversation.history),
                             play_rate=self.play_rate, filter=host.filter, shape=self.shape)
            self.task, self._warned_long = None, False
            host.events.emit(ev.TurnStarted(self.conversation.skull, msg.turn))
            await self.send(p.Ack(msg.turn, "listen"))
            return
        if isinstance(msg, p.Played):
            self.host.events.emit(ev.Played(self.conversation.skull, msg.turn, msg.first_audio_ms))
            return
        turn = self._current(msg.turn, msg.type)
        if isinstance(msg, p.Stop):
            if self.task is not None:
                raise ProtocolError(p.E_BAD_STATE, f"turn {msg.turn} was already stopped")
            await self.send(p.Ack(msg.turn, "stop"))
            self.task = asyncio.create_task(self._answer(turn), name=f"turn-{msg.turn}")
        # image and audio_start are kept by the reader until their binary frames arrive

    def _current(self, turn_id: int, what: str) -> Turn:
        if self.turn is None or self.turn.turn != turn_id:
            raise ProtocolError(p.E_BAD_STATE, f"{what} for turn {turn_id}, but the current turn is "
                                               f"{None if self.turn is None else self.turn.turn}; send listen first")
        return self.turn

    async def _on_payload(self, msg: p.Message, data: bytes) -> None:
        turn = self._current(msg.turn, msg.type)
        if isinstance(msg, p.Image):
            turn.on_image(data)
        elif isinstance(msg, p.AudioStart):
            if self.task is not None:
                raise ProtocolError(p.E_BAD_STATE, f"audio for turn {msg.turn} after its stop; dropped")
            if not turn.on_audio(msg, data) and not self._warned_long:
                self._warned_long = True
                await self.send(p.Error(p.E_TOO_LARGE, f"recording is longer than {self.host.config.server.max_record_s} s;"
                                                       f" the rest of turn {msg.turn} is ignored", msg.turn))

    async def _answer(self, turn: Turn) -> None:
        skull = self.conversation.skull
        try:
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


class Host:
    """Owns the backends, the conversations, the thread pool for blocking backend calls and the
    turn event bus; ``start()`` runs the websocket server, ``stop()`` ends it.

    ``events``: every turn of every skull publishes to it (see :mod:`host.events`); subscribe
    once for all skulls. ``timings`` builds ``done.timings_ms``; ``turn_log`` writes the per-turn
    log line (``turn_log.detach()`` silences it). ``workers``: threads for backend calls, shared
    by all skulls (a streamed reply holds one while it is written).
    """

    def __init__(self, config: HostConfig, backends: Backends | None = None, *, workers: int = 32):
        s = config.server
        if not s.token and not is_loopback(s.bind):
            raise ConfigError(f"refusing to listen on {s.bind} without a token: anyone on the network could "
                              f"drive the skull. Set --token (or SKULL_TOKEN), or bind 127.0.0.1")
        self.config = config
        self.backends = backends or build_backends(config)
        self.filter = FamilyFilter(config.filter)
        self.conversations: dict[str, Conversation] = {}
        self.sessions: dict[str, SkullSession] = {}
        self.session_id = uuid.uuid4().hex[:12]
        self.server = None
        self.workers = workers
        self.executor: ThreadPoolExecutor | None = None
        self.events: Bus[ev.TurnEvent] = Bus("host")
        self.timings = ev.TurnTimings().attach(self.events)
        self.turn_log = ev.TurnLog().attach(self.events)
        self.faults = FaultLog(log, "; the host goes on")

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def start(self):
        s = self.config.server
        # backend calls run on the host's own pool (the loop's default executor is left to others
        # sharing the loop); sized so a slow server does not starve the other skulls
        self.executor = ThreadPoolExecutor(self.workers, thread_name_prefix="host-backend")
        self.server = await serve(self._connection, s.bind, s.port, ssl=tls_context(s),
                                  max_size=p.TRANSPORT_MAX_BYTES, ping_interval=s.ping_interval_s,
                                  ping_timeout=s.ping_timeout_s,
                                  compression=None, logger=logging.getLogger("host.websockets"))
        b = self.backends
        log.info("host listening on %s://%s:%d (stt=%s vision=%s reply=%s tts=%s, %s)",
                 "wss" if s.tls_cert else "ws", s.bind, self.port,
                 b.stt.name, b.vision.name if b.vision else self.config.vision.backend, b.reply.name, b.tts.name,
                 "streaming" if self.config.streaming else "not streaming")
        return self

    async def stop(self) -> None:
        """Close every connection and the server, write pending turn lines, close the thread pool
        (without waiting for a backend call that hangs; abandoned streamed replies stop on their own)."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        self.turn_log.close()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc):
        await self.stop()

    async def _handshake(self, ws: ServerConnection) -> p.Hello | None:
        s = self.config.server
        try:
            first = await asyncio.wait_for(ws.recv(), s.hello_timeout_s)
        except asyncio.TimeoutError:
            await ws.close(p.CLOSE_HELLO_TIMEOUT, f"no hello within {s.hello_timeout_s:g} s")
            return None
        try:
            if isinstance(first, bytes):
                raise ProtocolError(p.E_UNEXPECTED_BINARY, "the first message must be a hello text frame")
            hello = p.decode_text(first, {"hello": p.Hello})
        except ProtocolError as exc:
            await ws.close(p.CLOSE_BAD_HELLO, f"bad hello: {exc}"[:120])
            return None
        if hello.protocol not in p.SUPPORTED_VERSIONS:
            await ws.close(p.CLOSE_UNSUPPORTED_PROTOCOL, f"protocol {hello.protocol} is not supported; this host "
                                                         f"speaks {', '.join(map(str, p.SUPPORTED_VERSIONS))}")
            return None
        if s.token and not hmac.compare_digest(hello.token.encode(), s.token.encode()):
            what = "missing token" if not hello.token else "wrong token"
            await ws.close(p.CLOSE_UNAUTHORIZED, f"{what}: set the skull's token to the host's (SKULL_TOKEN)")
            log.warning("refused %s from %s: %s", hello.skull, ws.remote_address, what)
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
                await ws.close(1011, "unexpected fault on the host; it is logged there, reconnect")

    async def _serve_skull(self, ws: ServerConnection) -> None:
        hello = await self._handshake(ws)
        if hello is None:
            return
        old = self.sessions.get(hello.skull)
        if old is not None:
            await old.ws.close(p.CLOSE_REPLACED, "replaced by a new connection from the same skull")
        conv = self.conversations.get(hello.skull)
        if conv is None:
            conv = self.conversations[hello.skull] = Conversation(
                hello.skull, collections.deque(maxlen=self.config.history_turns))
        session = self.sessions[hello.skull] = SkullSession(ws, self, conv, hello.play_rate, hello.jaw_shape)
        await session.send(p.Welcome(p.PROTOCOL_VERSION, "skull-host", self.session_id,
                                     self.config.server.max_record_s))
        log.info("skull %s connected from %s", hello.skull, ws.remote_address)
        try:
            await session.run()
        finally:
            if self.sessions.get(hello.skull) is session:
                del self.sessions[hello.skull]
            log.info("skull %s disconnected", hello.skull)
