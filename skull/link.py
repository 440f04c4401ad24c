"""The skull's websocket link to its host: hello, keepalive, and reconnection with capped
exponential backoff and jitter. Errors are sorted into retryable (host down, network, timeouts,
a host that answers nonsense: try again) and fatal (wrong token, unsupported protocol, a hello
the host cannot read: retrying cannot help; say so and stop).

Nothing a host sends can end the link: a malformed frame is logged and skipped, and an
exception while handling a good one goes to ``on_fault`` (the agent leaves the hardware safe
and ends the turn); the link reads on.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from .core import protocol as p
from .config import LinkConfig
from .core.errors import ProtocolError, SkullError
from .core.faults import FaultLog
from .supervisor import backoff_delays

log = logging.getLogger("skull.link")

FATAL_CLOSE_CODES = {p.CLOSE_UNAUTHORIZED: "the host refused the token",
                     p.CLOSE_UNSUPPORTED_PROTOCOL: "the host speaks another protocol version",
                     p.CLOSE_BAD_HELLO: "the host could not read this skull's hello"}


class LinkFatal(SkullError, ConnectionError):
    """The host refused this skull in a way that retrying cannot fix."""


OnMessage = Callable[[p.Message, "bytes | None"], Awaitable[None]]
OnState = Callable[[bool], Awaitable[None]]
OnFault = Callable[[str, BaseException], None]


class Link:
    def __init__(self, config: LinkConfig, on_message: OnMessage, on_state: OnState, play_rate: int = 0,
                 jaw_shape: dict | None = None, on_fault: OnFault | None = None):
        self.config = config
        self.play_rate = play_rate
        """the speaker's rate, told to the host so speech arrives ready to play"""
        self.jaw_shape = jaw_shape or {}
        """this skull's [shape] keys, told to the host, which makes the jaw tracks with them"""
        self.on_message, self.on_state = on_message, on_state
        self.faults = FaultLog(log, "; the skull goes on")
        self.on_fault = on_fault or self.faults
        self.connected = False
        self.welcome: p.Welcome | None = None
        self.connects = 0
        self._out: asyncio.Queue | None = None

    def send(self, msg: p.Message, payload: bytes | None = None) -> bool:
        """Queue a message (and its payload) for the host; False when offline (dropped)."""
        if not self.connected or self._out is None:
            log.debug("offline: %s not sent", msg.type)
            return False
        self._out.put_nowait(p.encode(msg, payload))
        return True

    def send_audio(self, chunk: bytes) -> bool:
        """Queue a microphone chunk (after audio_start)."""
        if not self.connected or self._out is None:
            return False
        self._out.put_nowait([chunk])
        return True

    async def run(self) -> None:
        """Connect, serve, reconnect; returns only by cancellation, raises LinkFatal."""
        c = self.config
        delays = None
        while True:
            try:
                async with connect(c.url, open_timeout=5, ping_interval=c.ping_interval_s,
                                   ping_timeout=c.ping_timeout_s, close_timeout=2, max_size=p.TRANSPORT_MAX_BYTES,
                                   compression=None, proxy=None) as ws:
                    await self._serve(ws)
                    delays = None  # it worked for a while: start the backoff afresh
            except LinkFatal:
                raise
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code == p.CLOSE_REPLACED:  # not a network fault
                    log.warning("host %s: %s; retrying", c.url, exc.rcvd.reason or "another skull is using the "
                                f"name {c.name}")
                else:
                    log.log(logging.WARNING if delays is None else logging.INFO, "host %s unreachable (%s); "
                            "retrying", c.url, exc or type(exc).__name__)
            except (OSError, asyncio.TimeoutError, InvalidHandshake) as exc:
                # the first failure of an outage is a warning; the retries after it are not news
                log.log(logging.WARNING if delays is None else logging.INFO, "host %s unreachable (%s); retrying",
                        c.url, exc or type(exc).__name__)
            except InvalidURI as exc:
                raise LinkFatal(f"link url {c.url!r} is not a websocket URL: {exc}") from None
            except ProtocolError as exc:  # the host answered hello with something unreadable
                log.log(logging.WARNING if delays is None else logging.INFO, "host %s: %s; retrying", c.url, exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # anything else: logged once, and the link tries again
                self.faults(f"link to {c.url}", exc)
            finally:
                if self.connected:
                    self.connected = False
                    self._out = None
                    await self.on_state(False)
            delays = delays or backoff_delays(c.reconnect_min_s, c.reconnect_max_s)
            await asyncio.sleep(next(delays))

    async def _serve(self, ws) -> None:
        c = self.config
        await ws.send(p.encode(p.Hello(p.PROTOCOL_VERSION, c.name, c.token, self.play_rate, self.jaw_shape))[0])
        try:
            first = await asyncio.wait_for(ws.recv(), 10)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            if code in FATAL_CLOSE_CODES:
                raise LinkFatal(f"{FATAL_CLOSE_CODES[code]} (close {code}: {exc.rcvd.reason})") from None
            raise
        if not isinstance(first, str):
            raise ProtocolError(p.E_UNEXPECTED_BINARY, "the host answered hello with a binary frame, not welcome; "
                                                       "is [link] url a skull host?")
        try:
            welcome = p.decode_text(first, {"welcome": p.Welcome})
        except ProtocolError as exc:
            raise ProtocolError(exc.code, f"the host did not answer hello with a valid welcome ({exc}); is [link] "
                                          f"url a skull host of protocol {p.PROTOCOL_VERSION}?") from None
        self.welcome, self.connected, self._out = welcome, True, asyncio.Queue()
        self.connects += 1
        log.info("connected to %s (protocol %d, session %s)", c.url, welcome.protocol, welcome.session)
        await self.on_state(True)
        writer = asyncio.create_task(self._write(ws, self._out), name="link-writer")
        reader = p.FrameReader(p.HOST_MESSAGES)
        try:
            async for frame in ws:
                try:
                    if isinstance(frame, bytes):
                        msg, payload = reader.read_binary(frame)
                    else:
                        msg = reader.read_text(frame)
                        if msg.has_payload:
                            continue  # its payload is the next frame
                        payload = None
                except ProtocolError as exc:
                    log.warning("malformed frame from host ignored: %s", exc)
                    continue
                try:
                    await self.on_message(msg, payload)
                except Exception as exc:  # one message must not end the link
                    self.on_fault(f"handling {msg.type} from the host", exc)
        finally:
            writer.cancel()

    @staticmethod
    async def _write(ws, queue: asyncio.Queue) -> None:
        while True:
            frames = await queue.get()
            for frame in frames:
                await ws.send(frame)
