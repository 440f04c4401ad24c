"""A host in its own process, as a real deployment runs it: its models (the embedded speech
recogniser above all, which holds Python's GIL for hundreds of milliseconds at a time) never
share an interpreter with a skull's audio thread.

``skull demo``, ``bench/device_sync.py`` and the sound-server tests start their host this way::

    with HostProcess(config) as hp:       # a fresh interpreter ("spawn"), its port sent back
        url = hp.url                       # ws://127.0.0.1:PORT
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import signal

from .config import HostConfig

log = logging.getLogger("host.process")


def _serve(config: HostConfig, conn, log_level: int) -> None:
    """The child: start the host, send its port (or the error), serve until told to stop."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent's Ctrl-C stops us through stop()

    async def main():
        from .server import Host
        try:
            host = await Host(config).start()
        except Exception as exc:  # reported to the parent, which raises it with this text
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            return
        conn.send(("port", host.port))
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_reader(conn.fileno(), stop.set)  # any message (or the parent's death) stops us
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await stop.wait()
        finally:
            await host.stop()

    asyncio.run(main())


class HostProcess:
    """Starts a :class:`host.server.Host` in a child process and stops it again."""

    def __init__(self, config: HostConfig, *, start_timeout_s: float = 60.0):
        self.config, self.start_timeout_s = config, start_timeout_s
        self.port: int | None = None
        self._proc = None
        self._conn = None

    @property
    def url(self) -> str:
        bind = self.config.server.bind
        return f"ws://{'127.0.0.1' if bind in ('0.0.0.0', '') else bind}:{self.port}"

    def start(self) -> "HostProcess":
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(self.config, child, logging.getLogger().getEffectiveLevel()),
                                 name="skull-host", daemon=True)
        self._proc.start()
        child.close()
        if not self._conn.poll(self.start_timeout_s):
            self.stop()
            raise RuntimeError(f"the host process did not start within {self.start_timeout_s:.0f} s")
        try:
            kind, value = self._conn.recv()
        except EOFError:
            code = self._proc.exitcode
            self.stop()
            raise RuntimeError(f"the host process ended while starting (exit status {code})") from None
        if kind == "error":
            self.stop()
            raise RuntimeError(f"the host could not start: {value}")
        self.port = int(value)
        log.info("host process %d serving on %s", self._proc.pid, self.url)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the host to stop, then terminate it if it does not within ``timeout_s``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if self._conn is not None:
                self._conn.send("stop")
        except (OSError, ValueError):
            pass
        proc.join(timeout_s)
        if proc.is_alive():
            proc.terminate()
            proc.join(2.0)
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def __enter__(self) -> "HostProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
