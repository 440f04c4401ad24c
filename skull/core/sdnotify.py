"""systemd's readiness and watchdog protocol (``sd_notify``), by hand.

The protocol is one datagram of ``KEY=value`` lines to the unix socket named by
``$NOTIFY_SOCKET`` (an abstract socket when the name starts with ``@``). Those dozen lines are
written here rather than taken from a package (python-systemd, sdnotify): the former needs
libsystemd's headers to build on a Pi, the latter is unmaintained, and neither does more.
Without ``$NOTIFY_SOCKET`` (not started by systemd with ``Type=notify``) nothing is sent.

A service reports ``READY=1`` once it is up, ``WATCHDOG=1`` every half of ``$WATCHDOG_USEC``
from its main event loop (:func:`keep_watchdog`: a loop that is stuck sends nothing, and
systemd restarts the service after ``WatchdogSec``), ``STATUS=...`` for ``systemctl status``
and ``STOPPING=1`` on its way out.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Callable

log = logging.getLogger("skull.sdnotify")


class Notifier:
    """``Notifier.from_env()``: sends to ``$NOTIFY_SOCKET``, or does nothing when it is unset."""

    def __init__(self, address: str | None, watchdog_usec: int = 0):
        self.address = address
        self.watchdog_usec = watchdog_usec
        """systemd's WatchdogSec in microseconds; 0 = no watchdog"""
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_env(cls) -> "Notifier":
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if pid and pid != str(os.getpid()):  # the watchdog is some other process's business
            usec = ""
        return cls(os.environ.get("NOTIFY_SOCKET") or None, int(usec) if usec.isdigit() else 0)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1 (half of WatchdogSec), seconds; None without a watchdog."""
        return self.watchdog_usec / 2e6 if self.enabled and self.watchdog_usec > 0 else None

    def send(self, **fields: str) -> None:
        """One datagram: ``send(READY="1", STATUS="idle")``. Failures are logged once, never raised:
        a service must not stop because its supervisor's socket went away."""
        if self.address is None:
            return
        text = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        address = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(text, address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("could not tell systemd %s through %s: %s", ",".join(fields), self.address, exc)

    def ready(self, status: str = "") -> None:
        self.send(READY="1", **({"STATUS": status} if status else {}))

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def stopping(self) -> None:
        self.send(STOPPING="1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def keep_watchdog(notifier: Notifier, healthy: Callable[[], str | None] = lambda: None) -> None:
    """Send WATCHDOG=1 every half WatchdogSec from this event loop, for as long as it runs.
    ``healthy()`` returns None when all is well, or what is wrong: then no ping is sent (and
    systemd restarts the service once WatchdogSec passes without one). Returns at once when
    there is no watchdog."""
    interval = notifier.watchdog_interval_s
    if interval is None:
        return
    sick = None
    while True:
        problem = healthy()
        if problem is None:
            notifier.send(WATCHDOG="1")
        elif problem != sick:
            log.error("not feeding systemd's watchdog: %s", problem)
        sick = problem
        await asyncio.sleep(interval)
