"""A host in its own process, as a real deployment runs it: its models (the embedded speech
recogniser above all, which holds Python's GIL for hundreds of milliseconds at a time) never
share an interpreter with a skull's audio thread.

``skull demo``, ``bench/device_sync.py`` and the sound-server tests start their host this way::

    with HostProcess(config) as hp:       # python -m host.process: its port comes back on stdout
        url = hp.url                       # ws://127.0.0.1:PORT
"""
from __future__ import annotations

import asyncio
import logging
import os
import pickle
import select
import signal
import subprocess
import sys
import time

from .config import HostConfig

log = logging.getLogger("host.process")


def _serve() -> None:
    """The child (``python -m host.process``): read the pickled config from stdin, start the
    host, print its port (or the error) on stdout, serve until stdin closes or SIGTERM."""
    config, log_level = pickle.load(sys.stdin.buffer)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent's Ctrl-C stops us through stop()

    async def main():
        from .server import Host
        try:
            host = await Host(config).start()
        except Exception as exc:  # reported to the parent, which raises it with this text
            print(f"error {type(exc).__name__}: {exc}", flush=True)
            return
        host.keep_to_one_core()
        print(f"port {host.port}", flush=True)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_reader(sys.stdin.fileno(), stop.set)  # the parent closed our stdin (or died)
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
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        bind = self.config.server.bind
        return f"ws://{'127.0.0.1' if bind in ('0.0.0.0', '') else bind}:{self.port}"

    def start(self) -> "HostProcess":
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        self._proc = subprocess.Popen([sys.executable, "-m", "host.process"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, env=env)
        self._proc.stdin.write(pickle.dumps((self.config, logging.getLogger().getEffectiveLevel())))
        self._proc.stdin.flush()
        line = b""
        deadline = time.monotonic() + self.start_timeout_s
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._proc.stdout], [], [], left)[0]:
                self.stop()
                raise RuntimeError(f"the host process did not start within {self.start_timeout_s:.0f} s")
            ch = os.read(self._proc.stdout.fileno(), 256)  # unbuffered: select() sees what is left
            if not ch:
                code = self._proc.wait()
                self.stop()
                raise RuntimeError(f"the host process ended while starting (exit status {code}); its error "
                                   f"is above")
            line += ch
        kind, _, value = line.decode().strip().partition(" ")
        if kind != "port":
            self.stop()
            raise RuntimeError(f"the host could not start: {value}")
        self.port = int(value)
        log.info("host process %d serving on %s", self._proc.pid, self.url)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the host to stop (its stdin closes), then terminate it if it does not."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> "HostProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    _serve()
