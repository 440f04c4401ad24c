"""Finding the host by itself: mDNS / DNS-SD with zeroconf.

A host that listens where other machines can reach it advertises a ``_skull._tcp.local.``
service (``skull.core.protocol.DISCOVERY_SERVICE``) whose TXT record holds its name, its
protocol version and its scheme (ws or wss). A skull whose ``[link] url`` is empty asks, before
each connection (so it follows a host whose address changed):

1. ``[link] host_name`` set: only the host advertising that name, over mDNS;
2. otherwise a host on this machine at ``ws://127.0.0.1:8765`` (``skull host`` with its
   defaults) if one listens there, at once;
3. otherwise the first host that answers over mDNS within ``[link] discovery_wait_s``;
4. nothing found: ``ws://127.0.0.1:8765`` (with ``host_name``: nothing, the link waits and
   looks again), and the next attempt asks again.

``[link] discovery = false`` (``skull run --no-discovery``) skips mDNS for networks that forbid
multicast: then an empty url means ``ws://127.0.0.1:8765``.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from .config import DEFAULT_URL, LinkConfig
from .core import protocol as p

log = logging.getLogger("skull.discovery")

LOCAL_PROBE_S = 0.3
"""seconds to wait for a host on this machine at the default address to accept a connection"""
RESOLVE_MS = 1500
"""milliseconds to wait for an advertised host's address and TXT record once its name is seen"""


@dataclass(frozen=True)
class FoundHost:
    """A host found over mDNS."""
    name: str
    """the name it advertises ([server] name on the host; its machine's name by default)"""
    url: str
    """where to reach it, e.g. ws://192.168.1.20:8765"""
    protocol: int
    """the protocol version it speaks"""


def found_host(info) -> FoundHost | None:
    """A zeroconf ServiceInfo as a FoundHost; None when it has no IPv4 address or a broken TXT."""
    props = {k.decode("utf-8", "replace"): (v or b"").decode("utf-8", "replace")
             for k, v in (info.properties or {}).items()}
    addresses = info.parsed_addresses()
    if not addresses or not info.port:
        return None
    try:
        protocol = int(props.get("protocol", ""))
    except ValueError:
        return None
    scheme = "wss" if props.get("scheme") == "wss" else "ws"
    name = props.get("name") or info.name.removesuffix("." + p.DISCOVERY_SERVICE)
    return FoundHost(name, f"{scheme}://{addresses[0]}:{info.port}", protocol)


async def browse(wait_s: float, host_name: str = "") -> FoundHost | None:
    """The first host of this protocol that answers over mDNS within ``wait_s`` (only the one
    advertising ``host_name`` when given); None when none does. Hosts of another protocol
    version are named in the log and passed over. Raises (OSError...) when mDNS cannot run here."""
    from zeroconf import IPVersion, ServiceStateChange
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

    loop = asyncio.get_running_loop()
    seen: asyncio.Queue = asyncio.Queue()

    def changed(zeroconf, service_type, name, state_change) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            loop.call_soon_threadsafe(seen.put_nowait, name)

    aiozc = AsyncZeroconf(ip_version=IPVersion.V4Only)
    browser = AsyncServiceBrowser(aiozc.zeroconf, [p.DISCOVERY_SERVICE], handlers=[changed])
    deadline = loop.time() + wait_s
    try:
        while (left := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(left):  # not wait_for, which can lose a cancel on Python 3.11
                    name = await seen.get()
            except asyncio.TimeoutError:
                return None
            info = AsyncServiceInfo(p.DISCOVERY_SERVICE, name)
            if not await info.async_request(aiozc.zeroconf, RESOLVE_MS):
                continue
            host = found_host(info)
            if host is None or (host_name and host.name != host_name):
                continue
            if host.protocol != p.PROTOCOL_VERSION:
                log.warning("host %r at %s speaks protocol %d and this skull %d; passed over (update the older "
                            "one)", host.name, host.url, host.protocol, p.PROTOCOL_VERSION)
                continue
            return host
        return None
    finally:
        await browser.async_cancel()
        await aiozc.async_close()


async def local_host_listens() -> bool:
    """True when something accepts connections at the default host address on this machine."""
    try:
        async with asyncio.timeout(LOCAL_PROBE_S):
            _, writer = await asyncio.open_connection("127.0.0.1", 8765)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


class Finder:
    """Where the link connects next, asked before every connection (see the module's docstring).
    Says which host it chose when the choice changes, and why it falls back to the default."""

    def __init__(self, config: LinkConfig):
        self.config = config
        self.chosen: str | None = None
        self._broken_said = False

    async def url(self) -> str | None:
        """The url to connect to now; None: none yet (a named host that did not answer)."""
        c = self.config
        if c.url:
            return c.url
        if not c.discovery:
            return self._choose(DEFAULT_URL, "the default ([link] discovery is off)")
        if not c.host_name and await local_host_listens():
            return self._choose(DEFAULT_URL, "a host on this machine at the default address")
        try:
            host = await browse(c.discovery_wait_s, c.host_name)
        except Exception as exc:  # no multicast here (no interface, not permitted): the default, said once
            if not self._broken_said:
                log.warning("mDNS discovery cannot run here (%s: %s); set [link] url, or --url, to reach a host "
                            "on another machine", type(exc).__name__, exc)
                self._broken_said = True
            host = None
        if host is not None:
            return self._choose(host.url, f"host {host.name!r}, found over mDNS")
        if c.host_name:  # that host and no other: look again before the next attempt
            if self.chosen != "":
                log.warning("no host %r answered over mDNS within %g s; looking again", c.host_name,
                            c.discovery_wait_s)
            self.chosen = ""
            return None
        return self._choose(DEFAULT_URL, f"the default: no host answered over mDNS within {c.discovery_wait_s:g} s",
                            quiet=self.chosen == DEFAULT_URL)

    def _choose(self, url: str, why: str, quiet: bool = False) -> str:
        if url != self.chosen and not quiet:
            log.info("connecting to %s: %s", url, why)
        elif url != self.chosen:
            log.debug("connecting to %s: %s", url, why)
        self.chosen = url
        return url

