"""The skull's websocket link to its host: hello, keepalive, and reconnection with capped
exponential backoff and jitter. Errors are sorted into retryable (host down, network, timeouts,
a host that answers nonsense: try again) and fatal (wrong token, unsupported protocol, a hello
the host cannot read: retrying cannot help; say so and stop).

Nothing a host sends can end the link: a malformed frame is skipped (the first few of a
connection logged, the rest counted and summed up in one line when it closes), and an
exception while handling a good one goes to ``on_fault`` (the agent leaves the hardware safe
and ends the turn); the link reads on.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import logging
import ssl
from typing import Awaitable, Callable

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidMessage, InvalidURI

from .core import protocol as p
from .config import LinkConfig, fingerprint_hex
from .core.errors import ProtocolError, SkullError
from .core.faults import FaultLog
from .discovery import Finder
from .supervisor import backoff_delays

log = logging.getLogger("skull.link")

FATAL_CLOSE_CODES = {p.CLOSE_UNAUTHORIZED: "the host refused the token",
                     p.CLOSE_UNSUPPORTED_PROTOCOL: "the host speaks another protocol version",
                     p.CLOSE_BAD_HELLO: "the host could not read this skull's hello"}


class LinkFatal(SkullError, ConnectionError):
    """The host refused this skull in a way that retrying cannot fix."""


class TlsRefused(SkullError, ConnectionError):
    """The host's certificate is not the one this skull trusts: nothing was sent to it. Retried
    with the reconnect backoff (the host may be mid-change), and said once."""


def _colons(hex_digits: str) -> str:
    return "sha256:" + ":".join(hex_digits[i:i + 2] for i in range(0, len(hex_digits), 2))


def tls_context(config: LinkConfig) -> ssl.SSLContext | None:
    """How a wss:// link checks the host: the system's certificate authorities (or [link] tls_ca)
    and the URL's host name; with [link] tls_fingerprint and no tls_ca, the pinned certificate
    alone (checked by :func:`check_pin` before hello). None for ws://."""
    if not config.url.startswith("wss://"):
        return None
    try:
        ctx = ssl.create_default_context(cafile=config.tls_ca or None)
    except (OSError, ValueError) as exc:
        raise LinkFatal(f"[link] tls_ca {config.tls_ca} is not a PEM file of certificate authorities: {exc}") from None
    if config.tls_fingerprint and not config.tls_ca:  # a self-signed certificate: its fingerprint is the trust
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def check_pin(ws, config: LinkConfig) -> None:
    """Refuse a host whose certificate is not the pinned one ([link] tls_fingerprint), right
    after the TLS handshake: before hello, so the token never reaches it."""
    pinned = fingerprint_hex(config.tls_fingerprint) if config.tls_fingerprint else None
    if pinned is None:
        return
    tls = ws.transport.get_extra_info("ssl_object")
    der = tls.getpeercert(binary_form=True) if tls is not None else None
    if der is None:
        raise TlsRefused(f"the host at {config.url} showed no certificate, and [link] tls_fingerprint pins one; "
                         f"nothing was sent to it")
    seen = hashlib.sha256(der).hexdigest().upper()
    if seen != pinned:
        raise TlsRefused(f"the host's certificate is {_colons(seen)}, not the pinned {_colons(pinned)}; if the "
                         f"host's certificate changed, update [link] tls_fingerprint (skull host "
                         f"--print-fingerprint shows it). The token was not sent")


def tls_problem(exc: BaseException, url: str, opened: bool) -> str | None:
    """What a failure to open the link says about TLS, for the person setting it up, or None.
    ``opened``: a websocket handshake with ``url`` has worked (in this attempt or an earlier
    one), so the scheme is right whatever this failure looks like."""
    if isinstance(exc, TlsRefused):
        return str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"the host's certificate at {url} failed verification ({exc.verify_message}); for a self-signed "
                f"certificate pin it with [link] tls_fingerprint = \"sha256:...\" (skull host --print-fingerprint"
                f" shows it), for a private certificate authority set [link] tls_ca. The token was not sent")
    if opened:
        return None
    if url.startswith("wss://") and isinstance(exc, (ssl.SSLError, ConnectionResetError, EOFError)):
        return (f"the TLS handshake with {url} failed ({exc or type(exc).__name__}); if the host serves plain "
                f"ws:// (started without --tls-cert, and no TLS proxy in front of it), use a ws:// url")
    if url.startswith("ws://") and isinstance(exc, InvalidMessage) and isinstance(exc.__cause__, EOFError):
        return (f"the host at {url} closed the connection without answering the websocket handshake; if it "
                f"serves TLS (skull host --tls-cert, or a proxy such as Caddy or nginx in front of it), the url "
                f"must start with wss://")
    return None


NAME_TAKEN_RETRY_S = 30.0
"""seconds a skull waits before reconnecting after another skull with its name took its place"""


UNREACHABLE_HINT = ("; is skull host running there? A host on another machine must listen on an address this "
                    "skull can reach: it listens on 127.0.0.1 (its own machine only) unless started with --bind "
                    "(skull host --bind 0.0.0.0 --token SECRET), and its port must be open in its firewall")
"""the likely causes of a host that does not answer, said with the first failure of a run"""


OnMessage = Callable[[p.Message, "bytes | None"], Awaitable[None]]
OnState = Callable[[bool], Awaitable[None]]
OnFault = Callable[[str, BaseException], None]

MALFORMED_LOGGED = 3
"""malformed frames of one connection logged one by one; the rest are counted, not logged"""


class Link:
    def __init__(self, config: LinkConfig, on_message: OnMessage, on_state: OnState, play_rate: int = 0,
                 jaw_shape: dict | None = None, on_fault: OnFault | None = None):
        self.config = config
        self.play_rate = play_rate
        """the speaker's rate, told to the host so speech arrives ready to play"""
        self.jaw_shape = jaw_shape or {}
        """this skull's [shape] keys, told to the host, which makes the jaw tracks with them"""
        self.lines: str | None = None
        """the id of the line set the skull keeps ("" none yet), told to the host in hello; None: the
        skull takes no lines"""
        self.on_message, self.on_state = on_message, on_state
        self.faults = FaultLog(log, "; the skull goes on")
        self.on_fault = on_fault or self.faults
        self.connected = False
        self.welcome: p.Welcome | None = None
        self.connects = 0
        self.name_taken = False
        """the last connection ended because another skull with this skull's name took its place"""
        self._out: asyncio.Queue | None = None
        self.url = config.url
        """the host's address this link uses (found by itself when [link] url is empty; skull.discovery)"""

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
        finder = Finder(self.config)
        delays, tls_said = None, None
        hinted = False  # the likely causes of an unreachable host are named once per run
        # a handshake that once worked with a url rules out a wrong scheme there: a host (or the
        # proxy in front of it) that later closes without answering is a network fault, not TLS
        worked: set[str] = set()
        while True:
            opened, replaced = False, False
            url = await finder.url()  # asked again before every attempt: a host that moved is followed
            if url is None:  # the named host is not there (yet)
                delays = delays or backoff_delays(self.config.reconnect_min_s, self.config.reconnect_max_s)
                await asyncio.sleep(next(delays))
                continue
            self.url = url
            c = self.config if self.url == self.config.url else dataclasses.replace(self.config, url=self.url)
            tls = tls_context(c)
            try:
                async with connect(c.url, open_timeout=5, ping_interval=c.ping_interval_s,
                                   ping_timeout=c.ping_timeout_s, close_timeout=2, max_size=p.TRANSPORT_MAX_BYTES,
                                   compression=None, proxy=None, ssl=tls) as ws:
                    opened = True
                    worked.add(c.url)
                    check_pin(ws, c)  # before hello: a wrong host never sees the token
                    tls_said = None
                    await self._serve(ws, c)
                    delays = None  # it worked for a while: start the backoff afresh
            except LinkFatal:
                raise
            except (OSError, asyncio.TimeoutError, ConnectionClosed, InvalidHandshake) as exc:
                rcvd = getattr(exc, "rcvd", None) if isinstance(exc, ConnectionClosed) else None
                said = None if rcvd is not None else tls_problem(exc, c.url, opened or c.url in worked)
                if rcvd is not None and rcvd.code == p.CLOSE_REPLACED:  # not a network fault: another skull
                    replaced = self.name_taken = True
                    log.warning("another skull uses the name %r on the host at %s and took this skull's place; "
                                "give each skull its own [link] name in skull.toml (or skull run --name); "
                                "retrying in %.0f s", c.name, c.url, NAME_TAKEN_RETRY_S)
                elif said is not None:  # a TLS setup problem will not mend by itself: said once, retried quietly
                    log.log(logging.ERROR if said != tls_said else logging.DEBUG, "%s; retrying", said)
                    tls_said = said
                else:  # the first failure of an outage is a warning; the retries after it are not news
                    log.log(logging.WARNING if delays is None else logging.INFO, "host %s unreachable (%s)%s; retrying",
                            c.url, exc or type(exc).__name__, "" if hinted or c.url in worked else UNREACHABLE_HINT)
                    hinted = hinted or c.url not in worked
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
            # a skull that lost its name to another waits long: two skulls under one name must
            # not take the connection from each other several times a second
            await asyncio.sleep(NAME_TAKEN_RETRY_S if replaced else next(delays))

    async def _serve(self, ws, c: LinkConfig) -> None:
        await ws.send(p.encode(p.Hello(p.PROTOCOL_VERSION, c.name, c.token, self.play_rate, self.jaw_shape,
                                            self.lines, controls=True))[0])
        try:
            async with asyncio.timeout(10):  # not wait_for, which can lose a cancel on Python 3.11
                first = await ws.recv()
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
        self.name_taken = False
        self.connects += 1
        log.info("connected to %s (protocol %d, session %r)", c.url, welcome.protocol, welcome.session[:80])
        await self.on_state(True)
        writer = asyncio.create_task(self._write(ws, self._out), name="link-writer")
        reader = p.FrameReader(p.HOST_MESSAGES)
        ignored: collections.Counter = collections.Counter()  # malformed frames of this connection, by code
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
                except ProtocolError as exc:  # the first few are logged, the rest counted: never one line per frame
                    msg, payload = (exc.message, None) if isinstance(exc, p.PayloadMissing) else (None, None)
                    if msg is not None and msg.has_payload:  # that text frame announces a payload in turn
                        msg = None
                    n = sum(ignored.values()) + 1
                    if n <= MALFORMED_LOGGED:
                        log.warning("malformed frame from host ignored: %s%s", exc, "" if n < MALFORMED_LOGGED else
                                    " (further ones on this connection are counted and summed up when it closes)")
                    ignored[exc.code] += 1
                    if msg is None:
                        continue  # else: the speech is lost, the done or error that came in its place is not
                try:
                    await self.on_message(msg, payload)
                except Exception as exc:  # one message must not end the link
                    self.on_fault(f"handling {msg.type} from the host", exc)
        finally:
            writer.cancel()
            if sum(ignored.values()) > MALFORMED_LOGGED:
                log.warning("host %s sent %d malformed frames on this connection (%s); all were ignored", c.url,
                            sum(ignored.values()), ", ".join(f"{code} {n}" for code, n in ignored.most_common()))

    @staticmethod
    async def _write(ws, queue: asyncio.Queue) -> None:
        while True:
            frames = await queue.get()
            for frame in frames:
                await ws.send(frame)
