"""The host advertises itself over mDNS / DNS-SD (zeroconf), so skulls find it by themselves.

A ``_skull._tcp.local.`` service named after the host ([server] name, by default the machine's
name), with TXT ``name``, ``protocol`` (the protocol version) and ``scheme`` (ws or wss), on the
addresses the host listens on. Only a host other machines can reach is advertised: one that
listens on 127.0.0.1 (the default) is reached by skulls on its own machine at
ws://127.0.0.1:8765 without any of this. The addresses are looked at again every
``RECHECK_S`` seconds and the record updated when they changed (a new DHCP lease), and skulls
browse again before each connection, so they follow the host. ``[server] discovery = false``
(``skull host --no-discovery``) turns it off for networks that forbid multicast.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

from skull.core import protocol as p

from .config import ServerConfig, is_loopback

log = logging.getLogger("host.discovery")

RECHECK_S = 10.0
"""seconds between two looks at this machine's addresses"""


def machine_name() -> str:
    """This machine's name, as the host advertises itself by default."""
    return socket.gethostname().split(".")[0] or "skull-host"


def _own_ipv4() -> list[str]:
    """This machine's IPv4 addresses other than loopback, in a stable order."""
    import ifaddr  # zeroconf's own dependency
    found = {ip.ip for adapter in ifaddr.get_adapters() for ip in adapter.ips
             if isinstance(ip.ip, str) and not ipaddress.ip_address(ip.ip).is_loopback}
    return sorted(found)


def advertised_addresses(bind: str) -> list[str]:
    """The addresses a host listening on ``bind`` is advertised at: all of this machine's for
    0.0.0.0 (or ""), else the address ``bind`` names."""
    if bind in ("", "0.0.0.0", "::"):
        return _own_ipv4()
    try:
        return [str(ipaddress.IPv4Address(bind))]
    except ValueError:
        try:
            return sorted({info[4][0] for info in socket.getaddrinfo(bind, None, socket.AF_INET)})
        except OSError:
            return []


class Advertiser:
    """The host's service record, kept up to date while the host runs; ``close()`` withdraws it."""

    def __init__(self, server: ServerConfig, port: int):
        self.server, self.port = server, port
        self.name = server.name or machine_name()
        self.addresses: list[str] = []
        self._zc = None
        self._info = None
        self._task: asyncio.Task | None = None

    def wanted(self) -> str | None:
        """Why the host is not advertised (None: it is)."""
        if not self.server.discovery:
            return "[server] discovery is off"
        if is_loopback(self.server.bind):
            return (f"it listens on {self.server.bind} (this machine only); skulls here reach it at "
                    f"ws://127.0.0.1:{self.port}")
        return None

    def start(self) -> None:
        """Advertise in the background (announcing takes about two seconds of mDNS probing)."""
        why = self.wanted()
        if why is not None:
            log.debug("not advertised over mDNS: %s", why)
            return
        self._task = asyncio.create_task(self._run(), name="host-mdns")

    def _record(self, addresses: list[str]):
        from zeroconf.asyncio import AsyncServiceInfo
        scheme = "wss" if self.server.tls_cert else "ws"
        return AsyncServiceInfo(p.DISCOVERY_SERVICE, f"{self.name}.{p.DISCOVERY_SERVICE}", port=self.port,
                                addresses=[socket.inet_aton(a) for a in addresses],
                                properties={"name": self.name, "protocol": str(p.PROTOCOL_VERSION), "scheme": scheme},
                                server=f"{machine_name()}.local.")

    async def _run(self) -> None:
        from zeroconf import InterfaceChoice, IPVersion
        from zeroconf.asyncio import AsyncZeroconf
        bind = self.server.bind
        try:
            self.addresses = advertised_addresses(bind) or ["127.0.0.1"]
            interfaces = InterfaceChoice.All if bind in ("", "0.0.0.0", "::") else self.addresses
            self._zc = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
            self._info = self._record(self.addresses)
            await (await self._zc.async_register_service(self._info, allow_name_change=True))
            instance = self._info.name.removesuffix("." + p.DISCOVERY_SERVICE)  # "name (2)" if taken
            log.info("advertised over mDNS as %r (%s) at %s, port %d", instance, p.DISCOVERY_SERVICE,
                     ", ".join(self.addresses), self.port)
            while True:
                await asyncio.sleep(RECHECK_S)
                now = await asyncio.to_thread(advertised_addresses, bind)
                if now and now != self.addresses:
                    log.info("this machine's addresses changed to %s; the mDNS record follows", ", ".join(now))
                    self.addresses, self._info = now, self._record(now)
                    await (await self._zc.async_update_service(self._info))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # mDNS cannot run here: the host serves on, skulls need its url
            log.warning("cannot advertise over mDNS (%s: %s); skulls must be given this host's url ([link] url), "
                        "or start the host with --no-discovery", type(exc).__name__, exc)

    async def close(self) -> None:
        """Withdraw the record (a goodbye packet) and close; idempotent."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._zc is not None:
            zc, self._zc = self._zc, None
            try:
                await zc.async_close()  # unregisters every service it holds first
            except Exception as exc:  # the host stops anyway
                log.debug("closing mDNS: %s: %s", type(exc).__name__, exc)
