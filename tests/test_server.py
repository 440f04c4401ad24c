"""The host's websocket server with a real client on loopback: handshake, auth, bad input."""
import asyncio
import dataclasses
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from host.server import Host
from skull.core import protocol as p
from skull.core.errors import ConfigError


def run(coro):
    return asyncio.run(coro)


async def _host(host_config, backends, token=""):
    cfg = dataclasses.replace(host_config, server=dataclasses.replace(host_config.server, token=token))
    return await Host(cfg, backends).start()


async def _closed_with(url, hello) -> tuple[int, str]:
    async with connect(url) as ws:
        await ws.send(hello)
        with pytest.raises(ConnectionClosed) as e:
            await asyncio.wait_for(ws.recv(), 5)
        return e.value.rcvd.code, e.value.rcvd.reason


@pytest.mark.parametrize("token", ["wrong", ""])
def test_wrong_or_missing_token_is_closed_with_4401(host_config, backends, token):
    async def go():
        host = await _host(host_config, backends, token="T0ken")
        try:
            hello = json.dumps({"type": "hello", "protocol": 1, "token": token, "skull": "s"})
            code, reason = await _closed_with(f"ws://127.0.0.1:{host.port}", hello)
            assert code == 4401
            assert ("wrong token" if token else "missing token") in reason and "SKULL_TOKEN" in reason
        finally:
            await host.stop()
    run(go())


def test_unsupported_protocol_closes_4426_and_names_supported_versions(host_config, backends):
    async def go():
        host = await _host(host_config, backends)
        try:
            code, reason = await _closed_with(f"ws://127.0.0.1:{host.port}",
                                              '{"type":"hello","protocol":2,"skull":"s"}')
            assert code == 4426 and "protocol 2" in reason and "speaks 1" in reason
        finally:
            await host.stop()
    run(go())


def test_first_message_not_hello_closes_4400(host_config, backends):
    async def go():
        host = await _host(host_config, backends)
        try:
            code, reason = await _closed_with(f"ws://127.0.0.1:{host.port}", '{"type":"listen","turn":1}')
            assert code == 4400 and "hello" in reason
        finally:
            await host.stop()
    run(go())


async def _welcomed(host, token="T0ken"):
    ws = await connect(f"ws://127.0.0.1:{host.port}", max_size=p.TRANSPORT_MAX_BYTES)
    await ws.send(json.dumps({"type": "hello", "protocol": 1, "token": token, "skull": "s"}))
    welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert welcome["type"] == "welcome" and welcome["protocol"] == 1
    return ws


async def _expect_error(ws, code):
    msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert msg["type"] == "error" and msg["code"] == code, msg
    assert msg["message"]
    pong = await ws.ping()
    await asyncio.wait_for(pong, 5)  # still open and answering
    return msg


@pytest.mark.parametrize("frame, code", [
    ("not json", p.E_BAD_JSON),
    ('{"type":"dance"}', p.E_UNKNOWN_TYPE),
    ('{"type":"listen"}', p.E_MISSING_FIELD),
    (b"\x00\x01\x02\x03", p.E_UNEXPECTED_BINARY),
    ('{"type":"stop","turn":5}', p.E_BAD_STATE),
])
def test_malformed_frame_gets_error_and_connection_stays_open(host_config, backends, frame, code):
    async def go():
        host = await _host(host_config, backends, token="T0ken")
        try:
            ws = await _welcomed(host)
            await ws.send(frame)
            await _expect_error(ws, code)
            await ws.send('{"type":"listen","turn":1}')  # and the conversation goes on
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "ack", "turn": 1, "of": "listen"}
            await ws.close()
        finally:
            await host.stop()
    run(go())


def test_frame_over_the_size_limit_gets_error(host_config, backends):
    async def go():
        host = await _host(host_config, backends, token="T0ken")
        try:
            ws = await _welcomed(host)
            await ws.send('{"type":"listen","turn":1}')
            await ws.recv()
            await ws.send('{"type":"audio_start","turn":1,"rate":16000,"width":2,"channels":1}')
            await ws.send(bytes(p.MAX_BINARY_BYTES + 2))
            msg = await _expect_error(ws, p.E_TOO_LARGE)
            assert str(p.MAX_BINARY_BYTES) in msg["message"]
            await ws.close()
        finally:
            await host.stop()
    run(go())


def test_non_loopback_bind_without_token_is_refused(host_config, backends):
    cfg = dataclasses.replace(host_config, server=dataclasses.replace(host_config.server, bind="0.0.0.0"))
    with pytest.raises(ConfigError, match="without a token"):
        Host(cfg, backends)
    Host(dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, token="x")), backends)  # fine with one
