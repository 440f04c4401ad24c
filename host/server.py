"""The host's websocket server: handshake and auth, one conversation per skull, turns.

Every connection starts with ``hello``. A wrong or missing token closes with 4401, an
unsupported protocol version with 4426; both reasons say what to do. After the handshake a
malformed frame gets an ``error`` message and the connection stays open. A skull that
reconnects under the same name takes over its conversation (the old connection is closed with
4409), so memory survives network drops.
"""
from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from skull.core import protocol as p
from skull.core.envelope import JawShape
from skull.core.errors import ConfigError, ProtocolError

from .build import build_backends
from .config import HostConfig, is_loopback
from .filter import FamilyFilter
from .turn import Backends, Turn

log = logging.getLogger("host.server")


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
        self.played: dict[int, float] = {}
        """first_audio of recent turns, as the skull measured it"""
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
        try:
            async for frame in self.ws:
                try:
                    await self._handle(frame)
                except ProtocolError as exc:
                    log.warning("%s: %s: %s", self.conversation.skull, exc.code, exc)
                    await self.send(p.Error(exc.code, str(exc)))
        finally:
            self._cancel_turn()

    def _cancel_turn(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.turn is not None and self.turn.caption_task is not None:
            self.turn.caption_task.cancel()

    async def _handle(self, frame) -> None:
        if isinstance(frame, bytes):
            msg, data = self.reader.read_binary(frame)
            return await self._on_payload(msg, data)
        msg = self.reader.read_text(frame)
        if isinstance(msg, p.Hello):
            raise ProtocolError(p.E_BAD_STATE, "hello was already received on this connection")
        if isinstance(msg, p.Listen):
            self._cancel_turn()  # a new press abandons whatever turn was running
            self.turn = Turn(msg.turn, self.host.backends, self.host.config, tuple(self.conversation.history),
                             play_rate=self.play_rate, filter=self.host.filter, shape=self.shape)
            self.task, self._warned_long = None, False
            await self.send(p.Ack(msg.turn, "listen"))
            return
        if isinstance(msg, p.Played):
            self.played[msg.turn] = msg.first_audio_ms
            if len(self.played) > 8:
                self.played.pop(min(self.played))
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
        try:
            await turn.run(self.send)
        except ConnectionClosed:
            log.info("%s: connection closed during turn %d", self.conversation.skull, turn.turn)
            return
        except asyncio.CancelledError:
            log.info("%s: turn %d abandoned", self.conversation.skull, turn.turn)
            raise
        except Exception:  # the host must survive anything one turn does
            log.exception("%s: turn %d failed", self.conversation.skull, turn.turn)
            return
        self.conversation.history.append((turn.transcript, turn.reply))
        self.conversation.turns += 1
        # first_audio comes from the skull when it starts playing: usually before done
        for _ in range(20):
            if turn.turn in self.played or self.turn is not turn:
                break
            await asyncio.sleep(0.05)
        t = dict(turn.timings_ms)
        if turn.turn in self.played:
            t["first_audio"] = self.played[turn.turn]
        log.info("%s: turn %d %s heard=%r caption=%r reply=%r", self.conversation.skull, turn.turn,
                 " ".join(f"{k}={v:.0f}" for k, v in t.items()), turn.transcript, turn.caption, turn.reply)


class Host:
    """Owns the backends and the conversations; ``serve()`` runs the websocket server."""

    def __init__(self, config: HostConfig, backends: Backends | None = None):
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

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def start(self):
        s = self.config.server
        # backend calls run in worker threads; a slow server must not starve the others
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(32, thread_name_prefix="backend"))
        self.server = await serve(self._connection, s.bind, s.port, max_size=p.TRANSPORT_MAX_BYTES,
                                  ping_interval=s.ping_interval_s, ping_timeout=s.ping_timeout_s,
                                  compression=None, logger=logging.getLogger("host.websockets"))
        b = self.backends
        log.info("host listening on ws://%s:%d (stt=%s vision=%s reply=%s tts=%s, %s)", s.bind, self.port,
                 b.stt.name, b.vision.name if b.vision else self.config.vision.backend, b.reply.name, b.tts.name,
                 "streaming" if self.config.streaming else "not streaming")
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

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
        except ConnectionClosed:
            return
