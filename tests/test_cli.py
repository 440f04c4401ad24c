"""`skull host` as users start it."""
import asyncio
import json
import os
import subprocess
import sys

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def host_process():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "skull", "host", "--port", str(port), "--token", "T"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert "listening" in line, proc.stderr.read()
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def test_skull_host_auth_errors_and_ping(host_process):
    url = f"ws://127.0.0.1:{host_process}"

    async def go():
        async with connect(url) as ws:
            await ws.send(json.dumps({"type": "hello", "protocol": 1, "token": "nope", "skull": "x"}))
            with pytest.raises(ConnectionClosed) as e:
                await ws.recv()
            assert e.value.rcvd.code == 4401
        async with connect(url) as ws:
            await ws.send(json.dumps({"type": "hello", "protocol": 1, "token": "T", "skull": "x"}))
            assert json.loads(await ws.recv())["type"] == "welcome"
            await ws.send("not json")
            err = json.loads(await ws.recv())
            assert err["type"] == "error" and err["code"] == "bad_json"
            await asyncio.wait_for(await ws.ping(), 5)
    asyncio.run(go())


def test_public_bind_without_token_is_refused():
    env = {k: v for k, v in os.environ.items() if k != "SKULL_TOKEN"}
    out = subprocess.run([sys.executable, "-m", "skull", "host", "--bind", "0.0.0.0", "--port", "0"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a token" in out.stderr


def test_demo_with_missing_question_file():
    out = subprocess.run([sys.executable, "-m", "skull", "demo", "--question", "/nonexistent.wav", "--no-audio"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "question file /nonexistent.wav does not exist" in out.stderr
