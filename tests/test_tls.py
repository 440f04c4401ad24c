"""The link across the internet: a host serving wss:// with its own certificate, a skull that
trusts it by its SHA-256 fingerprint, and the clear refusals when the two do not match.

The certificates are made here with the openssl command (the venv has no cryptography package)."""
import asyncio
import dataclasses
import logging
import os
import re
import shutil
import subprocess
import sys

import pytest
from websockets.exceptions import ConnectionClosed

from conftest import ask, sim_body, skull_config, start_host, wait_for
from host.config import ServerConfig, load_host_config
from host.server import Host, tls_context
from skull.agent import Agent
from skull.config import LinkConfig
from skull.core.errors import ConfigError
from skull.link import Link
from skull.machine import State

TOKEN = "tls-test-token"


def _make_cert(folder, name: str):
    """A self-signed certificate for 127.0.0.1 and localhost, and its key, as PEM files."""
    if shutil.which("openssl") is None:
        pytest.fail("these tests make their certificates with the openssl command: apt-get install openssl")
    cert, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    out = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256"],
                         check=True, capture_output=True, text=True).stdout
    return cert, key, "sha256:" + out.strip().split("=", 1)[1]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    return {"host": _make_cert(folder, "skull-host"), "other": _make_cert(folder, "impostor")}


@pytest.fixture
def tls_config(host_config, certs):
    cert, key, _ = certs["host"]
    return dataclasses.replace(host_config, server=dataclasses.replace(
        host_config.server, token=TOKEN, tls_cert=str(cert), tls_key=str(key)))


class WatchedHost(Host):
    """The real host, counting the connections that reached its handshake and the hellos read."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.handshakes, self.hellos = 0, []

    async def _handshake(self, ws):
        self.handshakes += 1
        try:
            hello = await super()._handshake(ws)
        except ConnectionClosed:
            self.hellos.append("closed before any hello")
            raise
        self.hellos.append(hello)
        return hello


def _skull(port: int, url: str, **tls):
    cfg = skull_config(port, TOKEN)
    link = dataclasses.replace(cfg.link, url=url, reconnect_min_s=0.1, reconnect_max_s=0.3, **tls)
    link.check("test [link]")
    return dataclasses.replace(cfg, link=link)


async def _noop(*_):
    return None


async def _link_for(link_cfg: LinkConfig, seconds: float) -> Link:
    """A real skull link left to connect (and retry) for ``seconds``."""
    link = Link(link_cfg, _noop, _noop)
    task = asyncio.create_task(link.run())
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return link


def test_a_turn_is_answered_over_wss_pinned_by_fingerprint(tls_config, backends, certs, caplog):
    fingerprint = certs["host"][2]

    async def go():
        with caplog.at_level(logging.INFO, logger="host.server"):
            host = await start_host(tls_config, backends)
        cfg = _skull(host.port, f"wss://127.0.0.1:{host.port}", tls_fingerprint=fingerprint)
        agent = Agent(cfg, sim_body(cfg))
        task = asyncio.create_task(agent.run())
        try:
            await wait_for(lambda: agent.state is State.IDLE, timeout=10)
            session = host.sessions[cfg.link.name]
            encrypted = session.ws.transport.get_extra_info("ssl_object") is not None
            rec = await ask(agent)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await host.stop()
        return rec, encrypted

    rec, encrypted = asyncio.run(go())
    assert encrypted  # the host really spoke TLS to this skull
    assert rec.outcome == "answered" and "costume" in rec.transcript and rec.segments
    # the operator finds the fingerprint to pin in the host's log
    assert f"fingerprint {fingerprint}" in caplog.text


def test_a_wrong_fingerprint_is_refused_once_with_the_fix_and_no_hello_is_sent(tls_config, backends, certs,
                                                                                caplog):
    real, wrong = certs["host"][2], certs["other"][2]

    async def go():
        host = await WatchedHost(tls_config, backends).start()
        cfg = _skull(host.port, f"wss://127.0.0.1:{host.port}", tls_fingerprint=wrong)
        try:
            with caplog.at_level(logging.DEBUG, logger="skull.link"):
                link = await _link_for(cfg.link, 1.5)
        finally:
            await host.stop()
        return host, link

    host, link = asyncio.run(go())
    said = [r for r in caplog.records if r.name == "skull.link" and r.levelno >= logging.WARNING]
    assert len(said) == 1, [r.getMessage() for r in said]  # said once, though it kept trying
    assert said[0].levelno == logging.ERROR
    assert (f"the host's certificate is {real}, not the pinned {wrong}; if the host's certificate changed, "
            f"update [link] tls_fingerprint") in said[0].getMessage()
    retries = [r for r in caplog.records if r.name == "skull.link" and real in r.getMessage()]
    assert len(retries) >= 3  # it went on retrying, with backoff, quietly
    assert link.connects == 0
    assert host.handshakes >= 3  # the skull reached the host every time...
    # ...and closed before sending a hello, so the token never left the skull
    assert host.hellos == ["closed before any hello"] * host.handshakes
    assert not host.conversations


def test_plain_ws_to_a_tls_host_says_to_use_wss(tls_config, backends, caplog):
    async def go():
        host = await WatchedHost(tls_config, backends).start()
        cfg = _skull(host.port, f"ws://127.0.0.1:{host.port}")
        try:
            with caplog.at_level(logging.DEBUG, logger="skull.link"):
                link = await _link_for(cfg.link, 1.0)
        finally:
            await host.stop()
        return host, link

    host, link = asyncio.run(go())
    said = [r.getMessage() for r in caplog.records if r.name == "skull.link" and r.levelno >= logging.WARNING]
    assert len(said) == 1, said
    assert "closed the connection without answering the websocket handshake" in said[0]
    assert "the url must start with wss://" in said[0]
    assert link.connects == 0 and host.handshakes == 0 and not host.conversations


def test_a_proxy_that_drops_connections_after_the_link_worked_is_no_tls_advice(host_config, backends, caplog):
    """A flaky network (a proxy that accepts and closes at once) in front of a host this skull
    reached before over ws:// is an unreachable host, not a reason to try wss://."""
    async def go():
        host = await start_host(host_config, backends)
        relay = {"on": True}

        async def forward(reader, writer):
            if not relay["on"]:  # the network broke: accepted, then closed before any answer
                writer.close()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", host.port)

            async def pipe(r, w):
                try:
                    while data := await r.read(65536):
                        w.write(data)
                        await w.drain()
                except ConnectionError:
                    pass  # the other side went away: the connection ends
                finally:
                    w.close()
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        proxy = await asyncio.start_server(forward, "127.0.0.1", 0)
        cfg = _skull(host.port, f"ws://127.0.0.1:{proxy.sockets[0].getsockname()[1]}")
        link = Link(cfg.link, _noop, _noop)
        task = asyncio.create_task(link.run())
        try:
            with caplog.at_level(logging.DEBUG, logger="skull.link"):
                await wait_for(lambda: link.connects == 1, 5)
                relay["on"] = False
                await host.stop()  # the connection drops; every retry meets the broken proxy
                await asyncio.sleep(1.5)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            proxy.close()
        return link

    link = asyncio.run(go())
    said = [r.getMessage() for r in caplog.records if r.name == "skull.link" and r.levelno >= logging.INFO]
    assert not any("wss://" in s or "TLS" in s for s in said), said
    # nor the first-run hints about --bind and firewalls: this skull has reached the host before
    assert not any("--bind" in s for s in said), said
    retries = [s for s in said if "unreachable" in s and "retrying" in s]
    assert len(retries) >= 3, said  # it went on trying
    assert link.connects == 1


def test_an_unpinned_self_signed_certificate_fails_verification_and_names_the_fix(tls_config, backends, caplog):
    async def go():
        host = await WatchedHost(tls_config, backends).start()
        cfg = _skull(host.port, f"wss://127.0.0.1:{host.port}")
        try:
            with caplog.at_level(logging.DEBUG, logger="skull.link"):
                link = await _link_for(cfg.link, 1.0)
        finally:
            await host.stop()
        return host, link

    host, link = asyncio.run(go())
    said = [r.getMessage() for r in caplog.records if r.name == "skull.link" and r.levelno >= logging.WARNING]
    assert len(said) == 1, said
    assert "failed verification (self-signed certificate)" in said[0]
    assert "[link] tls_fingerprint" in said[0] and "[link] tls_ca" in said[0]
    assert link.connects == 0 and host.handshakes == 0


def test_the_certificate_authority_file_verifies_the_host(tls_config, backends, certs):
    """[link] tls_ca: a self-signed certificate is its own authority; verified with the host name."""
    async def go():
        host = await start_host(tls_config, backends)
        cfg = _skull(host.port, f"wss://localhost:{host.port}", tls_ca=str(certs["host"][0]))
        try:
            link = await _link_for(cfg.link, 0.8)
        finally:
            await host.stop()
        return link

    link = asyncio.run(go())
    assert link.connects == 1 and link.welcome is not None


async def _tls_proxy(cert, key, to_port: int):
    """A TLS-terminating proxy on loopback, as Caddy or nginx would stand in front of the host:
    wss:// outside, the host's plain ws:// behind it."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass  # the other side went away: the connection ends
        finally:
            writer.close()

    async def forward(reader, writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", to_port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return await asyncio.start_server(forward, "127.0.0.1", 0, ssl=ctx)


def test_a_turn_is_answered_through_a_tls_proxy_in_front_of_a_plain_host(host_config, backends, certs, caplog):
    """Setup 2 of docs/internet.md: the host on 127.0.0.1 (no certificate, nothing logged about
    clear text), the proxy holds the certificate, the skull verifies it against tls_ca."""
    cert, key, _ = certs["host"]

    async def go():
        with caplog.at_level(logging.WARNING, logger="host.server"):
            host = await start_host(dataclasses.replace(
                host_config, server=dataclasses.replace(host_config.server, token=TOKEN)), backends)
        proxy = await _tls_proxy(cert, key, host.port)
        port = proxy.sockets[0].getsockname()[1]
        cfg = _skull(port, f"wss://localhost:{port}", tls_ca=str(cert))
        agent = Agent(cfg, sim_body(cfg))
        task = asyncio.create_task(agent.run())
        try:
            await wait_for(lambda: agent.state is State.IDLE, timeout=10)
            rec = await ask(agent)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await host.stop()
            proxy.close()
        return rec

    rec = asyncio.run(go())
    assert rec.outcome == "answered" and "costume" in rec.transcript and rec.segments
    assert "in clear" not in caplog.text


def test_a_host_beyond_loopback_without_tls_says_the_token_travels_in_clear(caplog):
    with caplog.at_level(logging.WARNING, logger="host.server"):
        assert tls_context(ServerConfig(bind="0.0.0.0", token="x")) is None
    assert "travel in clear" in caplog.text and "--tls-cert" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="host.server"):
        tls_context(ServerConfig(bind="127.0.0.1"))
    assert "in clear" not in caplog.text  # loopback only: nothing to say


def test_tls_settings_are_checked_where_they_are_read(tmp_path, certs):
    cert, key, fingerprint = certs["host"]
    only_cert = tmp_path / "host.toml"
    only_cert.write_text(f"[server]\ntls_cert = '{cert}'\n")
    with pytest.raises(ConfigError, match=r"tls_cert and tls_key go together"):
        load_host_config(only_cert)
    missing = tmp_path / "missing.toml"
    missing.write_text(f"[server]\ntls_cert = '{cert}'\ntls_key = '{tmp_path / 'nope.pem'}'\n")
    with pytest.raises(ConfigError, match=r"tls_key = .*nope.pem.* no such file"):
        load_host_config(missing)
    with pytest.raises(ConfigError, match=r"tls_fingerprint .* applies to a wss:// url only"):
        LinkConfig(url="ws://example.org:8765", tls_fingerprint=fingerprint).check("skull.toml [link]")
    with pytest.raises(ConfigError, match=r"tls_fingerprint = 'sha256:AB' .* 32 pairs of hex digits"):
        LinkConfig(url="wss://example.org", tls_fingerprint="sha256:AB").check("skull.toml [link]")
    # openssl's own spelling of a fingerprint is taken too
    LinkConfig(url="wss://example.org", tls_fingerprint="SHA256 Fingerprint=" + fingerprint[7:]).check("x")
    # a key that is not the certificate's is refused with what to do, before anything listens
    other_key = certs["other"][1]
    with pytest.raises(ConfigError, match=r"the key must be the certificate's own"):
        tls_context(ServerConfig(tls_cert=str(cert), tls_key=str(other_key)))


def test_skull_host_prints_the_fingerprint_openssl_gives(certs):
    cert, _, fingerprint = certs["host"]
    out = subprocess.run([sys.executable, "-m", "skull", "host", "--tls-cert", str(cert), "--print-fingerprint"],
                         capture_output=True, text=True, timeout=60, env=os.environ)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == fingerprint
    assert re.fullmatch(r"sha256:([0-9A-F]{2}:){31}[0-9A-F]{2}", fingerprint)


def test_skull_run_refuses_a_pin_on_a_plain_url_before_it_starts(certs):
    fingerprint = certs["host"][2]
    out = subprocess.run([sys.executable, "-m", "skull", "run", "--sim", "--no-audio", "--url", "ws://127.0.0.1:9",
                          "--tls-fingerprint", fingerprint], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL, env=os.environ)
    assert out.returncode == 2, out.stderr
    assert "skull run [link]: tls_fingerprint" in out.stderr and "applies to a wss:// url only" in out.stderr
    assert "Traceback" not in out.stderr
